//! Durability of what is measured, read from the real metrics recorder (Prometheus text):
//! - audio in == audio processed for every stream that ends normally (summary and counters);
//! - received == processed + unprocessed over all streams, whatever their end;
//! - counters never go backwards across a drain, and drained streams are fully processed.
//!
//! One test function: the recorder is global to this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use kws_proto::v1::{self, AudioEncoding};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tonic::Code;

/// `series -> value` of every sample line.
fn scrape(h: &PrometheusHandle) -> BTreeMap<String, f64> {
    h.render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of the series of metric `name` whose labels contain every `filter` (`key="value"`).
fn sum(m: &BTreeMap<String, f64>, name: &str, filter: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && filter.iter().all(|f| k.contains(f))
        })
        .map(|(_, v)| *v)
        .sum()
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-6, "{what}: {a} != {b}");
}

/// Every counter-like series (`*_total`, or a histogram/summary `_count`/`_sum`) of `before` exists in
/// `after` with a value at least as large.
fn assert_monotonic(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, when: &str) {
    for (k, v) in before {
        let name = k.split('{').next().unwrap_or(k);
        if name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_sum") {
            let a = after.get(k).unwrap_or_else(|| panic!("{when}: {k} disappeared"));
            assert!(*a >= *v, "{when}: {k} went backwards: {v} -> {a}");
        }
    }
}

