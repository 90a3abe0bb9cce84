//! Property tests of request validation (no server, no ONNX Runtime): for any StreamConfig, Label or
//! audio chunk, the validators never panic, accept exactly what the API documents, and name the
//! offending value when they refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::LazyLock;

use kws_models::{Encoding, Manifest, PcmFormat};
use kws_proto::v1;
use kws_service::batcher::{Batcher, BatcherSettings};
use kws_service::config::ServerConfig;
use kws_service::error::ServiceError;
use kws_service::registry::{ServedModel, model_info};
use kws_service::validation::{check_chunk, label_from_proto, validate};
use proptest::prelude::*;

static MODEL: LazyLock<ServedModel> = LazyLock::new(|| {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tc-resnet8");
    let manifest = Manifest::load(&dir).unwrap();
    // No workers: validation never scores.
    let (batcher, _) = Batcher::start(
        "tc-resnet8:int8",
        Vec::new(),
        BatcherSettings {
            max_batch: 64,
            max_delay: std::time::Duration::from_millis(5),
            queue_capacity: 1,
        },
    )
    .unwrap();
    ServedModel {
        name: "tc-resnet8:int8".into(),
        variant: "int8".into(),
        streaming: None,
        info: model_info("tc-resnet8:int8", "int8", &manifest),
        manifest,
        batcher,
        verifier: None,
    }
});

const KEYWORDS: [&str; 10] = [
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
];

fn keyword() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(KEYWORDS.to_vec()).prop_map(String::from),
        1 => "[a-z_]{0,8}",
        1 => Just("_unknown_".to_string()),
    ]
}

fn threshold() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => 0.0f32..=1.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => -2.0f32..3.0,
        1 => any::<f32>(),
    ]
}

fn rate() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 8_000u32..=192_000,
        1 => Just(0u32),
        1 => Just(7_999u32),
        1 => Just(192_001u32),
        1 => any::<u32>(),
    ]
}

fn stream_config() -> impl Strategy<Value = v1::StreamConfig> {
    (
        (-2i32..5, rate(), prop_oneof![3 => 1u32..=8, 1 => any::<u32>()]),
        proptest::collection::vec(keyword(), 0..4),
        proptest::collection::hash_map(keyword(), threshold(), 0..3),
        (
            prop_oneof![0u32..=1000, any::<u32>()],
            0u32..2_000,
            0u32..20_000,
            any::<bool>(),
            any::<bool>(),
        ),
        0usize..200,
    )
        .prop_map(
            |(
                (encoding, sample_rate_hz, channels),
                keywords,
                thresholds,
                (hop_ms, smoothing_ms, refractory_ms, no_smoothing, no_refractory),
                id,
            )| {
                v1::StreamConfig {
                    encoding,
                    sample_rate_hz,
                    channels,
                    keywords,
                    thresholds,
                    hop_ms,
                    smoothing_ms,
                    refractory_ms,
                    no_smoothing,
                    no_refractory,
                    client_stream_id: "x".repeat(id),
                    ..Default::default()
                }
            },
        )
}

/// The documented rules of StreamConfig (kws.proto), written independently of `validate`.
fn documented_ok(c: &v1::StreamConfig) -> bool {
    let known = |k: &String| KEYWORDS.contains(&k.as_str());
    (1..=2).contains(&c.encoding)
        && (8_000..=192_000).contains(&c.sample_rate_hz)
        && (1..=8).contains(&c.channels)
        && c.keywords.iter().all(known)
        && c.keywords.iter().collect::<std::collections::HashSet<_>>().len() == c.keywords.len()
        && c.thresholds.keys().all(known)
        && c.thresholds.values().all(|t| (0.0..=1.0).contains(t))
        && c.client_stream_id.len() <= 128
        && (c.hop_ms == 0 || (c.hop_ms.is_multiple_of(10) && (10..=980).contains(&c.hop_ms)))
        && (c.no_smoothing || c.smoothing_ms <= 1000)
        && (c.no_refractory || c.refractory_ms <= 10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn stream_config_validation_matches_the_api(c in stream_config()) {
        let r = validate(&c, &MODEL.manifest, &ServerConfig::default()).map_err(ServiceError::from);
        prop_assert_eq!(r.is_ok(), documented_ok(&c), "{:?}: {:?}", c, r.as_ref().err());
        match r {
            Ok(r) => {
                let p = &r.proto;
                prop_assert_eq!(p.hop_ms % 10, 0);
                prop_assert!(p.thresholds.values().all(|t| (0.0..=1.0).contains(t)));
                prop_assert!(!p.keywords.is_empty());
                if !c.keywords.is_empty() {
                    let mut want: Vec<&str> = KEYWORDS.iter().copied().filter(|k| c.keywords.iter().any(|x| x == k)).collect();
                    want.dedup();
                    prop_assert_eq!(p.keywords.iter().map(String::as_str).collect::<Vec<_>>(), want);
                }
                for (k, v) in &c.thresholds {
                    if let Some(t) = p.thresholds.get(k) {
                        prop_assert_eq!(t, v);
                    }
                }
            }
            Err(ServiceError::InvalidConfig(m)) => prop_assert!(m.len() > 10, "{}", m),
            Err(e) => prop_assert!(false, "unexpected error kind {:?}", e),
        }
    }

    #[test]
    fn label_validation_matches_the_api(k in keyword(), start in any::<u64>(), len in prop_oneof![0u64..20_000, any::<u64>()], backwards in any::<bool>()) {
        let (start_ms, end_ms) = if backwards { (start, start.saturating_sub(len)) } else { (start, start.saturating_add(len)) };
        let l = v1::Label { keyword: k.clone(), start_ms, end_ms };
        let r = label_from_proto(&l, &MODEL.manifest);
        let ok = KEYWORDS.contains(&k.as_str()) && end_ms >= start_ms && end_ms - start_ms <= 10_000;
        prop_assert_eq!(r.is_ok(), ok, "{:?}: {:?}", l, r);
    }

    #[test]
    fn chunk_validation_matches_the_api(
        enc in prop_oneof![Just(Encoding::S16Le), Just(Encoding::F32Le)],
        ch in 1u16..=8,
        data in proptest::collection::vec(any::<u8>(), 0..300),
        max in 1usize..400,
    ) {
        let fmt = PcmFormat::new(enc, 16_000, ch).unwrap();
        let r = check_chunk(&data, max, &fmt);
        let ok = !data.is_empty() && data.len() <= max && fmt.validate(&data).is_ok();
        prop_assert_eq!(r.is_ok(), ok);
        if let Err(e) = r {
            prop_assert!(matches!(e, ServiceError::InvalidAudio(_)), "{:?}", e);
        }
    }
}

#[test]
fn status_messages_name_the_problem() {
    let base = v1::StreamConfig {
        encoding: 1,
        sample_rate_hz: 16_000,
        channels: 1,
        ..Default::default()
    };
    let thresholds: HashMap<String, f32> = [("stop".to_string(), 2.0)].into();
    let e = ServiceError::from(
        validate(
            &v1::StreamConfig {
                thresholds,
                ..base.clone()
            },
            &MODEL.manifest,
            &ServerConfig::default(),
        )
        .unwrap_err(),
    );
    assert_eq!(
        e.to_string(),
        "invalid config: threshold 2 for \"stop\" is outside [0, 1]"
    );
}
