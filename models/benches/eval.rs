//! Live-evaluation cost per window: [`GridDecoder::observe`] over the service's default grid (28
//! thresholds), on the golden stream's smoothed posteriors (speech with keywords: TC-ResNet8 fp32,
//! first stage) and on a silent stream (every keyword below the lowest threshold). Every stream of
//! the service that is labelled or known negative pays this per window; criterion's "elements/s" are
//! windows per second.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kws_models::eval::GridDecoder;
use kws_models::{
    Encoding, Manifest, OnnxScorer, PcmFormat, ScorerOptions, Spotter, StreamConfig, WindowBatch, WindowMeta,
};
use std::hint::black_box;
use std::path::PathBuf;

/// The service's default grid (`kws_service::config::default_grid`).
fn grid() -> Vec<f32> {
    let mut grid: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
    grid.extend([0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995]);
    grid
}

fn golden_posteriors() -> Vec<(WindowMeta, Vec<f32>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = Manifest::load(dir.join("tc-resnet8")).unwrap();
    let lib = common::ort_lib();
    let opts = ScorerOptions {
        intra_threads: 1,
        optimize: true,
        library: Some(lib),
    };
    let mut scorer = OnnxScorer::new(&manifest, "fp32", &opts).unwrap();
    let wav = hound::WavReader::open(dir.join("tc-resnet8/golden/stream.wav")).unwrap();
    let pcm: Vec<u8> = wav
        .into_samples::<i16>()
        .flat_map(|s| s.unwrap().to_le_bytes())
        .collect();
    let fmt = PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap();
    let mut config = StreamConfig::from_manifest(&manifest, fmt);
    config.cascade = None;
    let mut sp = Spotter::new(config, manifest.num_classes()).unwrap();
    let mut batch = WindowBatch::new();
    sp.push_pcm(&pcm, &mut batch).unwrap();
    sp.finish(&mut batch).unwrap();
    let mut out = Vec::new();
    sp.score_windows(
        &mut scorer,
        None,
        &batch,
        |w, s| out.push((*w, s.to_vec())),
        |_| {},
    )
    .unwrap();
    out
}

fn observe(c: &mut Criterion) {
    let speech = golden_posteriors();
    let silent: Vec<(WindowMeta, Vec<f32>)> = speech.iter().map(|(w, s)| (*w, vec![0.0; s.len()])).collect();
    let keywords: Vec<usize> = (0..10).collect();
    let grid = grid();
    let mut g = c.benchmark_group("grid_observe");
    for (name, windows) in [("golden_stream", &speech), ("silent", &silent)] {
        g.throughput(Throughput::Elements(windows.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut d = GridDecoder::new(&grid, &keywords, 1000, usize::MAX);
                for (w, s) in windows {
                    d.observe(w, black_box(s));
                }
                black_box(d.truncated())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
