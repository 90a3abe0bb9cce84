//! Input audio: WAV files of any rate and channel count (via `hound`) and raw PCM formats.
//!
//! The service accepts s16le and f32le at 8–192 kHz with 1–8 interleaved channels and resamples and
//! downmixes itself, so WAVs are sent in their own rate and channel layout: 16-bit integer WAVs as
//! s16le (bit-exact), 8/24/32-bit integer and 32-bit float WAVs as f32le.

use std::io::Read;
use std::path::{Path, PathBuf};

use kws_proto::v1;

/// Sample encoding on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Signed 16-bit little-endian.
    S16le,
    /// 32-bit float little-endian, nominally in [-1, 1].
    F32le,
}

impl Encoding {
    /// Bytes per sample.
    pub const fn sample_bytes(self) -> usize {
        match self {
            Encoding::S16le => 2,
            Encoding::F32le => 4,
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> v1::AudioEncoding {
        match self {
            Encoding::S16le => v1::AudioEncoding::PcmS16le,
            Encoding::F32le => v1::AudioEncoding::PcmF32le,
        }
    }
}

/// Layout of raw interleaved PCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioFormat {
    pub encoding: Encoding,
    /// Frames per second (Hz).
    pub sample_rate_hz: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
}

impl AudioFormat {
    /// 16 kHz mono s16le, the model's native format.
    pub const NATIVE: AudioFormat = AudioFormat {
        encoding: Encoding::S16le,
        sample_rate_hz: 16_000,
        channels: 1,
    };

    /// Bytes of one frame (one sample of every channel).
    pub const fn frame_bytes(&self) -> usize {
        self.encoding.sample_bytes() * self.channels as usize
    }

    /// Frames in `ms` milliseconds (rounded down, at least 1).
    pub fn frames_in_ms(&self, ms: u32) -> usize {
        ((u64::from(self.sample_rate_hz) * u64::from(ms) / 1000) as usize).max(1)
    }

    /// Duration of `frames` frames in ms (rounded down), as the server counts it.
    pub fn ms_of_frames(&self, frames: u64) -> u64 {
        frames * 1000 / u64::from(self.sample_rate_hz)
    }

