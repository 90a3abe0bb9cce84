//! Parity across instruction-set paths: every CPU the product runs on must give the golden stream
//! the same events, and posteriors within the tolerances below, as the x86-64 reference run.
//!
//! ONNX Runtime picks its kernels by CPU (`kws_models::cpu`), so one x86-64 binary takes different
//! paths on different machines. Each run of this test scores the golden stream of every model and
//! variant and writes the trace and events to `$KWS_PARITY_DIR/<path>/<model>-<variant>.json`
//! (default `<workspace>/target/parity`), where `<path>` is `$KWS_ISA_PATH` if set, else the arch
//! (`x86_64`, `aarch64`). Every run except the native x86-64 one (the reference: `x86_64`, no
//! `KWS_ISA_PATH`) then compares itself with the reference. With `$KWS_EXPECT_INT8_KERNELS` set it
//! first checks that the CPU (real or emulated) offers that int8 kernel family, so a run meant for
//! one path cannot silently take another. `deploy/test-isa.sh` runs all of it:
//!
//! ```text
//! cargo test -p kws-models --test isa_parity                                       # writes x86_64/
//! KWS_ISA_PATH=x86-avx2 KWS_EXPECT_INT8_KERNELS=avx2 \
//!   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu Haswell-v4" \
//!   cargo test -p kws-models --test isa_parity                                     # compares
//! cargo test -p kws-models --test isa_parity --target aarch64-unknown-linux-gnu    # compares
//! ```
//!
//! The cascade (first stage + verifier inside a `Spotter`) gets the same treatment on a short
//! stream with one candidate (`cascade_matches_across_isa_paths`, `cascade-<variant>.json`).
//!
//! qemu's TCG emulates AVX2 but not AVX-512, so the VNNI path is covered where the host has it (the
//! reference run on a VNNI machine); on an AVX2 host the reference itself is the AVX2 path.
//!
//! Tolerances (ONNX Runtime 1.31.1; reference x86-64 with AVX-512 VNNI; AVX2 and arm64 under
//! qemu-user 10):
//! - fp32: 1e-5 absolute. Measured 3.0e-7 on arm64 (the NEON and AVX-512 convolution kernels sum in
//!   different orders); the features are bit-identical on every path.
//! - int8: 1e-5 absolute. The int8 models use 7-bit weights (no int16 pair sum can saturate on
//!   AVX2) and float residual additions (ONNX Runtime's int8 addition rounds differently on arm64),
//!   so the paths compute the same integers: AVX2 gave posteriors bit-identical to AVX-512 VNNI, and
//!   arm64 (i8mm, dot product and plain NEON kernels alike) within 2.4e-7, on the golden stream and
//!   on 2 798 held-out windows (`models/README.md`, "int8 across CPUs").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde::{Deserialize, Serialize};

/// int8 posteriors (see the module docs for the measurements behind it).
const TOL_INT8: f32 = 1e-5;

/// The reference run's path name: native x86-64.
const REFERENCE: &str = "x86_64";

fn tol(variant: &str) -> f32 {
    if variant == "int8" { TOL_INT8 } else { 1e-5 }
}