fn received(m: &BTreeMap<String, f64>) -> f64 {
    sum(m, "kws_audio_received_seconds_total", &[])
}
fn processed(m: &BTreeMap<String, f64>) -> f64 {
    sum(m, "kws_audio_processed_seconds_total", &[])
}
fn unprocessed(m: &BTreeMap<String, f64>) -> f64 {
    sum(m, "kws_audio_unprocessed_seconds_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_accounting_and_counters_across_a_drain() {
    let metrics = PrometheusBuilder::new().install_recorder().unwrap();
    let mut c = test_config();
    c.server.drain_grace_ms = 1_000;
    let server = TestServer::start(c).await;
    let pcm16 = golden_stream();

    // 1. Streams that end normally, in several formats: summary and counters say in == processed.
    let formats: Vec<(v1::StreamConfig, Vec<u8>)> = vec![
        (config(AudioEncoding::PcmS16le, 16_000, 1), s16_bytes(&pcm16)),
        (
            config(AudioEncoding::PcmS16le, 48_000, 2),
            s16_bytes(&upsample_s16(&pcm16, 48_000, 2)),
        ),
        (
            config(AudioEncoding::PcmF32le, 44_100, 1),
            upsample_s16(&pcm16, 44_100, 1)
                .iter()
                .flat_map(|v| (f32::from(*v) / 32768.0).to_le_bytes())
                .collect(),
        ),
        (
            config(AudioEncoding::PcmS16le, 22_050, 1),
            s16_bytes(&upsample_s16(&pcm16, 22_050, 1)),
        ),
    ];
    let mut summed_ms = 0;
    for (cfg, bytes) in &formats {
        let frame = (if cfg.encoding == AudioEncoding::PcmF32le as i32 {
            4
        } else {
            2
        }) * cfg.channels as usize;
        let mut reqs = vec![req_config(cfg.clone())];
        reqs.extend(random_chunks(bytes, frame, 3, 7_000).into_iter().map(req_audio));
        let out = run_stream(&mut server.client().await, reqs).await;
        assert!(out.status.is_none(), "{:?}", out.status);
        let s = out.summary.unwrap();
        assert_eq!(
            s.audio_ms_processed, s.audio_ms_received,
            "{} Hz",
            cfg.sample_rate_hz
        );
        assert!(s.audio_ms_received >= 5_499, "{s:?}");
        summed_ms += s.audio_ms_received;
    }
    let m = scrape(&metrics);
    assert_close(
        received(&m),
        summed_ms as f64 / 1000.0,
        "received == sum of summaries",
    );
    assert_close(processed(&m), received(&m), "processed == received");
    assert_close(unprocessed(&m), 0.0, "nothing unprocessed");
    assert_eq!(sum(&m, "kws_streams_total", &["outcome=\"ok\""]), 4.0);

    // 2. Streams that end badly: whatever was not processed is counted with the outcome.
    let one_s = s16_bytes(&pcm16[..16_000]);
    let bad = run_stream(
        &mut server.client().await,
        vec![
            req_config(config(AudioEncoding::PcmS16le, 16_000, 1)),
            req_audio(one_s.clone()),
            req_audio(vec![1, 2, 3]),
        ],
    )
    .await;
    assert_eq!(bad.status.unwrap().code(), Code::InvalidArgument);
    // A call cancelled mid-stream (RST_STREAM(CANCEL)) after 1 s of audio.
    let mut reqs = vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))];
    reqs.extend(one_s.chunks(3200).map(|c| req_audio(c.to_vec())));
    let _conn = detect_then_cancel(server.addr, &reqs).await;
    let t0 = std::time::Instant::now();
    while sum(&scrape(&metrics), "kws_streams_total", &["outcome=\"cancelled\""]) < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the cancelled stream is not counted: {:?}",
            scrape(&metrics)
                .into_iter()
                .filter(|(k, _)| k.starts_with("kws_streams_total"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = scrape(&metrics);
    assert_close(
        received(&m),
        processed(&m) + unprocessed(&m),
        "received == processed + unprocessed",
    );
    // (How much of it is unprocessed depends on whether its windows were scored before the bad chunk
    // was read: at most the 1 s it sent.)
    assert!(
        sum(
            &m,
            "kws_audio_unprocessed_seconds_total",
            &["outcome=\"invalid_argument\""]
        ) <= 1.0
    );
    assert_eq!(
        sum(&m, "kws_streams_total", &["outcome=\"invalid_argument\""]),
        1.0
    );
    assert_eq!(
        sum(&m, "kws_streams_total", &["outcome=\"cancelled\""]),
        1.0,
        "{:?}",
        m.iter()
            .filter(|(k, _)| k.starts_with("kws_streams_total"))
            .collect::<Vec<_>>()
    );

    // 3. A drain: one stream finishes within the grace period, one is closed after it.
    let before_drain_received = received(&m);
    let a = OpenStream::open(
        &server,
        Some(req_config(config(AudioEncoding::PcmS16le, 16_000, 1))),
    )
    .await
    .unwrap();
    let mut b = OpenStream::open(
        &server,
        Some(req_config(config(AudioEncoding::PcmS16le, 16_000, 1))),
    )
    .await
    .unwrap();
    let pcm = s16_bytes(&pcm16);
    for c in pcm.chunks(3200).take(20) {
        a.tx.send(req_audio(c.to_vec())).await.unwrap();
        b.tx.send(req_audio(c.to_vec())).await.unwrap();
    }
    let snap_a = scrape(&metrics);
    let join = server.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap_b = scrape(&metrics);
    assert_monotonic(&snap_a, &snap_b, "draining");
    for c in pcm.chunks(3200).skip(20) {
        a.tx.send(req_audio(c.to_vec())).await.unwrap();
    }
    let out_a = a.drain().await;
    assert!(out_a.status.is_none(), "{:?}", out_a.status);
    let sa = out_a.summary.unwrap();
    assert_eq!((sa.audio_ms_received, sa.audio_ms_processed), (5500, 5500));
    let out_b = b.read_to_end().await;
    assert_eq!(out_b.status.unwrap().code(), Code::Unavailable);
    let sb = out_b.summary.unwrap();
    assert_eq!((sb.audio_ms_received, sb.audio_ms_processed), (2000, 2000));
    tokio::time::timeout(Duration::from_secs(15), join)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let snap_c = scrape(&metrics);
    assert_monotonic(&snap_b, &snap_c, "after the drain");
    assert_monotonic(&snap_a, &snap_c, "across the drain");
    assert_close(
        received(&snap_c) - before_drain_received,
        (5500 + 2000) as f64 / 1000.0,
        "drained streams' audio received",
    );
    assert_close(
        received(&snap_c),
        processed(&snap_c) + unprocessed(&snap_c),
        "received == processed + unprocessed after the drain",
    );
    assert_close(
        unprocessed(&snap_c),
        unprocessed(&m),
        "drained streams left nothing unprocessed",
    );
    assert_eq!(
        sum(&snap_c, "kws_streams_total", &["outcome=\"unavailable\""]),
        1.0
    );
    assert_eq!(sum(&snap_c, "kws_active_streams", &[]), 0.0);

    // 4. Refusals are counted: an unauthenticated call.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), "t0k3n\n").unwrap();
    let mut c = test_config();
    c.auth.tokens_file = Some(dir.path().join("tokens"));
    let server = TestServer::start(c).await;
    let out = run_stream(
        &mut server.client().await,
        vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))],
    )
    .await;
    assert_eq!(out.status.unwrap().code(), Code::Unauthenticated);
    let m = scrape(&metrics);
    assert_eq!(
        sum(&m, "kws_rejected_total", &["reason=\"unauthenticated\""]),
        1.0
    );
    assert_monotonic(&snap_c, &m, "after a new server started");
}
