//! The whole offline pipeline for one stream: s16 PCM -> (resample) -> MFCC -> windows every 20 ms
//! -> ONNX Runtime (batches of 256) -> decoder. Throughput is reported in seconds of audio: criterion's
//! "elements/s" = audio seconds per wall second on one core (single-threaded session).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kws_models::{Encoding, Manifest, OnnxScorer, PcmFormat, ScorerOptions, Spotter, StreamConfig};
use std::hint::black_box;
use std::path::PathBuf;

fn pipeline(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = Manifest::load(dir.join("tc-resnet8")).unwrap();
    let lib = common::ort_lib();
    let wav = hound::WavReader::open(dir.join("tc-resnet8/golden/stream.wav")).unwrap();
    let samples: Vec<i16> = wav.into_samples::<i16>().map(|s| s.unwrap()).collect();
    let seconds = samples.len() as f64 / 16_000.0;
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(20);
    g.throughput(Throughput::Elements(seconds.round() as u64));
    for variant in ["int8", "fp32"] {
        let opts = ScorerOptions {
            intra_threads: 1,
            optimize: true,
            library: Some(lib.clone()),
        };
        let mut scorer = OnnxScorer::new(&manifest, variant, &opts).unwrap();
        let pcm: Vec<u8> = samples.iter().flat_map(|v| v.to_le_bytes()).collect();
        let fmt = PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap();
        g.bench_function(format!("{variant}/16k_5.5s"), |b| {
            b.iter(|| {
                // The first stage's pipeline (the manifest's cascade would need a verifier; its
                // cost per candidate is `examples/verifier_cost.rs`).
                let config = StreamConfig {
                    cascade: None,
                    ..StreamConfig::from_manifest(&manifest, fmt)
                };
                let mut sp = Spotter::new(config, 12).unwrap();
                black_box(sp.process_pcm(&mut scorer, black_box(&pcm)).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
