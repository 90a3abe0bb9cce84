//! One audio stream's pipeline: PCM → mono → 16 kHz → MFCC frames → windows → (scores) → events.
//!
//! Scoring is not done here: [`Spotter::push_pcm`] appends the windows that became due to a
//! caller-owned [`WindowBatch`]; the caller scores them (possibly batched with other streams' windows)
//! and hands each window's posteriors back, in order, to [`Spotter::apply`]. [`Spotter::process`]
//! does all of it for one stream with a given [`Scorer`].
//!
//! Windows: a ring holds the last 98 frames; the first window is due when 98 frames exist (1 s of
//! audio), then one every `hop_frames` frames. Window `[e-97, e]` spans `start_ms = 10 (e-97)` to
//! `end_ms = 10 e + 30` on the stream's own clock (resampling delay compensated).

use std::cell::RefCell;

use crate::decoder::{Decoder, DecoderConfig, Event, MS_PER_FRAME};
use crate::error::{AudioError, ConfigError, ScoreError};
use crate::frontend::{MfccFrontend, NUM_MFCC, WINDOW_FRAMES, WINDOW_VALUES};
use crate::manifest::Manifest;
use crate::pcm::{Encoding, PcmFormat};
use crate::resample::StreamResampler;
use crate::scorer::Scorer;

/// Input frames decoded and resampled per step, bounding the transient buffers whatever the chunk size.
const PIECE_FRAMES: usize = 1024;

/// Everything that configures one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub format: PcmFormat,
    /// Frames (10 ms each) between scored windows, 1..=98.
    pub hop_frames: u32,
    pub decoder: DecoderConfig,
}

impl StreamConfig {
    /// The manifest's defaults (hop, smoothing, refractory, thresholds, all keywords) for `format`.
    pub fn from_manifest(manifest: &Manifest, format: PcmFormat) -> Self {
        Self {
            format,
            hop_frames: manifest.window.default_hop_frames,
            decoder: DecoderConfig {
                smoothing_ms: manifest.decoder.smoothing_ms,
                refractory_ms: manifest.decoder.refractory_ms,
                thresholds: manifest.default_thresholds().into_iter().map(Some).collect(),
            },
        }
    }
}

/// Where a window sits in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowMeta {
    /// 0, 1, 2, ... per stream; windows must be applied in this order.
    pub seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Windows due for scoring: `len()` windows of 98 x 40 features, row-major, plus where each sits.
/// Owned by the caller and reused (`clear()` keeps the capacity).
#[derive(Debug, Clone, Default)]
pub struct WindowBatch {
    features: Vec<f32>,
    windows: Vec<WindowMeta>,
}

impl WindowBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Forget the windows, keep the allocation.
    pub fn clear(&mut self) {
        self.features.clear();
        self.windows.clear();
    }

    /// All features, `[len(), 98, 40]` row-major.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// Features of window `i` (`98 * 40` values).
    pub fn window_features(&self, i: usize) -> &[f32] {
        &self.features[i * WINDOW_VALUES..(i + 1) * WINDOW_VALUES]
    }

    pub fn windows(&self) -> &[WindowMeta] {
        &self.windows
    }

    /// A batch that appends to `features` (cleared; its capacity is reused).
    pub fn with_buffer(mut features: Vec<f32>) -> Self {
        features.clear();
        Self {
            features,
            windows: Vec::new(),
        }
    }

    /// The feature buffer and the window metadata, e.g. to hand the features to another thread.
    pub fn into_parts(self) -> (Vec<f32>, Vec<WindowMeta>) {
        (self.features, self.windows)
    }
}

/// A window's posteriors were applied out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {got} applied, but window {expected} is next")]
pub struct OrderError {
    pub expected: u64,
    pub got: u64,
}

/// Errors of the offline [`Spotter::process`] path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Score(#[from] ScoreError),
}

struct Scratch {
    mono: Vec<f32>,
    resampled: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { mono: Vec::new(), resampled: Vec::new() }) };
}

/// The per-stream pipeline state (see the module docs). Not `Sync`; move it between threads freely.
pub struct Spotter {
    format: PcmFormat,
    hop_frames: u32,
    resampler: StreamResampler,
    frontend: MfccFrontend,
    ring: Box<[f32; WINDOW_VALUES]>,
    head: usize,
    decoder: Decoder,
    frames_in: u64,
    next_seq: u64,
    next_apply: u64,
    finished: bool,
}

