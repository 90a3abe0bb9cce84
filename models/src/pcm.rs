//! Raw PCM decoding: little-endian s16 or f32, 1–8 interleaved channels, downmixed to mono f32.
//!
//! Chunks are validated whole: a chunk must hold a whole number of frames (no partial frame is
//! carried over to the next chunk, so a client bug shows up at the chunk that has it), and f32
//! samples must be finite and within ±[`F32_MAX_ABS`].

use crate::error::{AudioError, ConfigError};

/// Lowest accepted input sample rate in Hz.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
/// Highest accepted input sample rate in Hz.
pub const MAX_SAMPLE_RATE: u32 = 192_000;
/// Most interleaved channels accepted.
pub const MAX_CHANNELS: u16 = 8;
/// Largest accepted |sample| for f32 input. Normalized audio lives in [-1, 1]; a little headroom is
/// tolerated, while larger values almost always mean integer-scaled samples sent as floats.
pub const F32_MAX_ABS: f32 = 8.0;

/// Check an input's rate (8–192 kHz) and channel count (1–8), whatever its encoding: the one home of
/// these ranges (the client checks WAV files with it before streaming them).
pub fn check_layout(sample_rate: u32, channels: u16) -> Result<(), ConfigError> {
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&sample_rate) {
        return Err(ConfigError::SampleRate(sample_rate));
    }
    if !(1..=MAX_CHANNELS).contains(&channels) {
        return Err(ConfigError::Channels(channels));
    }
    Ok(())
}

/// Sample encoding of the raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Signed 16-bit little-endian; decoded as `value / 32768`.
    S16Le,
    /// IEEE 754 32-bit little-endian float, nominally in [-1, 1].
    F32Le,
}

impl Encoding {
    /// Bytes per sample of one channel.
    pub const fn sample_bytes(self) -> usize {
        match self {
            Encoding::S16Le => 2,
            Encoding::F32Le => 4,
        }
    }

    /// Lower-case name, as used in configuration and error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::S16Le => "s16le",
            Encoding::F32Le => "f32le",
        }
    }
}

/// A validated description of an input stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    encoding: Encoding,
    sample_rate: u32,
    channels: u16,
}

impl PcmFormat {
    /// Validates rate (8–192 kHz) and channel count (1–8).
    pub fn new(encoding: Encoding, sample_rate: u32, channels: u16) -> Result<Self, ConfigError> {
        check_layout(sample_rate, channels)?;
        Ok(Self {
            encoding,
            sample_rate,
            channels,
        })
    }

    /// 16 kHz mono s16le, the model's native format.
    pub fn native_s16() -> Self {
        Self {
            encoding: Encoding::S16Le,
            sample_rate: crate::frontend::SAMPLE_RATE,
            channels: 1,
        }
    }

    /// The same rate and channels with another encoding.
    pub const fn with_encoding(self, encoding: Encoding) -> Self {
        Self { encoding, ..self }
    }

    pub const fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Input sample rate in Hz.
    pub const fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub const fn channels(&self) -> u16 {
        self.channels
    }

    /// Bytes of one interleaved frame (one sample of every channel).
    pub const fn frame_bytes(&self) -> usize {
        self.encoding.sample_bytes() * self.channels as usize
    }

