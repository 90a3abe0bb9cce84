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
use kws_models::{Manifest, OnnxScorer, Scorer, ScorerOptions};

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
