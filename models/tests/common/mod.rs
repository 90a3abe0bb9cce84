//! Shared helpers of the integration tests: where the models, goldens and ONNX Runtime live.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kws_models::frontend::WINDOW_VALUES;
use kws_models::scorer::init_runtime;
use kws_models::{
    DecoderConfig, Encoding, Manifest, OnnxScorer, PcmFormat, Scorer, ScorerOptions, Spotter, StreamConfig,
    WindowBatch,
};
use serde::{Deserialize, Serialize};

/// The shipped models the parity tests cover.
pub const MODELS: &[&str] = &["tc-resnet8", "tc-resnet14-1.5"];

/// `$KWS_VERIFIER_QUICK=1`: the emulated ISA paths of `deploy/test-isa.sh`, where one verifier clip
/// costs seconds of CPU under TCG. Tests that verify many clips skip there (saying so); their inputs
/// are checked on those paths by the quick verifier test and the first-stage goldens.
pub fn verifier_quick() -> bool {
    std::env::var("KWS_VERIFIER_QUICK").is_ok_and(|v| v == "1")
}

/// [`verifier_quick`], printing that `test` is skipped.
pub fn skip_verifier_runs(test: &str) -> bool {
    let quick = verifier_quick();
    if quick {
        println!("{test}: skipped (KWS_VERIFIER_QUICK=1)");
    }
    quick
}

/// The model variants the golden and parity tests cover: `$KWS_TEST_VARIANTS` (comma-separated,
/// e.g. `int8` for the emulated AVX2 run of `deploy/test-isa.sh`, where fp32 is slow and not what
/// differs between paths) or both.
pub fn variants() -> Vec<&'static str> {
    let all = ["fp32", "int8"];
    match std::env::var("KWS_TEST_VARIANTS") {
        Ok(v) if !v.is_empty() => {
            let want: Vec<&str> = v.split(',').map(str::trim).collect();
            for w in &want {
                assert!(
                    all.contains(w),
                    "KWS_TEST_VARIANTS: unknown variant {w:?} (fp32, int8)"
                );
            }
            all.into_iter().filter(|a| want.contains(a)).collect()
        }
        _ => all.to_vec(),
    }
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model_dir(name: &str) -> PathBuf {
    crate_dir().join(name)
}

/// Models present in this checkout (all of MODELS must be: a missing one fails the test).
pub fn models() -> Vec<PathBuf> {
    MODELS
        .iter()
        .map(|m| {
            let d = model_dir(m);
            assert!(
                d.join("manifest.json").is_file(),
                "model {m} missing at {}",
                d.display()
            );
            d
        })
        .collect()
}

/// ONNX Runtime for this arch: $KWS_ORT_LIB, else `<repo>/.ort/<arch>/libonnxruntime.so` (fetched by
/// deploy/fetch-onnxruntime.sh). Panics with the fix if neither exists.
pub fn ort() {
    let lib = std::env::var_os("KWS_ORT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate_dir()
                .join("..")
                .join(".ort")
                .join(std::env::consts::ARCH)
                .join("libonnxruntime.so")
        });
    init_runtime(Some(&lib)).unwrap_or_else(|e| {
        panic!(
            "{e}\n(run `deploy/fetch-onnxruntime.sh {}` first)",
            std::env::consts::ARCH
        )
    });
}

pub fn read_wav(path: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16)
    );
    r.samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub clips: Vec<GoldenClip>,
    pub stream: GoldenStream,
}

