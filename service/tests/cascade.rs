//! The cascade over real gRPC: a server whose model manifest has a `verifier` section (the
//! kws-models test fixture: TC-ResNet8 + the research head, `models/tests/fixtures/verifier/`),
//! the golden stream in random chunks, several streams at once (their candidates share the
//! verifier's batches), `first_stage_only`, `GetModelInfo.verifier` and the cascade's counters.
//!
//! One test function: the metrics recorder is global to this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use kws_models::{ClipScorer, Manifest, OnnxScorer, ScorerOptions, Spotter, StreamConfig, Verifier};
use kws_proto::v1::{self, AudioEncoding};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const MODEL: &str = "verifier:fp32";

fn fixture_manifest() -> Manifest {
    Manifest::load(repo().join("models/tests/fixtures/verifier")).unwrap()
}

/// (keyword, start, end, first-stage score, verifier score)
type Key = (String, u64, u64, f32, Option<f32>);

fn keys(events: &[v1::KeywordEvent]) -> Vec<Key> {
    events
        .iter()
        .map(|e| (e.keyword.clone(), e.start_ms, e.end_ms, e.score, e.verifier_score))
        .collect()
}

/// kws-models' result for the same audio: the fixture model's defaults, with its cascade unless
/// `first_stage_only`.
fn offline(pcm: &[u8], first_stage_only: bool) -> Vec<Key> {
    let m = fixture_manifest();
    let options = ScorerOptions {
        library: Some(ort_lib()),
        ..ScorerOptions::default()
    };
    let mut scorer = OnnxScorer::new(&m, "fp32", &options).unwrap();
    let mut verifier = Verifier::from_manifest(&m, &options).unwrap();
    let mut config = StreamConfig::from_manifest(&m, native());
    if first_stage_only {
        config.cascade = None;
    }
    let mut spotter = Spotter::new(config, m.num_classes()).unwrap();
    let v: Option<&mut dyn ClipScorer> = (!first_stage_only).then_some(&mut verifier as &mut dyn ClipScorer);
    spotter
        .process_pcm_with(&mut scorer, v, pcm)
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                m.keywords[e.class].clone(),
                e.start_ms,
                e.end_ms,
                e.score,
                e.verifier_score,
            )
        })
        .collect()
}

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

fn sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(&format!("model=\"{MODEL}\"")))
        .map(|(_, v)| *v)
        .sum()
}

async fn detect(server: &TestServer, chunks: Vec<Vec<u8>>, first_stage_only: bool) -> Outcome {
    detect_with(server.client().await, chunks, first_stage_only).await
}

/// The golden stream's keyword labels (golden.json), as Label messages.
fn labels() -> Vec<v1::DetectRequest> {
    [("yes", 565, 1235), ("stop", 2140, 2660), ("left", 4195, 5005)]
        .into_iter()
        .map(|(k, start_ms, end_ms)| v1::DetectRequest {
            request: Some(v1::detect_request::Request::Label(v1::Label {
                keyword: k.into(),
                start_ms,
                end_ms,
            })),
        })
        .collect()
}

