//! The audio pool: WAVs with keywords, resampled to each stream rate, looped to the stream duration,
//! and their expected events.
//!
//! Expected events come from the server itself: before the load starts, each (WAV, rate) variant is
//! streamed once, unpaced, alone, with exactly the bytes every stream of that variant will send. The
//! service's pipeline gives identical events whatever the chunking and batching (its tests pin that),
//! so a loaded stream must produce exactly these events; any missing one is a lost event. This also
//! covers the windows that straddle a loop boundary, which a per-file offline run would not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kws_client::{Audio, AudioFormat, Client, Encoding, Pacing, SendOptions};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::LoadError;

/// One keyword event a stream must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub keyword: String,
    /// Window end on the stream clock, ms.
    pub end_ms: u64,
}

/// What every stream of one (WAV, rate) variant sends and expects.
#[derive(Debug)]
pub struct Variant {
    pub wav: PathBuf,
    pub format: AudioFormat,
    /// The whole stream's audio: the WAV looped, s16le mono, exactly the stream duration.
    pub pcm: Arc<Vec<u8>>,
    pub expected: Vec<Expected>,
}

impl Variant {
    /// Stream duration in ms.
    pub fn duration_ms(&self) -> u64 {
        self.format
            .ms_of_frames((self.pcm.len() / self.format.frame_bytes()) as u64)
    }
}

/// Mono f32 samples of a WAV (channels averaged) and its rate.
fn mono(path: &Path) -> Result<(Vec<f32>, u32), LoadError> {
    let audio = Audio::from_wav(path).map_err(|e| LoadError::Input(e.to_string()))?;
    let ch = usize::from(audio.format.channels);
    let samples: Vec<f32> = match audio.format.encoding {
        Encoding::S16le => audio
            .data
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect(),
        Encoding::F32le => audio
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    };
    let mono = samples
        .chunks_exact(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    Ok((mono, audio.format.sample_rate_hz))
}

fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>, LoadError> {
    if from == to {
        return Ok(x.to_vec());
    }
    let fail = |e: String| LoadError::Input(format!("resampling {from} -> {to} Hz: {e}"));
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| fail(e.to_string()))?;
    let input = InterleavedSlice::new(x, 1, x.len()).map_err(|e| fail(e.to_string()))?;
    Ok(r.process_all(&input, x.len(), None)
        .map_err(|e| fail(e.to_string()))?
        .take_data())
}

/// `wav` at `rate` Hz, s16le mono, looped (the clock continues) to exactly `duration_ms`.
pub fn looped_pcm(wav: &Path, rate: u32, duration_ms: u64) -> Result<Vec<u8>, LoadError> {
    let (x, from) = mono(wav)?;
    let y = resample(&x, from, rate)?;
    if y.is_empty() {
        return Err(LoadError::Input(format!("{} holds no audio", wav.display())));
    }
    let frames = (u64::from(rate) * duration_ms / 1000) as usize;
    let mut out = Vec::with_capacity(frames * 2);
    for v in y.iter().cycle().take(frames) {
        let s = (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        out.extend_from_slice(&s.to_le_bytes());
    }
    Ok(out)
}

/// Build every (WAV, rate) variant and ask the server for its events (one stream at a time, unpaced,
/// with the run's `first_stage_only`).
pub async fn prepare(
    client: &Client,
    wavs: &[PathBuf],
    rates: &[u32],
    duration_ms: u64,
    model: &str,
    first_stage_only: bool,
) -> Result<Vec<Arc<Variant>>, LoadError> {
    let mut out = Vec::new();
    for wav in wavs {
        for &rate in dedup(rates).iter() {
            let pcm = Arc::new(looped_pcm(wav, rate, duration_ms)?);
            let format = AudioFormat {
                encoding: Encoding::S16le,
                sample_rate_hz: rate,
                channels: 1,
            };
            let mut config = format.stream_config();
            config.model = model.to_string();
            config.first_stage_only = first_stage_only;
            config.disable_progress = true;
            config.client_stream_id = "kws-loadtest-calibration".into();
            let opts = SendOptions {
                format,
                chunk_ms: 1000,
                pacing: Pacing::Unpaced,
            };
            let (_, collected) = client
                .clone()
                .detect_pcm(config, &[], pcm.clone(), opts)
                .await
                .map_err(|e| {
                    LoadError::Server(format!(
                        "calibration stream for {} at {rate} Hz: {e}",
                        wav.display()
                    ))
                })?;
            let expected = collected
                .events
                .iter()
                .map(|e| Expected {
                    keyword: e.keyword.clone(),
                    end_ms: e.end_ms,
                })
                .collect();
            out.push(Arc::new(Variant {
                wav: wav.clone(),
                format,
                pcm,
                expected,
            }));
        }
    }
    Ok(out)
}

fn dedup(rates: &[u32]) -> Vec<u32> {
    let mut r = rates.to_vec();
    r.sort_unstable();
    r.dedup();
    r
}

/// The variant stream `i` uses: WAVs and rates assigned round robin (rates repeat in `rates` to
/// weight the mix, e.g. `16000,16000,16000,48000` = 3:1).
pub fn variant_for<'a>(
    variants: &'a [Arc<Variant>],
    wavs: usize,
    rates: &[u32],
    i: usize,
) -> Option<&'a Arc<Variant>> {
    let rate = rates.get(i % rates.len().max(1))?;
    let wav = i % wavs.max(1);
    let distinct = dedup(rates);
    let r = distinct.iter().position(|x| x == rate)?;
    variants.get(wav * distinct.len() + r)
}
