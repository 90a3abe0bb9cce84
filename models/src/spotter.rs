//! One audio stream's pipeline: PCM → mono → 16 kHz → MFCC frames → windows → (scores) → events.
//!
//! Scoring is not done here: [`Spotter::push_pcm`] appends the windows that became due to a
//! caller-owned [`WindowBatch`]; the caller scores them (possibly batched with other streams' windows)
//! and hands each window's posteriors back, in order, to [`Spotter::apply`]. [`Spotter::process`]
//! does all of it for one stream with a given [`Scorer`]; [`Spotter::score_windows`] is its scoring
//! step, shared with `kws-client eval --local`.
//!
//! A stream's settings come from the model's manifest and the client's overrides through
//! [`StreamConfig::resolve`], the one place that decides what "default", "none" and "out of range"
//! mean (the service validates every `StreamConfig` with it; `kws-client eval --local` resolves its
//! flags with it, so local and served numbers agree by construction).
//!
//! Windows: a ring holds the last 98 frames; the first window is due when 98 frames exist (1 s of
//! audio), then one every `hop_frames` frames. Window `[e-97, e]` spans `start_ms = 10 (e-97)` to
//! `end_ms = 10 e + 30` (the end of frame `e`, which spans 30 ms) on the stream's own clock
//! (resampling delay compensated).

use std::cell::RefCell;

use crate::decoder::{Decoder, DecoderConfig, Event};
use crate::error::{AudioError, ConfigError, ScoreError};
use crate::frontend::{FRAME_MS, MS_PER_FRAME, MfccFrontend, NUM_MFCC, WINDOW_FRAMES, WINDOW_VALUES};
use crate::manifest::Manifest;
use crate::pcm::{Encoding, PcmFormat};
use crate::resample::StreamResampler;
use crate::scorer::Scorer;

/// Input frames decoded and resampled per step, bounding the transient buffers whatever the chunk size.
const PIECE_FRAMES: usize = 1024;
/// Most windows per scorer call in [`Spotter::score_windows`] (bounds the posterior buffer; the
/// service batches through its own batcher instead).
pub const SCORE_CHUNK_WINDOWS: usize = 256;
/// Hops accepted, in ms: whole frames, at most one window.
pub const HOP_MS_RANGE: std::ops::RangeInclusive<u32> = MS_PER_FRAME..=WINDOW_FRAMES as u32 * MS_PER_FRAME;

/// How a stream departs from the model's decoder defaults. `None` = the manifest's value; for
/// smoothing and refractory `Some(0)` = none; a hop of `Some(0)` is the default too (the wire has no
/// other way to say it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderOverrides {
    /// Hop between scored windows in ms: a multiple of 10 in 10..=980.
    pub hop_ms: Option<u32>,
    /// Moving-average span in ms, 0..=1000.
    pub smoothing_ms: Option<u32>,
    /// Refractory period in ms, 0..=10000.
    pub refractory_ms: Option<u32>,
}

/// [`DecoderOverrides`] as `kws.v1.StreamConfig` carries them: 0 = the model's default, and a
/// `no_*` flag for "none" (so that 0 can keep meaning "not set"). The two conversions are the only
/// encoding and decoding of that rule (service: from the wire; client: to the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireOverrides {
    pub hop_ms: u32,
    pub smoothing_ms: u32,
    pub no_smoothing: bool,
    pub refractory_ms: u32,
    pub no_refractory: bool,
}

impl From<WireOverrides> for DecoderOverrides {
    fn from(w: WireOverrides) -> Self {
        let field = |v: u32, none: bool| if none { Some(0) } else { (v != 0).then_some(v) };
        Self {
            hop_ms: (w.hop_ms != 0).then_some(w.hop_ms),
            smoothing_ms: field(w.smoothing_ms, w.no_smoothing),
            refractory_ms: field(w.refractory_ms, w.no_refractory),
        }
    }
}

