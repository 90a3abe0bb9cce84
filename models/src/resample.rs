//! Streaming resampling of mono audio to 16 kHz with rubato, delay-compensated.
//!
//! Output sample `k` always corresponds to time `k / 16000` s of the input stream's own clock: the
//! resampler's start-up delay ([`rubato::Resampler::output_delay`]) is dropped from the front, and
//! [`StreamResampler::finish`] pumps out the tail so the total output is exactly
//! `floor(input_frames * 16000 / rate)` samples. Chunks of any size (1 sample to many seconds) give
//! the same output.
//!
//! Rates whose ratio to 16 kHz reduces to a block of at most 100 ms (8, 11.025, 22.05, 24, 32,
//! 44.1, 48, 96, 192 kHz, ...) use rubato's synchronous FFT resampler on 40 ms blocks (cheap; 20 ms
//! delay, so a sample reaches the frontend 20-60 ms after it arrives); any other rate uses the
//! asynchronous sinc resampler. 16 kHz bypasses resampling.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, FixedSync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::error::{AudioError, ConfigError};
use crate::frontend::SAMPLE_RATE;

/// Input block of the FFT resampler, in ms (its delay is half of it).
const FFT_BLOCK_MS: usize = 40;

/// Resamples one mono stream to 16 kHz.
pub struct StreamResampler {
    rate_in: u32,
    state: Option<Box<RubatoState>>,
}

struct RubatoState {
    resampler: Box<dyn Resampler<f32>>,
    /// Input frames waiting for a full chunk (always fewer than `input_frames_next()`).
    pending: Vec<f32>,
    /// Output of one `process_into_buffer` call.
    scratch: Vec<f32>,
    /// Start-up delay frames still to drop.
    skip: usize,
    frames_in: u64,
    frames_out: u64,
    finished: bool,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("rate_in", &self.rate_in)
            .field("delay", &self.delay_frames())
            .finish()
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl StreamResampler {
    /// A resampler from `rate_in` Hz (already validated to 8–192 kHz) to 16 kHz.
    pub fn new(rate_in: u32) -> Result<Self, ConfigError> {
        if rate_in == SAMPLE_RATE {
            return Ok(Self { rate_in, state: None });
        }
        let err = |e: rubato::ResamplerConstructionError| ConfigError::Resampler {
            rate: rate_in,
            reason: e.to_string(),
        };
        let block_in = (rate_in / gcd(rate_in, SAMPLE_RATE)) as usize;
        let ten_ms = (rate_in as usize).div_ceil(100);
        let resampler: Box<dyn Resampler<f32>> = if block_in <= rate_in as usize / 10 {
            // 40 ms FFT blocks: the anti-aliasing filter is then flat to ~7.5 kHz (a 10 ms block rolls
            // off from 7 kHz, -10 dB at 7.4 kHz, inside the top mel bands), for 20 ms of delay.
            let chunk = (FFT_BLOCK_MS * ten_ms).div_ceil(10 * block_in) * block_in;
            Box::new(
                rubato::Fft::<f32>::new_custom(
                    rate_in as usize,
                    SAMPLE_RATE as usize,
                    chunk,
                    1,
                    1,
                    WindowFunction::BlackmanHarris2,
                    FixedSync::Input,
                )
                .map_err(err)?,
            )
        } else {
            let params = SincInterpolationParameters {
                sinc_len: 128,
                f_cutoff: None,
                oversampling_factor: 128,
                interpolation: SincInterpolationType::Linear,
                window: WindowFunction::BlackmanHarris2,
            };
            Box::new(
                Async::<f32>::new_sinc(
                    f64::from(SAMPLE_RATE) / f64::from(rate_in),
                    1.0,
                    &params,
                    ten_ms,
                    1,
                    FixedAsync::Input,
                )
                .map_err(err)?,
            )
        };
        let skip = resampler.output_delay();
        let scratch = vec![0.0; resampler.output_frames_max()];
        let pending = Vec::with_capacity(resampler.input_frames_max());
        Ok(Self {
            rate_in,
            state: Some(Box::new(RubatoState {
                resampler,
                pending,
                scratch,
                skip,
                frames_in: 0,
                frames_out: 0,
                finished: false,
            })),
        })
    }

    /// Input rate in Hz.
    pub fn rate_in(&self) -> u32 {
        self.rate_in
    }

    /// True if the input is already 16 kHz and samples pass through untouched.
    pub fn is_bypass(&self) -> bool {
        self.state.is_none()
    }

    /// The resampler's delay in 16 kHz frames (0 when bypassed). It is compensated, not added: it only
    /// means output for an input instant becomes available this much later.
    pub fn delay_frames(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.resampler.output_delay())
    }

