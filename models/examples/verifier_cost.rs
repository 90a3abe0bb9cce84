//! CPU cost of the second-stage verifier per candidate, at batch sizes 1, 4 and 16 (one intra-op
//! thread): process CPU time (user + system, all threads, from `/proc/self/stat`), not wall time,
//! as the machines this runs on are shared.
//!
//! ```text
//! cargo run --release -p kws-models --example verifier_cost [MODEL_DIR] [SECONDS_PER_POINT]
//! ```
//! MODEL_DIR: a model directory whose manifest has a `verifier` section (default: the test fixture
//! `models/tests/fixtures/verifier`, the research head). Clips are full clips of the manifest's view
//! and shifted views (22 880 samples for 9 embeddings, 25 440 with `view_shifts` 1) of noise at
//! −20 dBFS (the cost does not depend on the audio). Prints per candidate: the whole call, the
//! features (one mel run per clip + one embedding run per batch) and the head.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kws_models::verifier::{Clip, HEAD_CLASSES, clip_samples};
use kws_models::{Manifest, ScorerOptions, Verifier};

#[path = "../benches/common/mod.rs"]
mod common;

/// Process CPU time (user + system), in clock ticks of 10 ms (`/proc/self/stat` fields 14 and 15).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Run `f` (one call on `n` clips) repeatedly for about `seconds` of CPU; ms of CPU and wall per
/// candidate.
fn measure(n: usize, seconds: f64, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..3 {
        f();
    }
    let (c0, t0) = (cpu_time(), Instant::now());
    let mut calls = 0usize;
    while (cpu_time() - c0).as_secs_f64() < seconds {
        f();
        calls += 1;
    }
    let per = 1000.0 / (calls * n) as f64;
    (
        (cpu_time() - c0).as_secs_f64() * per,
        t0.elapsed().as_secs_f64() * per,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verifier"));
    let seconds: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(3.0);
    let lib = common::ort_lib();
    let manifest = Manifest::load(&dir).unwrap();
    let options = ScorerOptions {
        intra_threads: 1,
        optimize: true,
        library: Some(lib),
    };
    let mut v = Verifier::from_manifest(&manifest, &options).unwrap();
    let mut seed = 1u32;
    let audio: Vec<Vec<f32>> = (0..16)
        .map(|_| {
            (0..clip_samples(v.clip_embeddings()))
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 * 0.2 - 0.1
                })
                .collect()
        })
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "verifier cost, {} ({} shifted views a side), {}, 1 intra-op thread, {seconds} s of CPU per point; load average {}",
        v.head_path().display(),
        v.view_shifts(),
        kws_models::cpu::detect().features_string(),
        load.split_whitespace().next().unwrap_or("?")
    );
    println!(
        "| batch | CPU ms / candidate | wall ms / candidate | features (mel + embedding) CPU ms | head CPU ms |"
    );
    println!("|---|---|---|---|---|");
    for n in [1usize, 4, 16] {
        let clips: Vec<Clip<'_>> = audio[..n].iter().map(|a| Clip::from(a.as_slice())).collect();
        let mut out = vec![0.0; n * HEAD_CLASSES];
        let mut views = Vec::new();
        let (cpu, wall) = measure(n, seconds, || v.score_into(&clips, &mut out).unwrap());
        let (feat, _) = measure(n, seconds, || v.views(&clips, &mut views).unwrap());
        println!(
            "| {n} | {cpu:.2} | {wall:.2} | {feat:.2} | {:.2} |",
            (cpu - feat).max(0.0)
        );
    }
}