impl From<DecoderOverrides> for WireOverrides {
    fn from(o: DecoderOverrides) -> Self {
        let field = |v: Option<u32>| match v {
            Some(0) => (0, true),
            Some(v) => (v, false),
            None => (0, false),
        };
        let (smoothing_ms, no_smoothing) = field(o.smoothing_ms);
        let (refractory_ms, no_refractory) = field(o.refractory_ms);
        Self {
            hop_ms: o.hop_ms.unwrap_or(0),
            smoothing_ms,
            no_smoothing,
            refractory_ms,
            no_refractory,
        }
    }
}

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

    /// The settings of a stream of `format` for the model of `manifest`: its defaults, with the
    /// `keywords` enabled (each at most once; empty = all), the `thresholds` given (by keyword, each
    /// in [0, 1]) and the decoder `overrides`. Errors name the offending value and what is accepted.
    pub fn resolve<'a>(
        manifest: &Manifest,
        format: PcmFormat,
        keywords: &[String],
        thresholds: impl IntoIterator<Item = (&'a String, &'a f32)>,
        overrides: DecoderOverrides,
    ) -> Result<Self, ConfigError> {
        let known = || manifest.keywords.join(", ");
        let n = manifest.keywords.len();
        if keywords.len() > n {
            return Err(ConfigError::TooManyKeywords {
                listed: keywords.len(),
                model: n,
                known: known(),
            });
        }
        let index = |field: &'static str, k: &String| {
            manifest
                .keyword_index(k)
                .ok_or_else(|| ConfigError::UnknownKeyword {
                    field,
                    name: k.clone(),
                    known: known(),
                })
        };
        let mut enabled = vec![keywords.is_empty(); n];
        for k in keywords {
            let i = index("keywords", k)?;
            if enabled[i] {
                return Err(ConfigError::DuplicateKeyword(k.clone()));
            }
            enabled[i] = true;
        }
        let mut all = manifest.default_thresholds();
        for (k, &v) in thresholds {
            let i = index("thresholds", k)?;
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::Threshold {
                    keyword: k.clone(),
                    value: v,
                });
            }
            all[i] = v;
        }
        let hop_frames = match overrides.hop_ms {
            None | Some(0) => manifest.window.default_hop_frames,
            Some(ms) if ms.is_multiple_of(MS_PER_FRAME) && HOP_MS_RANGE.contains(&ms) => ms / MS_PER_FRAME,
            Some(ms) => return Err(ConfigError::HopMs(ms)),
        };
        let decoder = DecoderConfig {
            smoothing_ms: overrides.smoothing_ms.unwrap_or(manifest.decoder.smoothing_ms),
            refractory_ms: overrides.refractory_ms.unwrap_or(manifest.decoder.refractory_ms),
            thresholds: all.iter().zip(&enabled).map(|(t, e)| e.then_some(*t)).collect(),
        };
        decoder.validate(&manifest.keywords)?;
        Ok(Self {
            format,
            hop_frames,
            decoder,
        })
    }

    /// The enabled keywords' class indices, ascending (the order of score traces).
    pub fn keywords(&self) -> Vec<usize> {
        (0..self.decoder.thresholds.len())
            .filter(|&i| self.decoder.thresholds[i].is_some())
            .collect()
    }

    /// Hop between scored windows in ms.
    pub fn hop_ms(&self) -> u32 {
        self.hop_frames * MS_PER_FRAME
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
    /// The batch's windows were not the next ones to apply (windows of an earlier push were left
    /// unscored).
    #[error(transparent)]
    Order(#[from] OrderError),
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
                    end_ms: last * u64::from(MS_PER_FRAME) + u64::from(FRAME_MS),
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
        let mut events = Vec::new();
        self.score_windows(scorer, batch, |_, _, event| events.extend(event))?;
        Ok(events)
    }

    /// Score the windows of `batch` with `scorer` (at most [`SCORE_CHUNK_WINDOWS`] per call), apply
    /// them in order and hand `on_window` each window, the smoothed posteriors after it and the event
    /// it fired. The windows must be the next ones to apply (else [`ProcessError::Order`]; what was
    /// applied before the error stays applied). Allocates the posterior buffer.
    pub fn score_windows(
        &mut self,
        scorer: &mut dyn Scorer,
        batch: &WindowBatch,
        mut on_window: impl FnMut(&WindowMeta, &[f32], Option<Event>),
    ) -> Result<(), ProcessError> {
        let classes = scorer.num_classes();
        let mut probs = Vec::new();
        for (features, windows) in batch
            .features()
            .chunks(SCORE_CHUNK_WINDOWS * WINDOW_VALUES)
            .zip(batch.windows().chunks(SCORE_CHUNK_WINDOWS))
        {
            probs.resize(windows.len() * classes, 0.0);
            scorer.score(features, &mut probs)?;
            for (w, p) in windows.iter().zip(probs.chunks_exact(classes)) {
                let event = self.apply(w, p)?;
                on_window(w, self.smoothed(), event);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tc-resnet8");
        Manifest::load(dir).expect("manifest")
    }

    fn resolve(
        keywords: &[&str],
        thresholds: &[(&str, f32)],
        o: DecoderOverrides,
    ) -> Result<StreamConfig, ConfigError> {
        let keywords: Vec<String> = keywords.iter().map(|k| k.to_string()).collect();
        let thresholds: Vec<(String, f32)> = thresholds.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        StreamConfig::resolve(
            &manifest(),
            PcmFormat::native_s16(),
            &keywords,
            thresholds.iter().map(|(k, v)| (k, v)),
            o,
        )
    }

    #[test]
    fn no_overrides_is_the_manifest() {
        let m = manifest();
        let c = resolve(&[], &[], DecoderOverrides::default()).expect("defaults");
        assert_eq!(c, StreamConfig::from_manifest(&m, PcmFormat::native_s16()));
        assert_eq!(c.keywords(), (0..m.keywords.len()).collect::<Vec<_>>());
    }

    #[test]
    fn overrides_zero_and_none() {
        let m = manifest();
        let o = DecoderOverrides {
            hop_ms: Some(0),
            smoothing_ms: Some(0),
            refractory_ms: Some(250),
        };
        let c = resolve(&["stop", "yes"], &[("stop", 0.25)], o).expect("valid");
        assert_eq!(c.hop_frames, m.window.default_hop_frames, "hop 0 = default");
        assert_eq!((c.decoder.smoothing_ms, c.decoder.refractory_ms), (0, 250));
        let stop = m.keyword_index("stop").expect("stop");
        assert_eq!(c.keywords(), vec![0, stop]);
        assert_eq!(c.decoder.thresholds[stop], Some(0.25));
        assert_eq!(c.decoder.thresholds[1], None, "not enabled");
        assert_eq!(
            resolve(
                &[],
                &[],
                DecoderOverrides {
                    hop_ms: Some(40),
                    ..Default::default()
                }
            )
            .expect("hop")
            .hop_ms(),
            40
        );
    }

    #[test]
    fn refusals_name_the_value() {
        let e = |k: &[&str], t: &[(&str, f32)], o| resolve(k, t, o).expect_err("refused").to_string();
        let none = DecoderOverrides::default();
        assert_eq!(
            e(
                &[],
                &[],
                DecoderOverrides {
                    hop_ms: Some(15),
                    ..none
                }
            ),
            "hop_ms 15 must be a multiple of 10 in 10..=980"
        );
        assert_eq!(
            e(
                &[],
                &[],
                DecoderOverrides {
                    hop_ms: Some(990),
                    ..none
                }
            ),
            "hop_ms 990 must be a multiple of 10 in 10..=980"
        );
        assert!(e(&["yes", "yes"], &[], none).contains("listed twice"));
        assert!(e(&["maybe"], &[], none).starts_with("unknown keyword \"maybe\" in keywords"));
        assert!(e(&[], &[("maybe", 0.5)], none).starts_with("unknown keyword \"maybe\" in thresholds"));
        assert_eq!(
            e(&[], &[("stop", 2.0)], none),
            "threshold 2 for \"stop\" is outside [0, 1]"
        );
        assert!(
            e(
                &[],
                &[],
                DecoderOverrides {
                    smoothing_ms: Some(1001),
                    ..none
                }
            )
            .contains("0..=1000 ms")
        );
    }

    #[test]
    fn the_wire_rule_round_trips() {
        for hop_ms in [None, Some(20), Some(980)] {
            for smoothing_ms in [None, Some(0), Some(60)] {
                for refractory_ms in [None, Some(0), Some(500)] {
                    let o = DecoderOverrides {
                        hop_ms,
                        smoothing_ms,
                        refractory_ms,
                    };
                    assert_eq!(DecoderOverrides::from(WireOverrides::from(o)), o);
                }
            }
        }
        // 0 on the wire is "not set"; the flags say "none".
        let w = WireOverrides {
            smoothing_ms: 60,
            no_smoothing: true,
            ..WireOverrides::default()
        };
        assert_eq!(
            DecoderOverrides::from(w),
            DecoderOverrides {
                smoothing_ms: Some(0),
                ..DecoderOverrides::default()
            }
        );
    }

    /// Scores every window as silence (all mass on the last class).
    struct Silence(usize);

    impl Scorer for Silence {
        fn num_classes(&self) -> usize {
            self.0
        }
        fn score(&mut self, _: &[f32], out: &mut [f32]) -> Result<(), ScoreError> {
            for p in out.chunks_exact_mut(self.0) {
                p.fill(0.0);
                p[self.0 - 1] = 1.0;
            }
            Ok(())
        }
    }

    #[test]
    fn score_windows_applies_in_order_across_chunks_and_reports_order_errors() {
        let m = manifest();
        let mut spotter = Spotter::new(
            StreamConfig::from_manifest(&m, PcmFormat::native_s16()),
            m.num_classes(),
        )
        .expect("spotter");
        let mut batch = WindowBatch::new();
        let samples: Vec<f32> = (0..16_000 * 8).map(|i| ((i % 97) as f32 / 97.0) - 0.5).collect();
        spotter.push_samples(&samples, &mut batch).expect("push");
        spotter.finish(&mut batch).expect("finish");
        assert!(batch.len() > SCORE_CHUNK_WINDOWS, "spans several scorer calls");
        let mut seen = Vec::new();
        spotter
            .score_windows(&mut Silence(m.num_classes()), &batch, |w, _, _| seen.push(w.seq))
            .expect("scored");
        assert_eq!(seen, (0..batch.len() as u64).collect::<Vec<_>>());
        // The same windows again are not the next ones: refused, not skipped.
        let e = spotter
            .score_windows(&mut Silence(m.num_classes()), &batch, |_, _, _| {})
            .expect_err("order");
        assert!(matches!(e, ProcessError::Order(_)), "{e:?}");
    }
}
