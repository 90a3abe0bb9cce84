//! A streaming model over real gRPC (`models/tc-resnet8-stream`, served on its streaming graph):
//! - first stage alone (`first_stage_only`, the comparisons below): the golden stream, in random
//!   chunks, gives the same events and per-window scores (trace) as kws-models' windowed fp32 path
//!   of the same model (`model.onnx`), within the streaming bound;
//! - the model's default, its verifier cascade, gives the cascade golden's events
//!   (`golden.json` `stream.cascade.events_fp32`, computed by `kws_train.verifier_golden`);
//! - several streams with different audio at once (their hops share batches) give each the same
//!   results as alone; 1-ms and 1-s chunks give the same results;
//! - a hop override other than the graph's is INVALID_ARGUMENT naming the hop it accepts;
//! - GetModelInfo / ListModels report how each entry is served (streaming, state bytes, hop), the
//!   `:windowed` spelling serves the same model windowed, and `:int8` serves the int8 streaming
//!   graph if the manifest has one, else fp32, and says which (the fallback itself: `registry`'s
//!   unit test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use kws_models::{DecoderOverrides, Manifest, OnnxScorer, ScorerOptions, Spotter, StreamConfig, WindowBatch};
use kws_proto::v1::{self, AudioEncoding};

const STREAM: &str = "tc-resnet8-stream:fp32";
const WINDOWED: &str = "tc-resnet8-stream:fp32:windowed";
const FALLBACK: &str = "tc-resnet8-stream:int8";
/// The streaming path's bound against the windowed one (kws-models `tests/streaming.rs`).
const TOLERANCE: f32 = 1e-5;
/// Low enough that the golden stream fires events on this model (its own thresholds are ~0.997).
const THRESHOLD: f32 = 0.6;

fn manifest() -> Manifest {
    Manifest::load(repo().join("models/tc-resnet8-stream")).unwrap()
}

fn stream_config() -> kws_service::config::Config {
    let mut c = test_config();
    c.models.serve = vec![STREAM.into(), WINDOWED.into(), FALLBACK.into()];
    c.models.default = STREAM.into();
    c
}

fn thresholds(m: &Manifest) -> HashMap<String, f32> {
    m.keywords.iter().map(|k| (k.clone(), THRESHOLD)).collect()
}

fn request(model: &str, m: &Manifest) -> v1::StreamConfig {
    v1::StreamConfig {
        model: model.into(),
        thresholds: thresholds(m),
        score_trace: true,
        first_stage_only: true,
        ..config(AudioEncoding::PcmS16le, 16_000, 1)
    }
}

/// (keyword, start, end) per event, and per window (start, end, scores of every keyword).
type Scores = (Vec<(String, u64, u64, f32)>, Vec<(u64, u64, Vec<f32>)>);

/// kws-models' windowed fp32 path of the stream model with the same settings.
fn windowed_crate(pcm: &[u8]) -> Scores {
    let m = manifest();
    let options = ScorerOptions {
        library: Some(ort_lib()),
        ..ScorerOptions::default()
    };
    let mut scorer = OnnxScorer::new(&m, "fp32", &options).unwrap();
    let t = thresholds(&m);
    let mut config = StreamConfig::resolve(&m, native(), &[], &t, DecoderOverrides::default()).unwrap();
    config.cascade = None;
    let mut spotter = Spotter::new(config, m.num_classes()).unwrap();
    let mut batch = WindowBatch::new();
    spotter.push_pcm(pcm, &mut batch).unwrap();
    spotter.finish(&mut batch).unwrap();
    let (mut events, mut windows) = (Vec::new(), Vec::new());
    let n = m.keywords.len();
    spotter
        .score_windows(
            &mut scorer,
            None,
            &batch,
            |w, s| windows.push((w.start_ms, w.end_ms, s[..n].to_vec())),
            |e| events.push((m.keywords[e.class].clone(), e.start_ms, e.end_ms, e.score)),
        )
        .unwrap();
    (events, windows)
}

fn served(out: &Outcome) -> Scores {
    assert!(out.status.is_none(), "{:?}", out.status);
    let windows = out
        .traces
        .iter()
        .map(|w| (w.start_ms, w.end_ms, w.scores.clone()))
        .collect();
    (tuples(&out.events), windows)
}

