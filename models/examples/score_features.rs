//! Score a file of feature windows with the served scorer, to compare ONNX Runtime's kernel paths
//! (native, `qemu-x86_64 -cpu Haswell-v4` for AVX2, `qemu-aarch64` for arm64) on the same inputs.
//!
//! ```text
//! score_features MODEL_DIR VARIANT FEATURES OUT
//! ```
//! FEATURES: little-endian f32, N × 98 × 40 (time-major windows, as the model takes them).
//! OUT: little-endian f32, N × classes posteriors. The int8 kernel family ONNX Runtime picks on this
//! CPU is printed to stderr. ONNX Runtime comes from `$KWS_ORT_LIB` (see `scorer::locate_library`).
//! Used by `models/training/kws_train/quant.py`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::ExitCode;

use kws_models::frontend::WINDOW_VALUES;
use kws_models::{Manifest, OnnxScorer, Scorer, ScorerOptions};

/// Windows per ONNX Runtime call.
const BATCH: usize = 256;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, variant, features, out] = args.as_slice() else {
        eprintln!("usage: score_features MODEL_DIR VARIANT FEATURES OUT");
        return ExitCode::from(64);
    };
    match run(dir.into(), variant, features.into(), out.into()) {
        Ok(n) => {
            let cpu = kws_models::cpu::detect();
            eprintln!(
                "score_features: {n} windows, {} int8 kernels {} ({})",
                cpu.arch,
                cpu.int8_kernels,
                cpu.features_string()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("score_features: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: PathBuf, variant: &str, features: PathBuf, out: PathBuf) -> Result<usize, String> {
    let manifest = Manifest::load(&dir).map_err(|e| e.to_string())?;
    let mut scorer =
        OnnxScorer::new(&manifest, variant, &ScorerOptions::default()).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&features).map_err(|e| format!("{}: {e}", features.display()))?;
    let per_window = WINDOW_VALUES * 4;
    if bytes.len() % per_window != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of {per_window}-byte windows",
            features.display(),
            bytes.len()
        ));
    }
    let x: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n = x.len() / WINDOW_VALUES;
    let c = scorer.num_classes();
    let mut probs = vec![0.0f32; n * c];
    for (xs, ps) in x.chunks(BATCH * WINDOW_VALUES).zip(probs.chunks_mut(BATCH * c)) {
        scorer.score(xs, ps).map_err(|e| e.to_string())?;
    }
    let raw: Vec<u8> = probs.iter().flat_map(|p| p.to_le_bytes()).collect();
    std::fs::write(&out, raw).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(n)
}
