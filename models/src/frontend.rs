//! Incremental MFCC frontend, exactly as specified in `models/README.md` § Frontend.
//!
//! One 40-coefficient frame is computed per 10 ms hop from the last 30 ms of 16 kHz audio:
//! periodic Hann window (no normalization), 512-point real FFT (frame zero-padded at the end),
//! power spectrum, 64 HTK-mel triangles from 80 to 7600 Hz (TensorFlow's
//! `linear_to_mel_weight_matrix`), `ln(mel + 1e-6)`, orthonormal DCT-II, first 40 coefficients.
//! Arithmetic is f64 (the reference is numpy float64); frames are returned as f32.
//!
//! The constant tables (window, mel triangles, DCT, FFT plan) are built once per process and shared;
//! FFT scratch buffers are per thread. Per stream, a [`MfccFrontend`] holds only the last 480
//! samples.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Model sample rate in Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per analysis frame (30 ms).
pub const FRAME_LENGTH: usize = 480;
/// Samples between frame starts (10 ms).
pub const HOP_LENGTH: usize = 160;
/// FFT size; the frame is zero-padded at the end.
pub const FFT_SIZE: usize = 512;
/// Mel bands.
pub const NUM_MEL: usize = 64;
/// Lowest mel edge in Hz.
pub const MEL_LOW_HZ: f64 = 80.0;
/// Highest mel edge in Hz.
pub const MEL_HIGH_HZ: f64 = 7600.0;
/// Cepstral coefficients kept per frame.
pub const NUM_MFCC: usize = 40;
/// Added to mel energies before the natural log.
pub const LOG_OFFSET: f64 = 1e-6;
/// Frames per model window (1 s).
pub const WINDOW_FRAMES: usize = 98;
/// Values per model window (98 x 40).
pub const WINDOW_VALUES: usize = WINDOW_FRAMES * NUM_MFCC;
/// Milliseconds between frame starts (the hop: 160 samples at 16 kHz).
pub const MS_PER_FRAME: u32 = HOP_LENGTH as u32 * 1000 / SAMPLE_RATE;
/// Milliseconds one frame spans (480 samples at 16 kHz).
pub const FRAME_MS: u32 = FRAME_LENGTH as u32 * 1000 / SAMPLE_RATE;
/// Milliseconds one window spans, from the start of its first frame to the end of its last (1 s):
/// no window exists before this much audio.
pub const WINDOW_MS: u32 = (WINDOW_FRAMES as u32 - 1) * MS_PER_FRAME + FRAME_MS;
const _: () = assert!(MS_PER_FRAME == 10 && FRAME_MS == 30 && WINDOW_MS == 1000);
const NUM_BINS: usize = FFT_SIZE / 2 + 1;

struct Tables {
    window: [f64; FRAME_LENGTH],
    /// Per mel band: first FFT bin with a non-zero weight, and the weights from there.
    mel: Vec<(usize, Vec<f64>)>,
    /// `dct[k][n]`: coefficient k from log-mel band n.
    dct: Vec<[f64; NUM_MEL]>,
    fft: Arc<dyn RealToComplex<f64>>,
}

fn hz_to_mel(hz: f64) -> f64 {
    1127.0 * (hz / 700.0).ln_1p()
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut window = [0.0; FRAME_LENGTH];
        for (k, w) in window.iter_mut().enumerate() {
            *w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / FRAME_LENGTH as f64).cos();
        }
        let nyquist = f64::from(SAMPLE_RATE) / 2.0;
        let (lo, hi) = (hz_to_mel(MEL_LOW_HZ), hz_to_mel(MEL_HIGH_HZ));
        let edge = |i: usize| lo + (hi - lo) * i as f64 / (NUM_MEL + 1) as f64;
        let mel = (0..NUM_MEL)
            .map(|m| {
                let (left, center, right) = (edge(m), edge(m + 1), edge(m + 2));
                // Bin 0 (DC) has weight 0; bin b's frequency is b * nyquist / 256 (numpy linspace).
                let weights: Vec<(usize, f64)> = (1..NUM_BINS)
                    .map(|b| {
                        let f = hz_to_mel(nyquist * b as f64 / (NUM_BINS - 1) as f64);
                        let w = ((f - left) / (center - left)).min((right - f) / (right - center));
                        (b, w.max(0.0))
                    })
                    .filter(|&(_, w)| w > 0.0)
                    .collect();
                let start = weights.first().map_or(1, |&(b, _)| b);
                (start, weights.into_iter().map(|(_, w)| w).collect())
            })
            .collect();
        let dct = (0..NUM_MFCC)
            .map(|k| {
                let scale = if k == 0 {
                    (1.0 / NUM_MEL as f64).sqrt()
                } else {
                    (2.0 / NUM_MEL as f64).sqrt()
                };
                let mut row = [0.0; NUM_MEL];
                for (n, v) in row.iter_mut().enumerate() {
                    *v = scale
                        * (std::f64::consts::PI * k as f64 * (2.0 * n as f64 + 1.0) / (2.0 * NUM_MEL as f64))
                            .cos();
                }
                row
            })
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(FFT_SIZE);
        Tables {
            window,
            mel,
            dct,
            fft,
        }
    })
}