/// This run's path name (see the module docs).
fn path_name() -> String {
    std::env::var("KWS_ISA_PATH")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// One path's result for one model and variant, as written to disk.
#[derive(Debug, Serialize, Deserialize)]
struct ParityRecord {
    path: String,
    int8_kernels: String,
    model: String,
    variant: String,
    #[serde(flatten)]
    run: StreamRun,
}

fn parity_dir() -> PathBuf {
    std::env::var_os("KWS_PARITY_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().parent().unwrap().join("target").join("parity"))
}

fn record_path(path: &str, model: &str, variant: &str) -> PathBuf {
    parity_dir().join(path).join(format!("{model}-{variant}.json"))
}

fn model_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn write_record(record: &ParityRecord) -> PathBuf {
    let path = record_path(&record.path, &record.model, &record.variant);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(record).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn read_reference(model: &str, variant: &str) -> ParityRecord {
    let path = record_path(REFERENCE, model, variant);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nThe {REFERENCE} reference is missing: run the native x86-64 test first \
             (`cargo test -p kws-models --test isa_parity` on the host, with the same KWS_PARITY_DIR), \
             or use deploy/test-isa.sh",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Assert `got` matches the reference run's `want`; returns (max |Δ posterior|, max |Δ event score|).
fn compare(got: &ParityRecord, want: &ParityRecord) -> (f32, f32) {
    let what = format!(
        "{} {} {} ({}) vs {} ({})",
        got.model, got.variant, got.path, got.int8_kernels, want.path, want.int8_kernels
    );
    let tol = tol(&got.variant);
    assert_eq!(got.run.trace.len(), want.run.trace.len(), "{what}: window count");
    let mut worst_prob = 0.0f32;
    let mut worst_window = 0;
    for (i, (g, w)) in got.run.trace.iter().zip(&want.run.trace).enumerate() {
        assert_eq!(
            (g.start_ms, g.end_ms),
            (w.start_ms, w.end_ms),
            "{what}: window {i} timing"
        );
        let d = max_abs_diff(&g.probs, &w.probs);
        if d > worst_prob {
            (worst_prob, worst_window) = (d, i);
        }
    }
    let differing = got
        .run
        .trace
        .iter()
        .zip(&want.run.trace)
        .filter(|(g, w)| g.probs != w.probs)
        .count();
    let key = |e: &GoldenEvent| (e.keyword.clone(), e.start_ms, e.end_ms);
    assert_eq!(
        got.run.events.iter().map(key).collect::<Vec<_>>(),
        want.run.events.iter().map(key).collect::<Vec<_>>(),
        "{what}: events differ (keyword, start_ms, end_ms)"
    );
    let worst_score = got
        .run
        .events
        .iter()
        .zip(&want.run.events)
        .map(|(g, w)| (g.score - w.score).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{what}: {} windows ({differing} differ), max |Δ posterior| = {worst_prob:e} (window {worst_window}, \
         {:.2} steps of 1/255), {} events, max |Δ event score| = {worst_score:e}; tolerance {tol:e}",
        got.run.trace.len(),
        worst_prob * 255.0,
        got.run.events.len(),
    );
    assert!(
        worst_prob <= tol,
        "{what}: posteriors differ by {worst_prob} at window {worst_window} (tolerance {tol})"
    );
    assert!(
        worst_score <= tol,
        "{what}: event scores differ by {worst_score} (tolerance {tol})"
    );
    (worst_prob, worst_score)
}

#[test]
fn golden_stream_matches_across_isa_paths() {
    ort();
    let path = path_name();
    let kernels = kws_models::cpu::detect().int8_kernels;
    if let Some(want) = std::env::var("KWS_EXPECT_INT8_KERNELS")
        .ok()
        .filter(|v| !v.is_empty())
    {
        assert_eq!(
            kernels.as_str(),
            want,
            "this run is meant for the {want} int8 kernels, but the CPU offers {kernels}"
        );
    }
    let is_reference = std::env::var_os("KWS_ISA_PATH").is_none() && path == REFERENCE;
    for dir in models() {
        let model = model_name(&dir);
        for variant in variants() {
            let record = ParityRecord {
                path: path.clone(),
                int8_kernels: kernels.as_str().to_string(),
                model: model.clone(),
                variant: variant.to_string(),
                run: run_stream(&dir, variant),
            };
            assert!(
                !record.run.events.is_empty(),
                "{model} {variant}: the golden stream must produce events"
            );
            let file = write_record(&record);
            println!("{model} {variant} ({path}, {kernels}): wrote {}", file.display());
            if !is_reference {
                compare(&record, &read_reference(&model, variant));
            }
        }
    }
}

/// One path's cascade run (see [`cascade_matches_across_isa_paths`]).
#[derive(Debug, Serialize, Deserialize)]
struct CascadeRecord {
    path: String,
    int8_kernels: String,
    variant: String,
    /// Candidates verified (all accepted: the verdict thresholds are 0).
    candidates: usize,
    /// (keyword, start_ms, end_ms, first-stage score, verifier score)
    events: Vec<(usize, u64, u64, f32, f32)>,
}

/// The cascade of the verifier test fixture (TC-ResNet8 + the research head) on the first 1.6 s of
/// the golden stream, every verdict threshold at 0: exactly one candidate ("yes", window 140-1140 ms
/// on TC-ResNet8 2.2.0's golden stream, its clip cut at the stream start with lead 1: 8 embeddings),
/// accepted; the refractory period covers the rest. The first stage's variant is
/// the run's (int8 on the emulated paths), the verifier fp32. Same events on every path, scores
/// within the first stage's tolerance and the verifier's 1e-4 (`tests/verifier.rs`).
#[test]
fn cascade_matches_across_isa_paths() {
    ort();
    let path = path_name();
    let kernels = kws_models::cpu::detect().int8_kernels;
    let is_reference = std::env::var_os("KWS_ISA_PATH").is_none() && path == REFERENCE;
    let fixture = crate_dir().join("tests/fixtures/verifier");
    let manifest = kws_models::Manifest::load(&fixture).unwrap();
    let options = kws_models::ScorerOptions::default();
    let mut verifier = kws_models::Verifier::from_manifest(&manifest, &options).unwrap();
    let audio = read_wav(&model_dir("tc-resnet8").join("golden").join("stream.wav"));
    let audio = &audio[..25_600];
    for variant in variants() {
        let mut scorer = kws_models::OnnxScorer::new(&manifest, variant, &options).unwrap();
        let mut config =
            kws_models::StreamConfig::from_manifest(&manifest, kws_models::PcmFormat::native_s16());
        let cascade = config.cascade.as_mut().expect("the fixture has a verifier");
        cascade.config.thresholds = vec![0.0; manifest.keywords.len()];
        let mut spotter = kws_models::Spotter::new(config, manifest.num_classes()).unwrap();
        let events = spotter
            .process_with(&mut scorer, Some(&mut verifier), audio)
            .unwrap();
        let record = CascadeRecord {
            path: path.clone(),
            int8_kernels: kernels.as_str().to_string(),
            variant: variant.to_string(),
            candidates: events.len(),
            events: events
                .iter()
                .map(|e| (e.class, e.start_ms, e.end_ms, e.score, e.verifier_score.unwrap()))
                .collect(),
        };
        assert_eq!(
            record.events.iter().map(|e| (e.0, e.1, e.2)).collect::<Vec<_>>(),
            [(0, 140, 1140)],
            "{variant}: one candidate, accepted"
        );
        let file = parity_dir().join(&path).join(format!("cascade-{variant}.json"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, serde_json::to_string_pretty(&record).unwrap()).unwrap();
        println!(
            "cascade {variant} ({path}, {kernels}): {:?}, wrote {}",
            record.events,
            file.display()
        );
        if is_reference {
            continue;
        }
        let reference = parity_dir()
            .join(REFERENCE)
            .join(format!("cascade-{variant}.json"));
        let want: CascadeRecord =
            serde_json::from_str(&std::fs::read_to_string(&reference).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}\nrun the native x86-64 test first (deploy/test-isa.sh)",
                    reference.display()
                )
            }))
            .unwrap();
        assert_eq!(record.candidates, want.candidates, "{variant}: candidates");
        for (g, w) in record.events.iter().zip(&want.events) {
            assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2), "{variant}: event");
            let (ds, dv) = ((g.3 - w.3).abs(), (g.4 - w.4).abs());
            println!("cascade {variant} {path} vs {REFERENCE}: |Δ score| {ds:e}, |Δ verifier score| {dv:e}");
            assert!(ds <= tol(variant), "{variant}: first-stage score differs by {ds}");
            assert!(dv <= 1e-4, "{variant}: verifier score differs by {dv}");
        }
    }
}
