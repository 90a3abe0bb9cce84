//! Frontend cost per 10 ms hop (one MFCC frame), and the resampler's cost per 10 ms of input.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kws_models::frontend::{HOP_LENGTH, MfccFrontend};
use kws_models::resample::StreamResampler;
use std::hint::black_box;

fn noise(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn frontend(c: &mut Criterion) {
    let audio = noise(16_000 * 10);
    let mut g = c.benchmark_group("frontend");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mfcc_per_10ms_hop", |b| {
        let mut fe = MfccFrontend::new();
        let mut i = 0;
        b.iter(|| {
            let hop = &audio[i..i + HOP_LENGTH];
            i = (i + HOP_LENGTH) % (audio.len() - HOP_LENGTH);
            let mut frames = 0;
            fe.push(black_box(hop), |f| {
                black_box(f);
                frames += 1;
            });
            frames
        })
    });
    for rate in [48_000u32, 44_100, 8_000] {
        let input = noise(rate as usize * 10);
        let step = rate as usize / 100;
        g.bench_function(format!("resample_{rate}_per_10ms"), |b| {
            let mut r = StreamResampler::new(rate).unwrap();
            let mut out = Vec::with_capacity(1024);
            let mut i = 0;
            b.iter(|| {
                out.clear();
                r.process(black_box(&input[i..i + step]), &mut out).unwrap();
                i = (i + step) % (input.len() - step);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frontend);
criterion_main!(benches);