#[derive(Debug, Deserialize)]
pub struct GoldenClip {
    pub wav: String,
    pub label: String,
    pub features: Vec<f32>,
    pub features_shape: Vec<usize>,
    pub probs_fp32: Vec<f32>,
    pub probs_int8: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenDecoder {
    pub smoothing_ms: u32,
    pub refractory_ms: u32,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct TraceEntry {
    pub start_ms: u64,
    pub end_ms: u64,
    pub probs: Vec<f32>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
pub struct GoldenEvent {
    pub keyword: String,
    pub score: f32,
    pub start_ms: u64,
    pub end_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct GoldenStream {
    pub wav: String,
    pub hop_frames: u32,
    pub decoder: GoldenDecoder,
    pub thresholds: std::collections::BTreeMap<String, f32>,
    pub trace_fp32: Vec<TraceEntry>,
    pub events_fp32: Vec<GoldenEvent>,
    pub trace_int8: Vec<TraceEntry>,
    pub events_int8: Vec<GoldenEvent>,
    /// The manifest's cascade on this stream (`kws_train.verifier_golden shipped`), if it has one.
    #[serde(default)]
    pub cascade: Option<GoldenCascade>,
}

/// `stream.cascade` of a shipped golden: per first-stage variant, every candidate the cascade
/// verified and the events it accepted (verifier run per candidate clip, Python onnxruntime).
#[derive(Debug, Deserialize)]
pub struct GoldenCascade {
    pub first_stage_threshold: f32,
    pub min_verifier_margin: Option<f32>,
    pub candidates_fp32: Vec<GoldenCandidate>,
    pub events_fp32: Vec<GoldenCascadeEvent>,
    pub candidates_int8: Vec<GoldenCandidate>,
    pub events_int8: Vec<GoldenCascadeEvent>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenCandidate {
    pub keyword: String,
    pub score: f32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub probs: Vec<f32>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
pub struct GoldenCascadeEvent {
    pub keyword: String,
    pub score: f32,
    pub verifier_score: f32,
    pub start_ms: u64,
    pub end_ms: u64,
}

pub fn golden(model_dir: &Path) -> Golden {
    let p = model_dir.join("golden").join("golden.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Trace and events of the golden stream as computed by this build.
#[derive(Debug, Deserialize, Serialize)]
pub struct StreamRun {
    pub trace: Vec<TraceEntry>,
    pub events: Vec<GoldenEvent>,
}

/// Run the golden stream through a Spotter (s16 at 16 kHz, one chunk) and return trace + events.
pub fn run_stream(dir: &Path, variant: &str) -> StreamRun {
    let manifest = Manifest::load(dir).unwrap();
    let g = golden(dir);
    let mut scorer = OnnxScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
    let thresholds = manifest
        .keywords
        .iter()
        .map(|k| g.stream.thresholds.get(k).copied())
        .collect();
    let config = StreamConfig {
        format: PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap(),
        hop_frames: g.stream.hop_frames,
        decoder: DecoderConfig {
            smoothing_ms: g.stream.decoder.smoothing_ms,
            refractory_ms: g.stream.decoder.refractory_ms,
            thresholds,
        },
        cascade: None,
    };
    let mut spotter = Spotter::new(config, manifest.num_classes()).unwrap();
    let x = read_wav(&dir.join("golden").join(&g.stream.wav));
    let bytes: Vec<u8> = x
        .iter()
        .flat_map(|v| ((v * 32768.0) as i16).to_le_bytes())
        .collect();
    let mut batch = WindowBatch::new();
    spotter.push_pcm(&bytes, &mut batch).unwrap();
    spotter.finish(&mut batch).unwrap();
    let mut probs = vec![0.0; batch.len() * scorer.num_classes()];
    scorer.score(batch.features(), &mut probs).unwrap();
    let c = scorer.num_classes();
    let mut trace = vec![];
    let mut events = vec![];
    for (i, w) in batch.windows().iter().enumerate() {
        let p = &probs[i * c..(i + 1) * c];
        trace.push(TraceEntry {
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            probs: p.to_vec(),
        });
        if let Some(e) = spotter.apply(w, p).unwrap() {
            events.push(GoldenEvent {
                keyword: manifest.keywords[e.class].clone(),
                score: e.score,
                start_ms: e.start_ms,
                end_ms: e.end_ms,
            });
        }
    }
    assert_eq!(batch.features().len(), batch.len() * WINDOW_VALUES);
    StreamRun { trace, events }
}