    /// A `StreamConfig` with this format and every other field at its default.
    pub fn stream_config(&self) -> v1::StreamConfig {
        v1::StreamConfig {
            encoding: self.encoding.to_proto() as i32,
            sample_rate_hz: self.sample_rate_hz,
            channels: u32::from(self.channels),
            ..Default::default()
        }
    }
}

/// Audio that could not be read or is not in a usable format.
#[derive(Debug, thiserror::Error)]
pub enum AudioInputError {
    #[error("cannot read WAV {path}: {reason}")]
    Wav { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported WAV format ({reason}); supported: PCM integer 8/16/24/32-bit or float 32-bit"
    )]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot read audio input: {0}")]
    Io(#[from] std::io::Error),
}

/// A whole audio file in memory, ready to send.
#[derive(Debug, Clone)]
pub struct Audio {
    pub format: AudioFormat,
    /// Interleaved PCM in `format`, a whole number of frames.
    pub data: Vec<u8>,
}

impl Audio {
    /// Read a WAV file (see the module docs for the encodings chosen).
    pub fn from_wav(path: &Path) -> Result<Self, AudioInputError> {
        let file = std::fs::File::open(path).map_err(|e| AudioInputError::Wav {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_wav_reader(std::io::BufReader::new(file), path)
    }

    /// Read WAV data from `reader`; `name` is used in error messages.
    pub fn from_wav_reader(reader: impl Read, name: &Path) -> Result<Self, AudioInputError> {
        let wav_err = |e: hound::Error| AudioInputError::Wav {
            path: name.to_path_buf(),
            reason: e.to_string(),
        };
        let mut r = hound::WavReader::new(reader).map_err(wav_err)?;
        let spec = r.spec();
        let invalid = |reason: String| AudioInputError::Invalid {
            path: name.to_path_buf(),
            reason,
        };
        // The ranges are kws-models' (the service validates with the same function).
        kws_models::pcm::check_layout(spec.sample_rate, spec.channels)
            .map_err(|e| invalid(format!("{e} (the service's limits)")))?;
        let (encoding, data) = match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, 16) => {
                let mut data = Vec::with_capacity(r.len() as usize * 2);
                for s in r.samples::<i16>() {
                    data.extend_from_slice(&s.map_err(wav_err)?.to_le_bytes());
                }
                (Encoding::S16le, data)
            }
            (hound::SampleFormat::Int, bits @ (8 | 24 | 32)) => {
                let scale = 1.0 / (1u64 << (bits - 1)) as f64;
                let mut data = Vec::with_capacity(r.len() as usize * 4);
                for s in r.samples::<i32>() {
                    let v = (f64::from(s.map_err(wav_err)?) * scale) as f32;
                    data.extend_from_slice(&v.to_le_bytes());
                }
                (Encoding::F32le, data)
            }
            (hound::SampleFormat::Float, 32) => {
                let mut data = Vec::with_capacity(r.len() as usize * 4);
                for s in r.samples::<f32>() {
                    let v = s.map_err(wav_err)?;
                    if !v.is_finite() || v.abs() > kws_models::pcm::F32_MAX_ABS {
                        return Err(invalid(format!(
                            "float sample {v} is not finite or beyond ±{max} (the service accepts |x| <= {max})",
                            max = kws_models::pcm::F32_MAX_ABS
                        )));
                    }
                    data.extend_from_slice(&v.to_le_bytes());
                }
                (Encoding::F32le, data)
            }
            (f, bits) => {
                return Err(AudioInputError::Unsupported {
                    path: name.to_path_buf(),
                    reason: format!("{f:?} {bits}-bit"),
                });
            }
        };
        let format = AudioFormat {
            encoding,
            sample_rate_hz: spec.sample_rate,
            channels: spec.channels,
        };
        if data.is_empty() {
            return Err(invalid("the WAV file holds no audio".into()));
        }
        Ok(Self { format, data })
    }

    /// Frames (samples per channel).
    pub fn frames(&self) -> u64 {
        (self.data.len() / self.format.frame_bytes()) as u64
    }

    /// Duration in ms (rounded down).
    pub fn duration_ms(&self) -> u64 {
        self.format.ms_of_frames(self.frames())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<std::io::Cursor<&mut Vec<u8>>>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        {
            let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut buf), spec).expect("writer");
            write(&mut w);
            w.finalize().expect("finalize");
        }
        buf
    }

    #[test]
    fn int16_is_sent_bit_exact_and_others_as_f32() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let buf = wav(spec, |w| {
            for v in [1i16, -2, 300, -32768] {
                w.write_sample(v).expect("write");
            }
        });
        let a = Audio::from_wav_reader(&buf[..], Path::new("x.wav")).expect("read");
        assert_eq!(a.format.encoding, Encoding::S16le);
        assert_eq!((a.frames(), a.format.channels), (2, 2));
        assert_eq!(&a.data[..4], &[1, 0, 0xfe, 0xff]);

        let spec24 = hound::WavSpec {
            bits_per_sample: 24,
            channels: 1,
            ..spec
        };
        let buf = wav(spec24, |w| w.write_sample(1 << 22).expect("write"));
        let a = Audio::from_wav_reader(&buf[..], Path::new("x.wav")).expect("read");
        assert_eq!(a.format.encoding, Encoding::F32le);
        assert_eq!(f32::from_le_bytes(a.data[..4].try_into().expect("4 bytes")), 0.5);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = Audio::from_wav_reader(&b"RIFF not really"[..], Path::new("bad.wav")).expect_err("bad");
        assert!(e.to_string().contains("bad.wav"), "{e}");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 4_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let buf = wav(spec, |w| w.write_sample(0i16).expect("write"));
        let e = Audio::from_wav_reader(&buf[..], Path::new("slow.wav")).expect_err("rate");
        assert!(e.to_string().contains("8000..=192000"), "{e}");
    }
}
