//! ONNX Runtime scoring cost per batch and per window: N = 1, 8, 32, 128, 512; 1 and 2 intra-op
//! threads; fp32 and int8 of the shipped TC-ResNet8. Needs the ONNX Runtime library (KWS_ORT_LIB or
//! .ort/<arch>/libonnxruntime.so).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kws_models::frontend::WINDOW_VALUES;
use kws_models::{Manifest, OnnxScorer, Scorer, ScorerOptions};
use std::hint::black_box;
use std::path::PathBuf;

fn scorer(c: &mut Criterion) {
    let model = std::env::var("KWS_BENCH_MODEL").unwrap_or_else(|_| "tc-resnet8".into());
    let manifest = Manifest::load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&model)).unwrap();
    let mut g = c.benchmark_group(format!("scorer/{model}"));
    for variant in ["fp32", "int8"] {
        for threads in [1usize, 2] {
            let opts = ScorerOptions {
                intra_threads: threads,
                optimize: true,
                library: Some(common::ort_lib()),
            };
            let mut s = OnnxScorer::new(&manifest, variant, &opts).unwrap();
            for n in [1usize, 8, 32, 128, 512] {
                let features: Vec<f32> = (0..n * WINDOW_VALUES)
                    .map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0)
                    .collect();
                let mut out = vec![0.0; n * s.num_classes()];
                g.throughput(Throughput::Elements(n as u64));
                g.bench_with_input(
                    BenchmarkId::new(format!("{variant}/t{threads}"), n),
                    &n,
                    |b, _| b.iter(|| s.score(black_box(&features), &mut out).unwrap()),
                );
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = scorer
}
criterion_main!(benches);
