//! Bytes of heap a `Spotter` allocates for its own state (the shared model, FFT plans and tables
//! excluded), per input rate, without and with the cascade of the test fixture's manifest (the
//! research verifier head); and a streaming `Spotter` of `tc-resnet8-stream` (model state and
//! pending frames instead of the 98-frame ring) at 16 kHz.
//! `cargo run --release -p kws-models --example state_size`
#![allow(unsafe_code, clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kws_models::frontend::mfcc;
use kws_models::{
    CascadeSettings, DecoderConfig, Encoding, Manifest, PcmFormat, Spotter, StreamConfig, WindowBatch,
};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    // Build the shared tables and this thread's scratch first: they are not per-stream state.
    let _ = mfcc(&[0.0; 16_000]);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verifier");
    let cascade = CascadeSettings::from_manifest(&Manifest::load(fixture).unwrap());
    for (rate, cascade) in [16_000u32, 48_000, 44_100, 8_000]
        .into_iter()
        .map(|r| (r, None))
        .chain([(16_000, cascade)])
    {
        let with = if cascade.is_some() {
            " with the cascade"
        } else {
            ""
        };
        let fmt = PcmFormat::new(Encoding::S16Le, rate, 1).unwrap();
        let cfg = StreamConfig {
            format: fmt,
            hop_frames: 2,
            decoder: DecoderConfig {
                smoothing_ms: 60,
                refractory_ms: 1000,
                thresholds: vec![Some(0.5); 10],
            },
            cascade,
        };
        // Warm up this rate's one-off allocations (FFT plans are cached per size), then measure.
        let mut warm = Spotter::new(cfg.clone(), 12).unwrap();
        warm.push_pcm(&vec![0u8; rate as usize / 5], &mut WindowBatch::new())
            .unwrap();
        drop(warm);
        let before = LIVE.load(Ordering::SeqCst);
        let mut s = Spotter::new(cfg, 12).unwrap();
        let mut batch = WindowBatch::new();
        s.push_pcm(&vec![0u8; rate as usize * 2 * 3], &mut batch).unwrap();
        drop(batch);
        let after = LIVE.load(Ordering::SeqCst);
        println!(
            "{rate} Hz{with}: {} bytes ({:.1} KiB) of state per Spotter",
            after - before,
            (after - before) as f64 / 1024.0
        );
        drop(s);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tc-resnet8-stream");
    let manifest = Manifest::load(&dir).unwrap();
    let layout = manifest.streaming.as_ref().unwrap().layout();
    let with_cascade =
        StreamConfig::from_manifest(&manifest, PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap());
    let first_stage = StreamConfig {
        cascade: None,
        ..with_cascade.clone()
    };
    for (what, cfg) in [
        ("first stage alone", first_stage),
        ("with its cascade", with_cascade),
    ] {
        let mut state = layout.initial_state();
        let before = LIVE.load(Ordering::SeqCst);
        let mut s = Spotter::new_streaming(cfg, manifest.num_classes(), layout.clone()).unwrap();
        let mut batch = WindowBatch::new();
        // 3 s pushed in 20-ms chunks, each chunk's hop completed as a server would.
        for chunk in vec![0u8; 16_000 * 2 * 3].chunks(640) {
            s.push_pcm(chunk, &mut batch).unwrap();
            while let Some(hop) = s.next_hop() {
                state.copy_from_slice(hop.state);
                s.complete_hop(&state, &[0.0; 12]).unwrap();
            }
        }
        drop(batch);
        let after = LIVE.load(Ordering::SeqCst);
        println!(
            "16000 Hz: {} bytes ({:.1} KiB) of state per streaming Spotter ({}, {what}), of which model state {} bytes",
            after - before,
            (after - before) as f64 / 1024.0,
            manifest.name,
            layout.state_bytes()
        );
        drop(s);
    }
}
