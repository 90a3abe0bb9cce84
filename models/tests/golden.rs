//! Parity with the Python reference (`kws_train`): features, posteriors, score trace and events of
//! the golden vectors shipped with every model. These run unchanged on x86-64 and on arm64 (qemu).
//!
//! Tolerances: features 1e-4 absolute (the spec's contract; observed ~1e-5); fp32 posteriors 1e-4
//! (ONNX Runtime on the same features agrees to ~1e-7, the rest is feature noise); int8 posteriors
//! 2e-3 (a feature difference can flip one activation's quantization step); events must be identical
//! in keyword and window, scores within the posterior tolerance.
//!
//! int8 is the same 2e-3 on every instruction-set path (the end-to-end check: Rust features can
//! move an activation by one quantization step). The shipped int8 models use 7-bit weights and keep
//! the residual additions in float (`models/README.md`, "int8 across CPUs"), so x86-64 with AVX-512
//! VNNI, x86-64 with AVX2 only and arm64 (NEON, dot product, i8mm) compute the same integer sums: on
//! the goldens and on 2 798 held-out windows the AVX2 path gives bit-identical posteriors and arm64
//! (qemu-user 10) differs by at most 2.4e-7. Run this file on each path with `deploy/test-isa.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use kws_models::frontend::{NUM_MFCC, mfcc};
use kws_models::{Encoding, Manifest, OnnxScorer, PcmFormat, Scorer, ScorerOptions, Spotter, StreamConfig};

const FEATURE_TOL: f32 = 1e-4;

fn tol(variant: &str) -> f32 {
    match variant {
        "int8" => 2e-3,
        _ => 1e-4,
    }
}

#[test]
fn features_match_reference() {
    for dir in models() {
        let g = golden(&dir);
        for clip in &g.clips {
            let x = read_wav(&dir.join("golden").join(&clip.wav));
            let f = mfcc(&x);
            assert_eq!(f.len(), clip.features_shape.iter().product::<usize>());
            assert_eq!(clip.features_shape[1], NUM_MFCC);
            let d = max_abs_diff(&f, &clip.features);
            println!("{} {}: max |Δ feature| = {d:e}", dir.display(), clip.wav);
            assert!(
                d <= FEATURE_TOL,
                "{} {}: features differ by {d}",
                dir.display(),
                clip.wav
            );
        }
    }
}

#[test]
fn posteriors_match_reference() {
    ort();
    for dir in models() {
        let manifest = Manifest::load(&dir).unwrap();
        let g = golden(&dir);
        for variant in variants() {
            let mut scorer = OnnxScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
            for clip in &g.clips {
                let want = if variant == "fp32" {
                    &clip.probs_fp32
                } else {
                    &clip.probs_int8
                };
                let mut out = vec![0.0; scorer.num_classes()];
                // The reference features through the Rust scorer: only the runtime differs.
                scorer.score(&clip.features, &mut out).unwrap();
                let d_runtime = max_abs_diff(&out, want);
                // Rust features through the Rust scorer: the whole Rust path.
                let x = read_wav(&dir.join("golden").join(&clip.wav));
                scorer.score(&mfcc(&x), &mut out).unwrap();
                let d_all = max_abs_diff(&out, want);
                println!(
                    "{} {variant} {}: runtime {d_runtime:e}, end-to-end {d_all:e}",
                    dir.display(),
                    clip.wav
                );
                assert!(
                    d_runtime <= tol(variant) && d_all <= tol(variant),
                    "{} {variant} {}",
                    dir.display(),
                    clip.wav
                );
            }
        }
    }
}