impl std::fmt::Debug for Spotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spotter")
            .field("format", &self.format)
            .field("hop_frames", &self.hop_frames)
            .field("frames", &self.frontend.frames())
            .field("windows", &self.next_seq)
            .finish()
    }
}

impl Spotter {
    /// A stream for a model with `classes` outputs (keywords first). Allocates the state (~20 KiB at
    /// 16 kHz; a resampler adds its own buffers for other rates).
    pub fn new(config: StreamConfig, classes: usize) -> Result<Self, ConfigError> {
        if config.hop_frames == 0 || config.hop_frames as usize > WINDOW_FRAMES {
            return Err(ConfigError::Hop(config.hop_frames));
        }
        let resampler = StreamResampler::new(config.format.sample_rate())?;
        let decoder = Decoder::new(config.decoder, classes, config.hop_frames)?;
        Ok(Self {
            format: config.format,
            hop_frames: config.hop_frames,
            resampler,
            frontend: MfccFrontend::new(),
            ring: Box::new([0.0; WINDOW_VALUES]),
            head: 0,
            decoder,
            frames_in: 0,
            next_seq: 0,
            next_apply: 0,
            finished: false,
        })
    }

    pub fn format(&self) -> PcmFormat {
        self.format
    }

    pub fn hop_frames(&self) -> u32 {
        self.hop_frames
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Input frames (at the input rate) accepted so far.
    pub fn frames_received(&self) -> u64 {
        self.frames_in
    }

    /// Audio received, in ms of the stream clock (rounded down).
    pub fn audio_ms_received(&self) -> u64 {
        self.frames_in * 1000 / u64::from(self.format.sample_rate())
    }

    /// Audio that has passed through the frontend, in ms (rounded down). Equals
    /// [`audio_ms_received`](Self::audio_ms_received) after [`finish`](Self::finish).
    pub fn audio_ms_processed(&self) -> u64 {
        self.frontend.samples() * 1000 / u64::from(crate::frontend::SAMPLE_RATE)
    }

    /// Windows emitted so far.
    pub fn windows_emitted(&self) -> u64 {
        self.next_seq
    }

    /// Windows whose scores have been applied so far.
    pub fn windows_applied(&self) -> u64 {
        self.next_apply
    }

    /// Decode a chunk of raw PCM in the stream's format and append the windows now due to `out`.
    /// The chunk is validated whole first: on error nothing of it is consumed. Returns the input
    /// frames accepted. Allocates only when `out` grows.
    pub fn push_pcm(&mut self, bytes: &[u8], out: &mut WindowBatch) -> Result<usize, AudioError> {
        if self.finished {
            return Err(AudioError::Finished);
        }
        let frames = self.format.validate(bytes)?;
        let piece = PIECE_FRAMES * self.format.frame_bytes();
        for chunk in bytes.chunks(piece) {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let Scratch { mono, resampled } = &mut *s;
                mono.clear();
                self.format.decode_into(chunk, mono)?;
                self.feed_mono(mono, resampled, out)
            })?;
        }
        Ok(frames)
    }

    /// Like [`push_pcm`](Self::push_pcm) for samples already in f32: interleaved at the stream's rate
    /// and channel count (the stream's encoding is ignored). Values must be finite.
    pub fn push_samples(&mut self, interleaved: &[f32], out: &mut WindowBatch) -> Result<usize, AudioError> {
        let bytes: Vec<u8> = interleaved.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f32_format = self.format.with_encoding(Encoding::F32Le);
        let saved = std::mem::replace(&mut self.format, f32_format);
        let r = self.push_pcm(&bytes, out);
        self.format = saved;
        r
    }

    /// End of stream: flush the resampler (so every received sample reaches the frontend) and append
    /// the last windows. Further pushes fail with [`AudioError::Finished`]. Idempotent.
    pub fn finish(&mut self, out: &mut WindowBatch) -> Result<(), AudioError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let resampled = &mut s.resampled;
            resampled.clear();
            self.resampler.finish(resampled)?;
            let samples = std::mem::take(resampled);
            self.feed_frontend(&samples, out);
            *resampled = samples;
            Ok(())
        })
    }

    fn feed_mono(
        &mut self,
        mono: &[f32],
        resampled: &mut Vec<f32>,
        out: &mut WindowBatch,
    ) -> Result<(), AudioError> {
        self.frames_in += mono.len() as u64;
        if self.resampler.is_bypass() {
            self.feed_frontend(mono, out);
        } else {
            resampled.clear();
            self.resampler.process(mono, resampled)?;
            self.feed_frontend(resampled, out);
        }
        Ok(())
    }

    fn feed_frontend(&mut self, samples: &[f32], out: &mut WindowBatch) {
        let Self {
            frontend,
            ring,
            head,
            next_seq,
            hop_frames,
            ..
        } = self;
        let hop = u64::from(*hop_frames);
        let mut frames = frontend.frames();
        frontend.push(samples, |frame| {
            ring[*head * NUM_MFCC..(*head + 1) * NUM_MFCC].copy_from_slice(frame);
            *head = (*head + 1) % WINDOW_FRAMES;
            frames += 1;
            let window_frames = WINDOW_FRAMES as u64;
            if frames >= window_frames && (frames - window_frames).is_multiple_of(hop) {
                // Oldest frame first: the ring from `head` to its end, then from its start.
                let split = *head * NUM_MFCC;
                out.features.extend_from_slice(&ring[split..]);
                out.features.extend_from_slice(&ring[..split]);
                let last = frames - 1;
                out.windows.push(WindowMeta {
                    seq: *next_seq,
                    start_ms: (last + 1 - window_frames) * u64::from(MS_PER_FRAME),
                    end_ms: last * u64::from(MS_PER_FRAME) + 30,
                });
                *next_seq += 1;
            }
        });
    }

    /// Apply the posteriors of window `window` (which must be the next one: seq order) and return the
    /// event it fires, if any. Never allocates.
    pub fn apply(&mut self, window: &WindowMeta, probs: &[f32]) -> Result<Option<Event>, OrderError> {
        if window.seq != self.next_apply {
            return Err(OrderError {
                expected: self.next_apply,
                got: window.seq,
            });
        }
        self.next_apply += 1;
        Ok(self.decoder.push(window.start_ms, window.end_ms, probs))
    }

    /// Smoothed posteriors after the last [`apply`](Self::apply), for score traces.
    pub fn smoothed(&self) -> &[f32] {
        self.decoder.smoothed()
    }

    /// Offline convenience: push all of `interleaved` (f32 samples at the stream's rate and channels),
    /// finish, score every window with `scorer` and return the events. Allocates.
    pub fn process(
        &mut self,
        scorer: &mut dyn Scorer,
        interleaved: &[f32],
    ) -> Result<Vec<Event>, ProcessError> {
        let mut batch = WindowBatch::new();
        self.push_samples(interleaved, &mut batch)?;
        self.finish(&mut batch)?;
        self.score_and_apply(scorer, &batch)
    }

    /// [`process`](Self::process) for raw PCM bytes in the stream's format.
    pub fn process_pcm(&mut self, scorer: &mut dyn Scorer, bytes: &[u8]) -> Result<Vec<Event>, ProcessError> {
        let mut batch = WindowBatch::new();
        self.push_pcm(bytes, &mut batch)?;
        self.finish(&mut batch)?;
        self.score_and_apply(scorer, &batch)
    }

    fn score_and_apply(
        &mut self,
        scorer: &mut dyn Scorer,
        batch: &WindowBatch,
    ) -> Result<Vec<Event>, ProcessError> {
        let classes = scorer.num_classes();
        let mut events = Vec::new();
        let mut probs = Vec::new();
        for chunk in 0..batch.len().div_ceil(256) {
            let (a, b) = (chunk * 256, ((chunk + 1) * 256).min(batch.len()));
            probs.resize((b - a) * classes, 0.0);
            scorer.score(
                &batch.features()[a * WINDOW_VALUES..b * WINDOW_VALUES],
                &mut probs,
            )?;
            for (i, w) in batch.windows()[a..b].iter().enumerate() {
                if let Ok(Some(e)) = self.apply(w, &probs[i * classes..(i + 1) * classes]) {
                    events.push(e);
                }
            }
        }
        Ok(events)
    }
}

const _: () = assert!(MS_PER_FRAME == 10);
