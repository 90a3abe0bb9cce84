//! Streaming scoring cost per hop: one `OnnxStreamScorer::score` call of N streams (N = 1, 8, 64,
//! 256), fp32 and int8, 1 intra-op thread, against the windowed graph of the same weights scoring the
//! same N streams' windows (one window per stream per hop); and, for the streaming graph, the batcher's
//! two ways round it: states copied into a batch buffer and back (`batch-copied`) against
//! `score_each` on each stream's own buffer (`batch-each`). Criterion's per-element time is the cost
//! per hop per stream. Model: `KWS_BENCH_MODEL` (default `tc-resnet8-stream`; a model directory
//! relative to the crate, or an absolute path); variants without a streaming graph (or a model without
//! a streaming section, e.g. `tc-resnet8`) are benchmarked windowed only. Needs the ONNX Runtime
//! library (KWS_ORT_LIB or .ort/<arch>/libonnxruntime.so).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kws_models::frontend::WINDOW_VALUES;
use kws_models::{Manifest, OnnxScorer, OnnxStreamScorer, Scorer, ScorerOptions, StreamScorer};
use std::hint::black_box;
use std::path::PathBuf;

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0).collect()
}

fn streaming(c: &mut Criterion) {
    let model = std::env::var("KWS_BENCH_MODEL").unwrap_or_else(|_| "tc-resnet8-stream".into());
    let manifest = Manifest::load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&model)).unwrap();
    let opts = ScorerOptions {
        intra_threads: 1,
        optimize: true,
        library: Some(common::ort_lib()),
    };
    let mut g = c.benchmark_group(format!("hop/{model}"));
    for variant in ["fp32", "int8"] {
        let mut w = OnnxScorer::new(&manifest, variant, &opts).unwrap();
        let streams = manifest
            .streaming
            .as_ref()
            .is_some_and(|s| s.files.contains_key(variant));
        let mut s = streams.then(|| OnnxStreamScorer::new(&manifest, variant, &opts).unwrap());
        for n in [1usize, 8, 64, 256] {
            let mut probs = vec![0.0; n * w.num_classes()];
            g.throughput(Throughput::Elements(n as u64));
            if let Some(s) = s.as_mut() {
                let layout = s.layout().clone();
                let frames = values(n * layout.frame_values());
                // Realistic state values: what the graph leaves after a few hops of these frames.
                let mut states = vec![0.0; n * layout.len];
                let mut next = states.clone();
                for _ in 0..60 {
                    s.score(&frames, &states, &mut next, &mut probs).unwrap();
                    std::mem::swap(&mut states, &mut next);
                }
                g.bench_with_input(BenchmarkId::new(format!("{variant}/streaming"), n), &n, |b, _| {
                    b.iter(|| {
                        s.score(black_box(&frames), black_box(&states), &mut next, &mut probs)
                            .unwrap()
                    })
                });
                // What a batcher with one state buffer per stream pays around the graph: the states
                // concatenated into a batch buffer, scored, and copied back (before `score_each`) ...
                let mut own: Vec<Vec<f32>> = states.chunks(layout.len).map(<[f32]>::to_vec).collect();
                let (mut batch_in, mut batch_out) = (Vec::new(), vec![0.0; n * layout.len]);
                g.bench_with_input(
                    BenchmarkId::new(format!("{variant}/batch-copied"), n),
                    &n,
                    |b, _| {
                        b.iter(|| {
                            batch_in.clear();
                            for st in &own {
                                batch_in.extend_from_slice(st);
                            }
                            s.score(black_box(&frames), &batch_in, &mut batch_out, &mut probs)
                                .unwrap();
                            for (st, new) in own.iter_mut().zip(batch_out.chunks_exact(layout.len)) {
                                st.copy_from_slice(new);
                            }
                        })
                    },
                );
                // ... and `score_each`, reading and writing the streams' buffers directly.
                g.bench_with_input(
                    BenchmarkId::new(format!("{variant}/batch-each"), n),
                    &n,
                    |b, _| {
                        b.iter(|| {
                            let mut views: Vec<&mut [f32]> = own.iter_mut().map(Vec::as_mut_slice).collect();
                            s.score_each(black_box(&frames), &mut views, &mut probs).unwrap()
                        })
                    },
                );
            }
            let windows = values(n * WINDOW_VALUES);
            g.bench_with_input(BenchmarkId::new(format!("{variant}/windowed"), n), &n, |b, _| {
                b.iter(|| w.score(black_box(&windows), &mut probs).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = streaming
}
criterion_main!(benches);