#[test]
fn golden_stream_trace_and_events() {
    ort();
    for dir in models() {
        let g = golden(&dir);
        for variant in variants() {
            let (want_trace, want_events) = if variant == "fp32" {
                (&g.stream.trace_fp32, &g.stream.events_fp32)
            } else {
                (&g.stream.trace_int8, &g.stream.events_int8)
            };
            let StreamRun { trace, events } = run_stream(&dir, variant);
            assert_eq!(
                trace.len(),
                want_trace.len(),
                "{} {variant}: window count",
                dir.display()
            );
            let mut worst = 0.0f32;
            for (got, want) in trace.iter().zip(want_trace) {
                assert_eq!(
                    (got.start_ms, got.end_ms),
                    (want.start_ms, want.end_ms),
                    "window timing"
                );
                worst = worst.max(max_abs_diff(&got.probs, &want.probs));
            }
            println!(
                "{} {variant}: {} windows, max |Δ prob| = {worst:e}, events {events:?}",
                dir.display(),
                trace.len()
            );
            assert!(
                worst <= tol(variant),
                "{} {variant}: trace differs by {worst}",
                dir.display()
            );
            assert_eq!(
                events.len(),
                want_events.len(),
                "{} {variant}: {events:?} vs {want_events:?}",
                dir.display()
            );
            for (e, w) in events.iter().zip(want_events) {
                assert_eq!(
                    (&e.keyword, e.start_ms, e.end_ms),
                    (&w.keyword, w.start_ms, w.end_ms)
                );
                assert!((e.score - w.score).abs() <= tol(variant), "{e:?} vs {w:?}");
            }
            assert!(!events.is_empty(), "the golden stream must produce events");
        }
    }
}

/// The shipped manifest's cascade (first stage + verifier, models 2.0.0) on the golden stream gives
/// the events Python computed (`kws_train.verifier_golden shipped`): same keywords and windows,
/// first-stage scores within the trace tolerance, verifier scores within 1e-4 (different kernels
/// sum in other orders: 8.9e-7 to 3.4e-6 between ISA paths, `isa_parity.rs`). The golden records
/// the smallest distance of a candidate's verifier score to its threshold, which must exceed that.
#[test]
fn golden_stream_cascade_events() {
    // The emulated ISA paths of deploy/test-isa.sh: one verifier clip costs 25-47 s of CPU under
    // TCG and this test verifies 18. Its inputs are checked there anyway: the first stage's trace
    // (golden_stream_trace_and_events) and the verifier's probabilities (tests/verifier.rs, within
    // 3.4e-6 of native), far inside the golden's margin to the verdict thresholds.
    if skip_verifier_runs("golden_stream_cascade_events") {
        return;
    }
    ort();
    let mut checked = 0;
    for dir in models() {
        let g = golden(&dir);
        let manifest = Manifest::load(&dir).unwrap();
        let Some(want) = g.stream.cascade else {
            assert!(
                manifest.verifier.is_none(),
                "{}: a verifier but no cascade golden",
                dir.display()
            );
            continue;
        };
        assert!(
            // The verifier-score tolerance below: a verdict within it of its threshold could flip.
            want.min_verifier_margin.unwrap_or(1.0) > 1e-4,
            "{}: verdicts too close to call",
            dir.display()
        );
        let mut verifier = kws_models::Verifier::from_manifest(&manifest, &ScorerOptions::default()).unwrap();
        let x = read_wav(&dir.join("golden").join(&g.stream.wav));
        let bytes: Vec<u8> = x
            .iter()
            .flat_map(|v| ((v * 32768.0) as i16).to_le_bytes())
            .collect();
        for variant in variants() {
            let mut scorer = OnnxScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
            let config =
                StreamConfig::from_manifest(&manifest, PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap());
            assert_eq!(config.hop_frames, g.stream.hop_frames);
            let cascade = config
                .cascade
                .clone()
                .expect("the manifest's cascade is on by default");
            assert_eq!(cascade.config.first_stage_threshold, want.first_stage_threshold);
            let mut spotter = Spotter::new(config, manifest.num_classes()).unwrap();
            let events = spotter
                .process_pcm_with(&mut scorer, Some(&mut verifier), &bytes)
                .unwrap();
            let want_events = if variant == "fp32" {
                &want.events_fp32
            } else {
                &want.events_int8
            };
            println!("{} {variant}: cascade events {events:?}", dir.display());
            assert_eq!(
                events.len(),
                want_events.len(),
                "{} {variant}: {events:?} vs {want_events:?}",
                dir.display()
            );
            for (e, w) in events.iter().zip(want_events) {
                assert_eq!(
                    (manifest.keywords[e.class].as_str(), e.start_ms, e.end_ms),
                    (w.keyword.as_str(), w.start_ms, w.end_ms)
                );
                assert!((e.score - w.score).abs() <= tol(variant), "{e:?} vs {w:?}");
                let v = e
                    .verifier_score
                    .expect("a cascade event carries the verifier's score");
                assert!((v - w.verifier_score).abs() <= 1e-4, "{e:?} vs {w:?}");
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no shipped model has a cascade golden");
}