struct Scratch {
    input: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    fft: Vec<Complex<f64>>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// MFCC of one 480-sample frame (the reference `mfcc` of a single frame). Allocation-free after the
/// first call on a thread.
pub fn mfcc_frame(frame: &[f32; FRAME_LENGTH], out: &mut [f32; NUM_MFCC]) {
    let t = tables();
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let s = guard.get_or_insert_with(|| Scratch {
            input: t.fft.make_input_vec(),
            spectrum: t.fft.make_output_vec(),
            fft: t.fft.make_scratch_vec(),
        });
        for ((dst, &x), &w) in s.input.iter_mut().zip(frame.iter()).zip(t.window.iter()) {
            *dst = f64::from(x) * w;
        }
        s.input[FRAME_LENGTH..].fill(0.0);
        // Cannot fail: buffers come from the plan itself.
        let _ = t
            .fft
            .process_with_scratch(&mut s.input, &mut s.spectrum, &mut s.fft);
        let mut logmel = [0.0f64; NUM_MEL];
        for ((start, weights), lm) in t.mel.iter().zip(logmel.iter_mut()) {
            let e: f64 = s.spectrum[*start..*start + weights.len()]
                .iter()
                .zip(weights)
                .map(|(c, w)| (c.re * c.re + c.im * c.im) * w)
                .sum();
            *lm = (e + LOG_OFFSET).ln();
        }
        for (row, o) in t.dct.iter().zip(out.iter_mut()) {
            *o = row.iter().zip(&logmel).map(|(a, b)| a * b).sum::<f64>() as f32;
        }
    });
}

/// Incremental frontend for one stream: push 16 kHz samples, get one MFCC frame per 10 ms hop.
///
/// Frame `i` covers samples `[160 i, 160 i + 480)` of the stream; it is produced by the push that
/// delivers sample `160 i + 479`. Partial frames are never formed.
#[derive(Debug, Clone)]
pub struct MfccFrontend {
    buf: Box<[f32; FRAME_LENGTH]>,
    filled: usize,
    frames: u64,
    samples: u64,
}

impl Default for MfccFrontend {
    fn default() -> Self {
        Self::new()
    }
}

impl MfccFrontend {
    pub fn new() -> Self {
        Self {
            buf: Box::new([0.0; FRAME_LENGTH]),
            filled: 0,
            frames: 0,
            samples: 0,
        }
    }

    /// Frames produced so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// 16 kHz samples consumed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Consume `samples` (16 kHz, nominally [-1, 1]); call `on_frame` for each completed frame, in order.
    /// Never allocates.
    pub fn push(&mut self, mut samples: &[f32], mut on_frame: impl FnMut(&[f32; NUM_MFCC])) {
        self.samples += samples.len() as u64;
        let mut coeffs = [0.0f32; NUM_MFCC];
        while !samples.is_empty() {
            let take = (FRAME_LENGTH - self.filled).min(samples.len());
            self.buf[self.filled..self.filled + take].copy_from_slice(&samples[..take]);
            self.filled += take;
            samples = &samples[take..];
            if self.filled == FRAME_LENGTH {
                mfcc_frame(&self.buf, &mut coeffs);
                on_frame(&coeffs);
                self.frames += 1;
                self.buf.copy_within(HOP_LENGTH.., 0);
                self.filled = FRAME_LENGTH - HOP_LENGTH;
            }
        }
    }
}

/// MFCC of a whole 16 kHz signal: `[num_frames, 40]` row-major, `num_frames = 1 + (len - 480) / 160`
/// (0 if shorter than one frame). Allocates the result.
pub fn mfcc(samples: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    MfccFrontend::new().push(samples, |f| out.extend_from_slice(f));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_matrix_shape_and_edges() {
        let t = tables();
        assert_eq!(t.mel.len(), NUM_MEL);
        // Every band has weights, none touches DC, all weights are in (0, 1].
        for (start, w) in &t.mel {
            assert!(*start >= 1 && !w.is_empty());
            assert!(w.iter().all(|&v| v > 0.0 && v <= 1.0));
        }
        // The top band ends below 7600 Hz: bin 7600/31.25 = 243.2.
        let (start, w) = &t.mel[NUM_MEL - 1];
        assert!(start + w.len() <= 244);
    }

    #[test]
    fn dct_rows_are_orthonormal() {
        let t = tables();
        for a in 0..NUM_MFCC {
            for b in 0..NUM_MFCC {
                let dot: f64 = t.dct[a].iter().zip(&t.dct[b]).map(|(x, y)| x * y).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "rows {a},{b}: {dot}");
            }
        }
    }

    #[test]
    fn silence_gives_constant_c0() {
        // ln(1e-6) in every band -> c0 = 8 * ln(1e-6), the other coefficients 0.
        let frames = mfcc(&[0.0; 16_000]);
        assert_eq!(frames.len(), WINDOW_VALUES);
        let c0 = 8.0 * (1e-6f64).ln();
        assert!((f64::from(frames[0]) - c0).abs() < 1e-4);
        assert!(frames[1..NUM_MFCC].iter().all(|v| v.abs() < 1e-4));
    }

    #[test]
    fn frame_count_follows_the_spec() {
        assert!(mfcc(&[0.1; 479]).is_empty());
        assert_eq!(mfcc(&[0.1; 480]).len(), NUM_MFCC);
        assert_eq!(mfcc(&[0.1; 639]).len(), NUM_MFCC);
        assert_eq!(mfcc(&[0.1; 640]).len(), 2 * NUM_MFCC);
    }
}