    /// Resample `input` and append every 16 kHz sample that is now complete to `out`.
    ///
    /// Allocates only if `out` must grow; internal buffers are sized at construction.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        let Some(s) = self.state.as_deref_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        if s.finished {
            return Err(AudioError::Finished);
        }
        s.frames_in += input.len() as u64;
        let mut rest = input;
        loop {
            let need = s.resampler.input_frames_next();
            if !s.pending.is_empty() || rest.len() < need {
                let take = (need - s.pending.len()).min(rest.len());
                s.pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if s.pending.len() < need {
                    return Ok(());
                }
                let pending = std::mem::take(&mut s.pending);
                let r = s.run(&pending, None, out);
                s.pending = pending;
                s.pending.clear();
                r?;
            } else {
                s.run(rest, None, out)?;
                rest = &rest[need..];
            }
        }
    }

    /// End of stream: flush the resampler so the output totals `floor(input_frames * 16000 / rate)`.
    /// Later calls to [`process`](Self::process) fail with [`AudioError::Finished`].
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let Some(s) = self.state.as_deref_mut() else {
            return Ok(());
        };
        if s.finished {
            return Ok(());
        }
        s.finished = true;
        let expected = s.frames_in * u64::from(SAMPLE_RATE) / u64::from(self.rate_in);
        let pending = std::mem::take(&mut s.pending);
        let mut partial = pending.len();
        let mut zeros = vec![0.0f32; s.resampler.input_frames_max()];
        zeros[..partial].copy_from_slice(&pending);
        while s.frames_out < expected {
            let before = out.len();
            s.run(&zeros, Some(partial), out)?;
            let over = s.frames_out.saturating_sub(expected) as usize;
            out.truncate(out.len() - over.min(out.len() - before));
            s.frames_out = s.frames_out.min(expected);
            if partial > 0 {
                partial = 0;
                zeros[..pending.len()].fill(0.0);
            }
        }
        Ok(())
    }
}

impl RubatoState {
    /// One `process_into_buffer` call on `input[..input_frames_next()]` (or a partial chunk), appending
    /// the output after the start-up delay has been dropped.
    fn run(&mut self, input: &[f32], partial: Option<usize>, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let err = |e: &dyn std::fmt::Display| AudioError::Resample(e.to_string());
        let frames = self.resampler.input_frames_next().max(partial.unwrap_or(0));
        let frames = frames.min(input.len());
        let inp = InterleavedSlice::new(input, 1, frames).map_err(|e| err(&e))?;
        let cap = self.scratch.len();
        let mut outp = InterleavedSlice::new_mut(&mut self.scratch, 1, cap).map_err(|e| err(&e))?;
        let indexing = partial.map(|p| Indexing::new().partial_len(p));
        let (_, produced) = self
            .resampler
            .process_into_buffer(&inp, &mut outp, indexing.as_ref())
            .map_err(|e| err(&e))?;
        let drop = self.skip.min(produced);
        self.skip -= drop;
        out.extend_from_slice(&self.scratch[drop..produced]);
        self.frames_out += (produced - drop) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    fn run_chunks(rate: u32, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut r = StreamResampler::new(rate).expect("resampler");
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            r.process(c, &mut out).expect("process");
        }
        r.finish(&mut out).expect("finish");
        out
    }

    #[test]
    fn bypass_is_identity() {
        let x = sine(16_000, 440.0, 1000);
        assert_eq!(run_chunks(16_000, &x, 7), x);
    }

    #[test]
    fn output_length_is_exact_and_chunk_invariant() {
        for rate in [8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 192_000, 37_123] {
            let n = rate as usize * 3 / 2 + 17;
            let x = sine(rate, 440.0, n);
            let reference = run_chunks(rate, &x, n);
            assert_eq!(
                reference.len() as u64,
                n as u64 * 16_000 / u64::from(rate),
                "rate {rate}"
            );
            for chunk in [1, 7, 160, 1000, 16_000] {
                let got = run_chunks(rate, &x, chunk);
                assert_eq!(got.len(), reference.len(), "rate {rate} chunk {chunk}");
                let max = got
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(max < 1e-5, "rate {rate} chunk {chunk}: max diff {max}");
            }
        }
    }

    #[test]
    fn delay_is_compensated() {
        // A 1 kHz tone starting at input frame n/2 (0.5 s) must start near output sample 8000.
        for rate in [8_000, 44_100, 48_000, 37_123] {
            let n = rate as usize;
            let mut x = vec![0.0f32; n];
            let tone = sine(rate, 1000.0, n - n / 2);
            x[n / 2..].copy_from_slice(&tone);
            let y = run_chunks(rate, &x, 333);
            let onset = y.iter().position(|v| v.abs() > 0.1).expect("tone present");
            assert!((onset as i64 - 8_000).abs() <= 8, "rate {rate}: onset at {onset}");
        }
    }

    #[test]
    fn process_after_finish_fails() {
        let mut r = StreamResampler::new(48_000).expect("resampler");
        let mut out = Vec::new();
        r.finish(&mut out).expect("finish");
        assert_eq!(r.process(&[0.0], &mut out), Err(AudioError::Finished));
    }
}