async fn detect_with(
    mut client: kws_proto::v1::keyword_spotting_client::KeywordSpottingClient<tonic::transport::Channel>,
    chunks: Vec<Vec<u8>>,
    first_stage_only: bool,
) -> Outcome {
    let mut cfg = config(AudioEncoding::PcmS16le, 16_000, 1);
    cfg.model = MODEL.into();
    cfg.first_stage_only = first_stage_only;
    let mut reqs = vec![req_config(cfg)];
    reqs.extend(chunks.into_iter().map(req_audio));
    run_stream(&mut client, reqs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cascade_decides_events_when_the_manifest_has_a_verifier() {
    let metrics = PrometheusBuilder::new().install_recorder().unwrap();
    let mut c = test_config();
    c.models.dir = repo().join("models/tests/fixtures");
    c.models.serve = vec![MODEL.into()];
    c.models.default = MODEL.into();
    c.verifier.max_batch = 4;
    let server = TestServer::start(c).await;
    let pcm = s16_bytes(&golden_stream());

    // GetModelInfo describes the verifier.
    let info = server
        .client()
        .await
        .get_model_info(v1::GetModelInfoRequest { model: MODEL.into() })
        .await
        .unwrap()
        .into_inner();
    let v = info.verifier.expect("ModelInfo.verifier");
    let spec = fixture_manifest().verifier.unwrap();
    assert_eq!(v.head_path, "head-research-conv15k.onnx");
    assert_eq!(v.head_sha256, spec.head.sha256);
    assert_eq!(v.mel_sha256, spec.features.mel.sha256);
    assert_eq!(
        (v.first_stage_threshold, v.embeddings_per_view, v.reject_gap_ms),
        (0.7, 9, 200)
    );
    assert_eq!(v.candidate_rule, spec.candidate_rule.as_str());
    assert_eq!(v.view_shifts as usize, spec.view_shifts);
    assert_eq!(v.thresholds.len(), 10);
    assert_eq!(v.thresholds["yes"], 0.9);
    assert!(v.licence.contains("test fixture"));

    // One stream in random chunks: the events of kws-models' cascade on the same audio.
    let want = offline(&pcm, false);
    assert!(!want.is_empty(), "the golden stream has verified keywords");
    assert!(want.iter().all(|e| e.4.is_some_and(|p| p >= 0.9)));
    let before = scrape(&metrics);
    let mut chunks = random_chunks(&pcm, 2, 7, 4000);
    let tail = chunks.split_off(chunks.len() / 2);
    let mut cfg = config(AudioEncoding::PcmS16le, 16_000, 1);
    cfg.model = MODEL.into();
    let mut reqs = vec![req_config(cfg)];
    reqs.extend(chunks.into_iter().map(req_audio));
    // Labelled: the stream's own evaluation counts the cascade's events.
    reqs.extend(labels());
    reqs.extend(tail.into_iter().map(req_audio));
    let out = run_stream(&mut server.client().await, reqs).await;
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(keys(&out.events), want);
    let e = out
        .summary
        .as_ref()
        .and_then(|s| s.evaluation)
        .expect("labelled stream evaluated");
    assert_eq!(
        (e.labels, e.hits, e.misses, e.false_alarms),
        (3, want.len() as u64, 3 - want.len() as u64, 0),
        "{want:?}"
    );
    let ready = out.ready.expect("ready").config.expect("resolved config");
    assert!(ready.cascade);
    assert_eq!(ready.first_stage_threshold, 0.7);
    assert_eq!(
        ready.thresholds["yes"], 0.9,
        "the verdict thresholds decide events"
    );
    let s = out.summary.expect("summary");
    assert_eq!((s.events, s.audio_ms_processed), (want.len() as u64, 5500));
    let after = scrape(&metrics);
    let candidates = sum(&after, "kws_candidates_total") - sum(&before, "kws_candidates_total");
    let rejected =
        sum(&after, "kws_verifier_rejections_total") - sum(&before, "kws_verifier_rejections_total");
    // Every candidate is either an event or a rejection (the fixture's stream has both).
    assert_eq!(
        candidates,
        want.len() as f64 + rejected,
        "{candidates} candidates"
    );
    assert!(rejected > 0.0, "rejections counted");
    assert!(sum(&after, "kws_verifier_seconds_count") > sum(&before, "kws_verifier_seconds_count"));
    let mean = |name: &str| {
        let d = |m: &BTreeMap<String, f64>, s: &str| sum(m, &format!("{name}_{s}"));
        (d(&after, "sum") - d(&before, "sum")) / (d(&after, "count") - d(&before, "count"))
    };
    println!(
        "{candidates} candidates: verdict latency {:.1} ms (clip sent -> verdict back), verifier {:.1} ms per call",
        1e3 * mean("kws_verdict_latency_seconds"),
        1e3 * mean("kws_verifier_seconds")
    );

    // Streams at once: their candidates are verified together; each gets its own events.
    let mut runs = Vec::new();
    for seed in 0..4u64 {
        let (client, chunks) = (server.client().await, random_chunks(&pcm, 2, seed, 1600));
        runs.push(tokio::spawn(detect_with(client, chunks, false)));
    }
    for run in runs {
        let out = run.await.unwrap();
        assert!(out.status.is_none(), "{:?}", out.status);
        assert_eq!(keys(&out.events), want);
    }

    // first_stage_only: the decoder's events, no verifier score, no candidates.
    let before = scrape(&metrics);
    let out = detect(&server, random_chunks(&pcm, 2, 3, 4000), true).await;
    assert!(out.status.is_none(), "{:?}", out.status);
    let first = offline(&pcm, true);
    assert_eq!(keys(&out.events), first);
    assert!(first.iter().all(|e| e.4.is_none()));
    assert!(!out.ready.expect("ready").config.expect("config").cascade);
    let after = scrape(&metrics);
    assert_eq!(
        sum(&after, "kws_candidates_total"),
        sum(&before, "kws_candidates_total")
    );
}