fn assert_close(want: &Scores, got: &Scores, tol: f32, what: &str) {
    let key = |r: &Scores| r.0.iter().map(|e| (e.0.clone(), e.1, e.2)).collect::<Vec<_>>();
    assert_eq!(key(want), key(got), "{what}: events");
    for (a, b) in want.0.iter().zip(&got.0) {
        assert!((a.3 - b.3).abs() <= tol, "{what}: {a:?} vs {b:?}");
    }
    assert_eq!(want.1.len(), got.1.len(), "{what}: windows");
    for (a, b) in want.1.iter().zip(&got.1) {
        assert_eq!((a.0, a.1), (b.0, b.1), "{what}: window times");
        let d =
            a.2.iter()
                .zip(&b.2)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
        assert!(d <= tol, "{what}: window {a:?} differs by {d}");
    }
}

async fn stream(server: &TestServer, model: &str, chunks: Vec<Vec<u8>>) -> Outcome {
    let mut client = server.client().await;
    let mut reqs = vec![req_config(request(model, &manifest()))];
    reqs.extend(chunks.into_iter().map(req_audio));
    run_stream(&mut client, reqs).await
}

/// Seeded noise at 0.2 full scale with the golden stream's keywords mixed in from `shift` samples.
fn mixed(golden: &[i16], shift: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let out: Vec<i16> = (0..golden.len() + shift)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let noise = ((s >> 48) as i16) / 5;
            let g = i.checked_sub(shift).map_or(0, |j| golden[j]);
            noise.saturating_add(g)
        })
        .collect();
    s16_bytes(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_model_over_grpc() {
    let server = TestServer::start(stream_config()).await;
    let m = manifest();
    let golden = golden_stream();
    let pcm = s16_bytes(&golden);

    // The golden stream in random chunks == the crate's windowed path of the same model.
    let want = windowed_crate(&pcm);
    assert!(
        !want.0.is_empty(),
        "the golden stream fires events at {THRESHOLD}"
    );
    let out = stream(&server, STREAM, random_chunks(&pcm, 2, 7, 3000)).await;
    let ready = out.ready.as_ref().expect("ready");
    assert_eq!(
        ready.config.as_ref().map(|c| c.hop_ms),
        Some(20),
        "Ready shows the hop"
    );
    assert_eq!(ready.model.as_ref().map(|r| r.variant.as_str()), Some("fp32"));
    let got = served(&out);
    assert_close(&want, &got, TOLERANCE, "streaming vs crate windowed");
    let summary = out.summary.as_ref().expect("summary");
    assert_eq!(summary.windows_scored as usize, want.1.len());
    assert_eq!(summary.audio_ms_processed, summary.audio_ms_received);

    // 1-ms and 1-s chunks: the same results, bit for bit (one stream: batches of one hop).
    let ms1 = served(&stream(&server, STREAM, pcm.chunks(32).map(<[u8]>::to_vec).collect()).await);
    let s1 = served(&stream(&server, STREAM, pcm.chunks(32_000).map(<[u8]>::to_vec).collect()).await);
    assert_close(&ms1, &s1, 0.0, "1-ms vs 1-s chunks");
    assert_close(&want, &ms1, TOLERANCE, "1-ms chunks vs crate windowed");

    // Several streams with different audio at once equal each alone.
    let audios: Vec<Vec<u8>> = vec![pcm.clone(), mixed(&golden, 4_000, 1), mixed(&golden, 11_000, 2)];
    let mut alone = Vec::new();
    for a in &audios {
        alone.push(served(
            &stream(&server, STREAM, a.chunks(640).map(<[u8]>::to_vec).collect()).await,
        ));
    }
    let (a, b, c) = tokio::join!(
        stream(
            &server,
            STREAM,
            audios[0].chunks(640).map(<[u8]>::to_vec).collect()
        ),
        stream(
            &server,
            STREAM,
            audios[1].chunks(640).map(<[u8]>::to_vec).collect()
        ),
        stream(
            &server,
            STREAM,
            audios[2].chunks(640).map(<[u8]>::to_vec).collect()
        ),
    );
    let together = [a, b, c];
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_close(a, &served(t), 1e-6, &format!("stream {i} together vs alone"));
    }
    assert_ne!(alone[1].1, alone[2].1, "the streams' audio differs");

    // The same model served windowed (`:windowed`) gives the same results.
    let w = served(&stream(&server, WINDOWED, random_chunks(&pcm, 2, 7, 3000)).await);
    assert_close(&want, &w, 0.0, ":windowed vs crate windowed");

    // A hop other than the graph's is refused before the stream starts, naming the one accepted.
    let mut client = server.client().await;
    let bad = v1::StreamConfig {
        hop_ms: 40,
        ..request(STREAM, &m)
    };
    let out = run_stream(
        &mut client,
        vec![req_config(bad), req_audio(pcm[..3200].to_vec())],
    )
    .await;
    let status = out.status.expect("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("hops of 2 frames (20 ms) only"),
        "{}",
        status.message()
    );
    // The graph's own hop is fine.
    let ok = v1::StreamConfig {
        hop_ms: 20,
        ..request(STREAM, &m)
    };
    let out = run_stream(&mut client, vec![req_config(ok), req_audio(pcm.clone())]).await;
    assert_close(&want, &served(&out), TOLERANCE, "hop_ms 20");

    // The model's default, the cascade, on its streaming graph: the cascade golden's events on the
    // model's own golden stream (not the one above, which is tc-resnet8's).
    let cascade = v1::StreamConfig {
        model: STREAM.into(),
        ..config(AudioEncoding::PcmS16le, 16_000, 1)
    };
    let own = s16_bytes(&wav_i16(
        &repo().join("models/tc-resnet8-stream/golden/stream.wav"),
    ));
    let out = run_stream(&mut client, vec![req_config(cascade), req_audio(own)]).await;
    assert!(out.status.is_none(), "{:?}", out.status);
    let golden_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/tc-resnet8-stream/golden/golden.json")).unwrap(),
    )
    .unwrap();
    let want_cascade: Vec<(String, u64, u64)> = golden_json["stream"]["cascade"]["events_fp32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["keyword"].as_str().unwrap().to_string(),
                e["start_ms"].as_u64().unwrap(),
                e["end_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!want_cascade.is_empty());
    let got_cascade: Vec<(String, u64, u64)> = tuples(&out.events)
        .into_iter()
        .map(|(k, s, e, _)| (k, s, e))
        .collect();
    assert_eq!(got_cascade, want_cascade, "cascade events on the streaming graph");
    let verdict = &manifest()
        .verifier
        .expect("the stream model has a verifier")
        .thresholds;
    assert!(
        out.events
            .iter()
            .all(|e| e.verifier_score.is_some_and(|v| v >= verdict[&e.keyword])),
        "cascade events carry the verifier's score, at least the keyword's verdict threshold"
    );

    // Model info: how each entry is served.
    let info = |name: &'static str| {
        let mut c = client.clone();
        async move {
            c.get_model_info(v1::GetModelInfoRequest { model: name.into() })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let layout = m.streaming.as_ref().unwrap().layout();
    let s = info(STREAM).await;
    assert!(s.streaming);
    assert_eq!(s.state_bytes_per_stream, layout.state_bytes() as u64);
    assert_eq!(s.state_bytes_per_stream, 1912 * 4);
    assert_eq!((s.streaming_hop_ms, s.variant.as_str()), (20, "fp32"));
    assert_eq!(s.sha256, m.streaming.as_ref().unwrap().files["fp32"].sha256);
    let w = info(WINDOWED).await;
    assert!(!w.streaming);
    assert_eq!((w.state_bytes_per_stream, w.streaming_hop_ms), (0, 0));
    assert_eq!(w.sha256, m.files["fp32"].sha256);
    // int8: its streaming graph if the manifest has one, else fp32's.
    let f = info(FALLBACK).await;
    let has_int8 = m.streaming.as_ref().unwrap().files.contains_key("int8");
    assert!(f.streaming);
    assert_eq!(f.variant, if has_int8 { "int8" } else { "fp32" });
    let list = client
        .list_models(v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let streaming: Vec<(String, bool)> = list
        .models
        .iter()
        .map(|m| (m.name.clone(), m.streaming))
        .collect();
    assert_eq!(
        streaming,
        vec![
            (STREAM.to_string(), true),
            (WINDOWED.to_string(), false),
            (FALLBACK.to_string(), true)
        ]
    );
}