    /// Check a chunk without decoding it: whole frames, and finite normalized f32 samples. Returns the
    /// frame count.
    pub fn validate(&self, bytes: &[u8]) -> Result<usize, AudioError> {
        let frame_bytes = self.frame_bytes();
        if !bytes.len().is_multiple_of(frame_bytes) {
            return Err(AudioError::PartialFrame {
                len: bytes.len(),
                frame_bytes,
                encoding: self.encoding().name(),
                channels: self.channels(),
            });
        }
        if self.encoding() == Encoding::F32Le {
            for (i, b) in bytes.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !v.is_finite() || v.abs() > F32_MAX_ABS {
                    let ch = self.channels() as usize;
                    return Err(AudioError::BadFloat {
                        frame: i / ch,
                        channel: i % ch,
                        value: v,
                    });
                }
            }
        }
        Ok(bytes.len() / frame_bytes)
    }

    /// Decode `bytes` and append the mono downmix (mean of the channels) to `out`.
    ///
    /// Returns the number of frames appended. Nothing is appended if the chunk is invalid.
    /// Allocates only if `out` must grow.
    pub fn decode_into(&self, bytes: &[u8], out: &mut Vec<f32>) -> Result<usize, AudioError> {
        let frames = self.validate(bytes)?;
        let frame_bytes = self.frame_bytes();
        let scale = 1.0 / f32::from(self.channels);
        out.reserve(frames);
        match self.encoding {
            Encoding::S16Le => out.extend(bytes.chunks_exact(frame_bytes).map(|frame| {
                let sum: i32 = frame
                    .chunks_exact(2)
                    .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
                    .sum();
                sum as f32 * (scale / 32768.0)
            })),
            Encoding::F32Le => out.extend(bytes.chunks_exact(frame_bytes).map(|frame| {
                let sum: f32 = frame
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .sum();
                sum * scale
            })),
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s16(v: &[i16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn f32b(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn rejects_bad_formats() {
        assert_eq!(
            PcmFormat::new(Encoding::S16Le, 7_999, 1),
            Err(ConfigError::SampleRate(7_999))
        );
        assert_eq!(
            PcmFormat::new(Encoding::S16Le, 192_001, 1),
            Err(ConfigError::SampleRate(192_001))
        );
        assert_eq!(
            PcmFormat::new(Encoding::S16Le, 16_000, 0),
            Err(ConfigError::Channels(0))
        );
        assert_eq!(
            PcmFormat::new(Encoding::F32Le, 16_000, 9),
            Err(ConfigError::Channels(9))
        );
        assert!(PcmFormat::new(Encoding::F32Le, 8_000, 8).is_ok());
        assert!(PcmFormat::new(Encoding::F32Le, 192_000, 1).is_ok());
    }

    #[test]
    fn s16_stereo_downmix_and_scale() -> Result<(), AudioError> {
        let fmt = PcmFormat::new(Encoding::S16Le, 48_000, 2).map_err(|_| AudioError::Empty)?;
        let mut out = Vec::new();
        let n = fmt.decode_into(&s16(&[16384, -16384, 32767, 32767, -32768, 0]), &mut out)?;
        assert_eq!(n, 3);
        assert_eq!(out, vec![0.0, 32767.0 / 32768.0, -0.5]);
        Ok(())
    }

    #[test]
    fn partial_frame_is_an_error_and_appends_nothing() {
        let fmt = PcmFormat::new(Encoding::S16Le, 16_000, 2).expect("valid format");
        let mut out = vec![1.0];
        let err = fmt
            .decode_into(&[0, 0, 0], &mut out)
            .expect_err("3 bytes is not a frame");
        assert!(matches!(
            err,
            AudioError::PartialFrame {
                len: 3,
                frame_bytes: 4,
                ..
            }
        ));
        assert!(err.to_string().contains("multiple of 4"), "{err}");
        assert_eq!(out, vec![1.0]);
    }

    #[test]
    fn f32_rejects_non_finite_and_overrange_without_partial_output() {
        let fmt = PcmFormat::new(Encoding::F32Le, 16_000, 1).expect("valid format");
        let mut out = Vec::new();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 9.0] {
            let err = fmt
                .decode_into(&f32b(&[0.5, bad]), &mut out)
                .expect_err("bad float");
            assert!(
                matches!(
                    err,
                    AudioError::BadFloat {
                        frame: 1,
                        channel: 0,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(out.is_empty());
        }
        assert_eq!(fmt.decode_into(&f32b(&[0.25, -1.0]), &mut out), Ok(2));
        assert_eq!(out, vec![0.25, -1.0]);
    }
}
