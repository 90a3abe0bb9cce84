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
//!
//! # Two kinds of first stage
//! The first stage's frames go to a frame sink chosen at construction:
//! - windowed ([`Spotter::new`]): the 98-frame ring above; windows go out through a [`WindowBatch`];
//! - streaming ([`Spotter::new_streaming`], a model with a `streaming` manifest section): the model's
//!   flat state and the frames of the hops not scored yet ([`crate::streaming`]). No windows go to
//!   the batch; a caller scores [`Spotter::next_hop`] (one hop, with the state) and hands the new
//!   state back to [`Spotter::advance_hop`], which names the window the hop completed (none during
//!   warm-up), and then applies its posteriors with [`Spotter::apply`] — the windowed path's own
//!   decoder and cascade ([`Spotter::complete_hop`] does both). The windows are the same as the
//!   windowed path's, so is everything after them.
//!
//! Everything else — format validation, decoding, resampling, the MFCC frontend, the cascade's
//! sample ring, candidates and verdicts — is the same code for both.

use std::cell::RefCell;

use crate::cascade::CascadeError;
use crate::decoder::{Decoder, DecoderConfig, Event};
use crate::error::{AudioError, ConfigError, ScoreError};
use crate::frontend::{FRAME_MS, MS_PER_FRAME, MfccFrontend, NUM_MFCC, WINDOW_FRAMES, WINDOW_VALUES};
use crate::manifest::Manifest;
use crate::pcm::{Encoding, PcmFormat};
use crate::resample::StreamResampler;
use crate::scorer::Scorer;
use crate::streaming::{StateLayout, StreamScorer};
use crate::two_stage::{CascadeSettings, ClipScorer, ReadyClip, SecondStage};
use crate::verifier::VerifyError;

/// Input frames decoded and resampled per step, bounding the transient buffers whatever the chunk size.
const PIECE_FRAMES: usize = 1024;
/// Most windows per scorer call in [`Spotter::score_windows`] (bounds the posterior buffer; the
/// service batches through its own batcher instead).
pub const SCORE_CHUNK_WINDOWS: usize = 256;
/// Input frames per piece in [`Spotter::process_pcm_with`] (256 ms at 16 kHz).
pub const PROCESS_PIECE_FRAMES: usize = 4096;
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
    /// Events from the first stage alone (decoder thresholds), even when the model has a verifier.
    pub first_stage_only: bool,
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
    pub first_stage_only: bool,
}

impl From<WireOverrides> for DecoderOverrides {
    fn from(w: WireOverrides) -> Self {
        let field = |v: u32, none: bool| if none { Some(0) } else { (v != 0).then_some(v) };
        Self {
            hop_ms: (w.hop_ms != 0).then_some(w.hop_ms),
            smoothing_ms: field(w.smoothing_ms, w.no_smoothing),
            refractory_ms: field(w.refractory_ms, w.no_refractory),
            first_stage_only: w.first_stage_only,
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
            first_stage_only: o.first_stage_only,
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
    /// The cascade: events come from verified candidates instead of the decoder. `None`: the
    /// decoder's events (first stage only).
    pub cascade: Option<CascadeSettings>,
}

impl StreamConfig {
    /// The manifest's defaults (hop, smoothing, refractory, thresholds, all keywords, its cascade if
    /// it has a verifier) for `format`.
    pub fn from_manifest(manifest: &Manifest, format: PcmFormat) -> Self {
        Self {
            format,
            hop_frames: manifest.window.default_hop_frames,
            decoder: DecoderConfig {
                smoothing_ms: manifest.decoder.smoothing_ms,
                refractory_ms: manifest.decoder.refractory_ms,
                thresholds: manifest.default_thresholds().into_iter().map(Some).collect(),
            },
            cascade: CascadeSettings::from_manifest(manifest),
        }
    }

    /// The settings of a stream of `format` for the model of `manifest`: its defaults, with the
    /// `keywords` enabled (each at most once; empty = all), the `thresholds` given (by keyword, each
    /// in [0, 1]) and the decoder `overrides`. Errors name the offending value and what is accepted.
    ///
    /// With a verifier in the manifest (and no `first_stage_only`), the stream runs the cascade:
    /// candidates at the manifest's `first_stage_threshold`, accepted at the verdict thresholds —
    /// the manifest's `verifier.thresholds`, each replaced by the stream's own threshold for that
    /// keyword if it gives one (the decoder's thresholds take the same overrides but decide no
    /// event). The smoothing override changes the scores the cascade sees (the first stage's
    /// smoothing); the refractory override is the cascade's refractory (after an accepted candidate);
    /// disabled keywords are never candidates. `first_stage_only`: the decoder's events, as for a
    /// model without a verifier.
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
        let mut thresholds_given = Vec::new();
        for (k, &v) in thresholds {
            let i = index("thresholds", k)?;
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::Threshold {
                    keyword: k.clone(),
                    value: v,
                });
            }
            all[i] = v;
            thresholds_given.push((i, v));
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
        let cascade = if overrides.first_stage_only {
            None
        } else {
            CascadeSettings::from_manifest(manifest).map(|mut c| {
                for (k, v) in thresholds_given.iter() {
                    c.config.thresholds[*k] = *v;
                }
                c.config.refractory_ms = decoder.refractory_ms;
                c
            })
        };
        Ok(Self {
            format,
            hop_frames,
            decoder,
            cascade,
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

/// A window's scores or a verdict could not be applied. After an order error the stream's state is
/// unchanged; after a cascade error (or a lost clip) the stream cannot go on: end it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The cascade refused: a verdict for another candidate, or too many windows waiting for one
    /// ([`CascadeError::Backlog`]: the verifier is not keeping up).
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    /// The clip of candidate `candidate` starts at sample `start`, which has left the ring (its
    /// oldest sample is `oldest`): more audio was fed than [`Spotter::audio_room`] allowed while
    /// its verdict or earlier windows were outstanding.
    #[error(
        "the clip of candidate {candidate} starts at sample {start}, but the stream keeps samples from {oldest} on: audio was fed faster than verdicts came back"
    )]
    ClipLost { candidate: u64, start: u64, oldest: u64 },
    /// [`Spotter::advance_hop`] without a pending hop, on a windowed stream, or with a state of the
    /// wrong length (a caller's bug; the stream's state is unchanged).
    #[error("hop not completed: {0}")]
    Hop(&'static str),
}

/// Errors of the offline [`Spotter::process`] path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// The batch's windows were not the next ones to apply (windows of an earlier push were left
    /// unscored), or the cascade refused.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("verifier: {0}")]
    Verify(#[from] VerifyError),
    /// The stream runs a cascade but no verifier was given.
    #[error("the stream's model has a verifier (cascade), but none was given to score its candidates")]
    NoVerifier,
    /// A windowed scorer for a streaming stream or the other way round.
    #[error("a {stream} stream was given a {scorer} scorer")]
    ScorerKind {
        stream: &'static str,
        scorer: &'static str,
    },
}

/// The first stage's scorer for [`Spotter::score_pending`]: a windowed [`Scorer`] for a stream made
/// by [`Spotter::new`], a [`StreamScorer`] for one made by [`Spotter::new_streaming`].
pub enum FirstStage<'a> {
    Windowed(&'a mut dyn Scorer),
    Streaming(&'a mut dyn StreamScorer),
}

impl std::fmt::Debug for FirstStage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl FirstStage<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::Windowed(_) => "windowed",
            Self::Streaming(_) => "streaming",
        }
    }

    fn reborrow(&mut self) -> FirstStage<'_> {
        match self {
            Self::Windowed(s) => FirstStage::Windowed(&mut **s),
            Self::Streaming(s) => FirstStage::Streaming(&mut **s),
        }
    }
}

/// One hop of a streaming stream to score ([`Spotter::next_hop`]).
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// `hop * 40` feature values, oldest frame first.
    pub frames: &'a [f32],
    /// The model state before the hop ([`StateLayout::len`] values).
    pub state: &'a [f32],
    /// The window the hop completes (`None` during warm-up: scored for its state only).
    pub window: Option<WindowMeta>,
}

/// Where the first stage's frames go (module docs, "Two kinds of first stage").
enum FrameSink {
    /// The last 98 frames (`head` is the oldest) and the next window's sequence number.
    Windowed {
        ring: Box<[f32; WINDOW_VALUES]>,
        head: usize,
        next_seq: u64,
    },
    Streaming(Box<HopState>),
}

/// A streaming stream's model state and unscored frames.
struct HopState {
    layout: StateLayout,
    /// The state after the last completed hop.
    state: Vec<f32>,
    /// Frames of the hops not scored yet from `start` on (`hop * 40` values per hop, oldest first;
    /// at first the lead zeros). Consumed by moving `start`, compacted when frames are added, so a
    /// hop costs no memmove.
    pending: Vec<f32>,
    start: usize,
    /// Hops completed.
    calls: u64,
    /// The next hop and the state are lent out ([`Spotter::lend_hop`]): `state` holds the caller's
    /// scratch buffer until [`Spotter::return_hop`].
    lent: bool,
}

impl HopState {
    fn pending_hops(&self) -> usize {
        (self.pending.len() - self.start) / self.layout.frame_values()
    }

    /// The next hop's frames, if a whole hop is pending.
    fn next_frames(&self) -> Option<&[f32]> {
        let per = self.layout.frame_values();
        (self.pending.len() - self.start >= per).then(|| &self.pending[self.start..self.start + per])
    }

    /// The checks before a completed hop's state is taken in; `None` when it may be.
    fn refuse_completion(&self, len: usize) -> Option<ApplyError> {
        if self.pending_hops() == 0 {
            return Some(ApplyError::Hop("no hop is pending"));
        }
        (len != self.layout.len).then_some(ApplyError::Hop("the new state's length is not the model's"))
    }

    /// Consume the completed hop's frames; the window it completed, if any.
    fn complete(&mut self) -> Option<WindowMeta> {
        self.start += self.layout.frame_values();
        if self.start == self.pending.len() {
            self.pending.clear();
            self.start = 0;
        }
        let window = self.layout.window_of_call(self.calls);
        self.calls += 1;
        window
    }
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
    sink: FrameSink,
    decoder: Decoder,
    frames_in: u64,
    next_apply: u64,
    finished: bool,
    stage2: Option<SecondStage>,
}

impl std::fmt::Debug for Spotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spotter")
            .field("format", &self.format)
            .field("hop_frames", &self.hop_frames)
            .field("frames", &self.frontend.frames())
            .field("windows", &self.windows_emitted())
            .field("streaming", &self.is_streaming())
            .field("cascade", &self.stage2.is_some())
            .finish()
    }
}

impl Spotter {
    /// A stream for a model with `classes` outputs (keywords first). Allocates the state (~20 KiB at
    /// 16 kHz; a resampler adds its own buffers for other rates; a cascade adds its sample ring,
    /// ~76 KiB for the research head: [`crate::two_stage`]).
    pub fn new(config: StreamConfig, classes: usize) -> Result<Self, ConfigError> {
        if config.hop_frames == 0 || config.hop_frames as usize > WINDOW_FRAMES {
            return Err(ConfigError::Hop(config.hop_frames));
        }
        let sink = FrameSink::Windowed {
            ring: Box::new([0.0; WINDOW_VALUES]),
            head: 0,
            next_seq: 0,
        };
        Self::with_sink(config, classes, sink)
    }

    /// A stream scored by a streaming model's graph with state `layout`
    /// ([`crate::StreamingSpec::layout`]; module docs, "Two kinds of first stage"). The stream's
    /// hop must be the model's ([`ConfigError::StreamingHop`] otherwise): the graph scores exactly
    /// its own hop. Adds the model state (`layout.len` floats) and a few hops of frames to
    /// [`new`](Self::new)'s allocations instead of the 98-frame ring.
    pub fn new_streaming(
        config: StreamConfig,
        classes: usize,
        layout: StateLayout,
    ) -> Result<Self, ConfigError> {
        if config.hop_frames as usize != layout.hop_frames {
            return Err(ConfigError::StreamingHop {
                got: config.hop_frames,
                model: layout.hop_frames as u32,
            });
        }
        let mut pending = Vec::with_capacity(4 * layout.frame_values());
        pending.resize(layout.lead_frames * NUM_MFCC, 0.0);
        let sink = FrameSink::Streaming(Box::new(HopState {
            state: layout.initial_state(),
            layout,
            pending,
            start: 0,
            calls: 0,
            lent: false,
        }));
        Self::with_sink(config, classes, sink)
    }

    fn with_sink(config: StreamConfig, classes: usize, sink: FrameSink) -> Result<Self, ConfigError> {
        let resampler = StreamResampler::new(config.format.sample_rate())?;
        let stage2 = match config.cascade {
            Some(c) => {
                let enabled: Vec<bool> = config.decoder.thresholds.iter().map(Option::is_some).collect();
                Some(SecondStage::new(c, &enabled).map_err(|e| ConfigError::Cascade(e.to_string()))?)
            }
            None => None,
        };
        let decoder = Decoder::new(config.decoder, classes, config.hop_frames)?;
        Ok(Self {
            format: config.format,
            hop_frames: config.hop_frames,
            resampler,
            frontend: MfccFrontend::new(),
            sink,
            decoder,
            frames_in: 0,
            next_apply: 0,
            finished: false,
            stage2,
        })
    }

    /// The stream's cascade settings, if it runs one.
    pub fn cascade(&self) -> Option<&CascadeSettings> {
        self.stage2.as_ref().map(|s| &s.settings)
    }

    /// 16-kHz samples that can still be fed (through [`push_pcm`](Self::push_pcm)) before a sample
    /// that a candidate may need leaves the ring; `u64::MAX` without a cascade. A caller that
    /// scores asynchronously waits for its outstanding window scores and verdict while this is
    /// shorter than its next chunk (at 16 kHz: the chunk's frames; other rates: frames × 16 000 /
    /// rate, plus the resampler's block of up to 1 024 samples).
    pub fn audio_room(&self) -> u64 {
        self.stage2.as_ref().map_or(u64::MAX, SecondStage::room)
    }

    /// The candidate whose verdict is due, if any.
    pub fn pending_candidate(&self) -> Option<&crate::cascade::Candidate> {
        self.stage2.as_ref()?.pending.as_ref().map(|p| &p.candidate)
    }

    /// The pending candidate's clip, copied out of the ring, once all of its samples exist (or the
    /// stream is finished: then the samples that exist); `None` if there is no candidate, its clip
    /// is not complete yet, or it was handed out already (its verdict is awaited). Allocates the
    /// clip (~90 KB; candidates are rare).
    pub fn ready_clip(&mut self) -> Result<Option<ReadyClip>, ApplyError> {
        let finished = self.finished;
        let Some(st) = self.stage2.as_mut() else {
            return Ok(None);
        };
        let written = st.ring.written();
        let Some(p) = st.pending.filter(|p| !p.taken) else {
            return Ok(None);
        };
        let range = if written >= p.range.end {
            p.range
        } else if finished {
            st.final_range(p.range, written)
        } else {
            return Ok(None);
        };
        let mut audio = Vec::new();
        st.ring
            .copy(range.start, range.end, &mut audio)
            .map_err(|oldest| ApplyError::ClipLost {
                candidate: p.candidate.id,
                start: range.start,
                oldest,
            })?;
        let p = st.pending.as_mut().map(|p| {
            p.taken = true;
            p.candidate
        });
        Ok(p.map(|candidate| ReadyClip {
            candidate,
            start: range.start,
            audio,
            lead: range.lead,
        }))
    }

    /// The verifier's probabilities (at least one per keyword) for candidate `id`, whose clip was
    /// handed out by [`ready_clip`](Self::ready_clip). Returns the event if it is accepted; the
    /// next candidate (from windows held meanwhile) may then be pending. Never allocates.
    pub fn verdict(&mut self, id: u64, probs: &[f32]) -> Result<Option<Event>, ApplyError> {
        let Some(st) = self.stage2.as_mut() else {
            return Err(CascadeError::NotPending {
                got: id,
                pending: None,
            }
            .into());
        };
        if st.pending.is_some_and(|p| p.candidate.id == id && !p.taken) {
            return Err(CascadeError::Config(format!(
                "verdict for candidate {id} before its clip was handed out"
            ))
            .into());
        }
        let r = st.cascade.verdict(id, probs)?;
        st.pending = None;
        if let Some(c) = r.next {
            st.set_pending(c);
        }
        Ok(r.event.map(|e| Event {
            class: e.keyword,
            score: e.score,
            start_ms: e.start_ms,
            end_ms: e.end_ms,
            verifier_score: Some(e.verifier_score),
        }))
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

    /// Windows emitted so far (streaming: windows of the hops completed or pending).
    pub fn windows_emitted(&self) -> u64 {
        match &self.sink {
            FrameSink::Windowed { next_seq, .. } => *next_seq,
            FrameSink::Streaming(h) => {
                (h.calls + h.pending_hops() as u64).saturating_sub(h.layout.first_valid_call)
            }
        }
    }

    /// Whether the first stage is a streaming model's ([`new_streaming`](Self::new_streaming)).
    pub fn is_streaming(&self) -> bool {
        matches!(self.sink, FrameSink::Streaming(_))
    }

    /// The streaming model's state after the last completed hop (`None` for a windowed stream, and
    /// while the hop is lent).
    pub fn model_state(&self) -> Option<&[f32]> {
        match &self.sink {
            FrameSink::Streaming(h) if !h.lent => Some(&h.state),
            _ => None,
        }
    }

    /// Streaming: hops whose frames exist and that are not completed yet (0 for a windowed stream).
    pub fn pending_hops(&self) -> usize {
        match &self.sink {
            FrameSink::Streaming(h) => h.pending_hops(),
            FrameSink::Windowed { .. } => 0,
        }
    }

    /// Streaming: the next hop to score, with the state before it. `None` when no full hop is
    /// pending, while a hop is lent, or for a windowed stream. Hop `i + 1` needs hop `i`'s state:
    /// one at a time.
    pub fn next_hop(&self) -> Option<Hop<'_>> {
        let FrameSink::Streaming(h) = &self.sink else {
            return None;
        };
        if h.lent {
            return None;
        }
        h.next_frames().map(|frames| Hop {
            frames,
            state: &h.state,
            window: h.layout.window_of_call(h.calls),
        })
    }

    /// Streaming: the next hop, for a scorer elsewhere (another thread), without copying the model
    /// state: the hop's frames are copied into `frames` (cleared first) and the state is *swapped*
    /// with `state`, whose buffer the stream keeps as scratch meanwhile. Until
    /// [`return_hop`](Self::return_hop) the hop is lent: `next_hop`, `lend_hop` and `model_state`
    /// give nothing and `advance_hop` is refused. Returns whether a hop was lent (not when no full
    /// hop is pending, one is lent already, or the stream is windowed; then nothing changes).
    pub fn lend_hop(&mut self, frames: &mut Vec<f32>, state: &mut Vec<f32>) -> bool {
        let FrameSink::Streaming(h) = &mut self.sink else {
            return false;
        };
        if h.lent {
            return false;
        }
        let Some(next) = h.next_frames() else {
            return false;
        };
        frames.clear();
        frames.extend_from_slice(next);
        std::mem::swap(&mut h.state, state);
        h.lent = true;
        true
    }

    /// Streaming: the lent hop was scored and `state` holds the state the model produced. It is
    /// swapped back in (no copy: `state` gets the scratch buffer) and the hop completed as by
    /// [`advance_hop`](Self::advance_hop), whose window it returns. Refused, with nothing changed
    /// (the hop stays lent), without a lent hop or with a state of the wrong length.
    pub fn return_hop(&mut self, state: &mut Vec<f32>) -> Result<Option<WindowMeta>, ApplyError> {
        let FrameSink::Streaming(h) = &mut self.sink else {
            return Err(ApplyError::Hop("the stream is windowed"));
        };
        if !h.lent {
            return Err(ApplyError::Hop("no hop is lent"));
        }
        if let Some(e) = h.refuse_completion(state.len()) {
            return Err(e);
        }
        std::mem::swap(&mut h.state, state);
        h.lent = false;
        Ok(h.complete())
    }

    /// Streaming: the hop [`next_hop`](Self::next_hop) returned was scored; `new_state` is the
    /// state the model produced. Returns the window the hop completed, whose posteriors must go to
    /// [`apply`](Self::apply) next (`None` during warm-up: nothing to apply). Refused, with nothing
    /// changed, on a windowed stream, without a pending hop or with a state of the wrong length.
    /// Never allocates.
    pub fn advance_hop(&mut self, new_state: &[f32]) -> Result<Option<WindowMeta>, ApplyError> {
        let FrameSink::Streaming(h) = &mut self.sink else {
            return Err(ApplyError::Hop("the stream is windowed"));
        };
        if h.lent {
            return Err(ApplyError::Hop("the hop is lent (complete it with return_hop)"));
        }
        if let Some(e) = h.refuse_completion(new_state.len()) {
            return Err(e);
        }
        h.state.copy_from_slice(new_state);
        Ok(h.complete())
    }

    /// Streaming: [`advance_hop`](Self::advance_hop) and [`apply`](Self::apply) of the hop's
    /// posteriors (if it completed a window). Returns the window and the event it fired (first
    /// stage only; with a cascade events come from [`verdict`](Self::verdict)).
    pub fn complete_hop(
        &mut self,
        new_state: &[f32],
        probs: &[f32],
    ) -> Result<(Option<WindowMeta>, Option<Event>), ApplyError> {
        match self.advance_hop(new_state)? {
            Some(w) => Ok((Some(w), self.apply(&w, probs)?)),
            None => Ok((None, None)),
        }
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
    /// the last windows. Further pushes fail with [`AudioError::Finished`]. Idempotent. With a
    /// cascade, candidates' clips are from now on cut at the end of the audio
    /// ([`ready_clip`](Self::ready_clip)): apply the last windows, then verify until no candidate
    /// is pending.
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
        if let Some(st) = self.stage2.as_mut() {
            st.ring.push(samples);
        }
        let Self {
            frontend,
            sink,
            hop_frames,
            ..
        } = self;
        let (ring, head, next_seq) = match sink {
            FrameSink::Windowed { ring, head, next_seq } => (ring, head, next_seq),
            FrameSink::Streaming(h) => {
                if h.start > 0 {
                    h.pending.drain(..h.start);
                    h.start = 0;
                }
                let pending = &mut h.pending;
                frontend.push(samples, |frame| pending.extend_from_slice(frame));
                return;
            }
        };
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
    /// event it fires, if any. With a cascade the decoder only smooths: the window's smoothed scores
    /// go to the cascade, which may make it a candidate ([`ready_clip`](Self::ready_clip)), and
    /// events come from [`verdict`](Self::verdict); this returns `None`. Never allocates.
    pub fn apply(&mut self, window: &WindowMeta, probs: &[f32]) -> Result<Option<Event>, ApplyError> {
        if window.seq != self.next_apply {
            return Err(OrderError {
                expected: self.next_apply,
                got: window.seq,
            }
            .into());
        }
        self.next_apply += 1;
        let event = self.decoder.push(window.start_ms, window.end_ms, probs);
        match self.stage2.as_mut() {
            None => Ok(event),
            Some(st) => {
                st.push(window.start_ms, window.end_ms, self.decoder.smoothed())?;
                Ok(None)
            }
        }
    }

    /// Smoothed posteriors after the last [`apply`](Self::apply), for score traces.
    pub fn smoothed(&self) -> &[f32] {
        self.decoder.smoothed()
    }

    /// Offline convenience: push all of `interleaved` (f32 samples at the stream's rate and channels),
    /// finish, score every window with `scorer` and return the events. A stream with a cascade
    /// needs [`process_with`](Self::process_with). Allocates.
    pub fn process(
        &mut self,
        scorer: &mut dyn Scorer,
        interleaved: &[f32],
    ) -> Result<Vec<Event>, ProcessError> {
        self.process_with(scorer, None, interleaved)
    }

    /// [`process`](Self::process) for raw PCM bytes in the stream's format.
    pub fn process_pcm(&mut self, scorer: &mut dyn Scorer, bytes: &[u8]) -> Result<Vec<Event>, ProcessError> {
        self.process_pcm_with(scorer, None, bytes)
    }

    /// [`process`](Self::process) with a verifier for the cascade's candidates (scored one at a
    /// time, as soon as each clip is complete). The audio is fed in pieces of
    /// [`PROCESS_PIECE_FRAMES`] input frames, each scored before the next, so that the cascade's
    /// sample ring never runs ahead of its verdicts.
    pub fn process_with(
        &mut self,
        scorer: &mut dyn Scorer,
        verifier: Option<&mut dyn ClipScorer>,
        interleaved: &[f32],
    ) -> Result<Vec<Event>, ProcessError> {
        let bytes: Vec<u8> = interleaved.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f32_format = self.format.with_encoding(Encoding::F32Le);
        let saved = std::mem::replace(&mut self.format, f32_format);
        let r = self.process_pcm_with(scorer, verifier, &bytes);
        self.format = saved;
        r
    }

    /// [`process_with`](Self::process_with) for raw PCM bytes in the stream's format.
    pub fn process_pcm_with(
        &mut self,
        scorer: &mut dyn Scorer,
        verifier: Option<&mut dyn ClipScorer>,
        bytes: &[u8],
    ) -> Result<Vec<Event>, ProcessError> {
        self.process_pcm_first_stage(FirstStage::Windowed(scorer), verifier, bytes)
    }

    /// [`process_pcm_with`](Self::process_pcm_with) for either kind of first stage (a streaming
    /// stream needs [`FirstStage::Streaming`]).
    pub fn process_pcm_first_stage(
        &mut self,
        mut scorer: FirstStage<'_>,
        mut verifier: Option<&mut dyn ClipScorer>,
        bytes: &[u8],
    ) -> Result<Vec<Event>, ProcessError> {
        let mut events = Vec::new();
        let mut batch = WindowBatch::new();
        self.format.validate(bytes)?;
        let pieces = bytes.chunks(PROCESS_PIECE_FRAMES * self.format.frame_bytes());
        for piece in pieces.map(Some).chain([None]) {
            batch.clear();
            match piece {
                Some(p) => self.push_pcm(p, &mut batch).map(|_| ())?,
                None => self.finish(&mut batch)?,
            }
            let v: Option<&mut dyn ClipScorer> = match verifier {
                Some(ref mut v) => Some(&mut **v),
                None => None,
            };
            self.score_pending(
                scorer.reborrow(),
                v,
                &batch,
                |_, _| {},
                |e| events.push(e.clone()),
            )?;
        }
        Ok(events)
    }

    /// Score the windows of `batch` with `scorer` (at most [`SCORE_CHUNK_WINDOWS`] per call), apply
    /// them in order and hand `on_window` each window with the smoothed posteriors after it, and
    /// `on_event` each event as it is decided: a first-stage event right after its window; with a
    /// cascade, the candidates whose clips are complete are scored by `verifier` at once (required
    /// then, else [`ProcessError::NoVerifier`]) and their events follow the window that completed
    /// them, and once the stream is finished and every window applied, the last candidates are
    /// verified on the samples that exist. The windows must be the next ones to apply (else
    /// [`ProcessError::Apply`]; what was applied before the error stays applied). Allocates the
    /// posterior buffer.
    pub fn score_windows(
        &mut self,
        scorer: &mut dyn Scorer,
        verifier: Option<&mut dyn ClipScorer>,
        batch: &WindowBatch,
        on_window: impl FnMut(&WindowMeta, &[f32]),
        on_event: impl FnMut(&Event),
    ) -> Result<(), ProcessError> {
        self.score_pending(FirstStage::Windowed(scorer), verifier, batch, on_window, on_event)
    }

    /// [`score_windows`](Self::score_windows) for either kind of first stage: windowed, the
    /// windows of `batch`; streaming, every pending hop, one [`StreamScorer`] call each (batch of
    /// one; `batch` is not read), then the same apply, callbacks and verification. The scorer must
    /// be of the stream's kind ([`ProcessError::ScorerKind`]).
    pub fn score_pending(
        &mut self,
        scorer: FirstStage<'_>,
        mut verifier: Option<&mut dyn ClipScorer>,
        batch: &WindowBatch,
        mut on_window: impl FnMut(&WindowMeta, &[f32]),
        mut on_event: impl FnMut(&Event),
    ) -> Result<(), ProcessError> {
        if self.stage2.is_some() && verifier.is_none() {
            return Err(ProcessError::NoVerifier);
        }
        let stream = if self.is_streaming() {
            "streaming"
        } else {
            "windowed"
        };
        if stream != scorer.kind() {
            return Err(ProcessError::ScorerKind {
                stream,
                scorer: scorer.kind(),
            });
        }
        let mut probs = Vec::new();
        match scorer {
            FirstStage::Windowed(scorer) => {
                let classes = scorer.num_classes();
                for (features, windows) in batch
                    .features()
                    .chunks(SCORE_CHUNK_WINDOWS * WINDOW_VALUES)
                    .zip(batch.windows().chunks(SCORE_CHUNK_WINDOWS))
                {
                    probs.resize(windows.len() * classes, 0.0);
                    scorer.score(features, &mut probs)?;
                    for (w, p) in windows.iter().zip(probs.chunks_exact(classes)) {
                        self.apply_scored(w, p, &mut verifier, &mut on_window, &mut on_event)?;
                    }
                }
            }
            FirstStage::Streaming(scorer) => {
                probs.resize(scorer.num_classes(), 0.0);
                let mut state = Vec::new();
                while let Some(hop) = self.next_hop() {
                    state.resize(hop.state.len(), 0.0);
                    scorer.score(hop.frames, hop.state, &mut state, &mut probs)?;
                    if let Some(w) = self.advance_hop(&state)? {
                        self.apply_scored(&w, &probs, &mut verifier, &mut on_window, &mut on_event)?;
                    }
                }
            }
        }
        // Clips completed by this push's samples (windows of the next push need not exist).
        if let Some(v) = verifier {
            self.verify_ready(v, &mut on_event)?;
        }
        Ok(())
    }

    /// Apply one scored window, then hand out the window, its event and the verdicts it made due.
    fn apply_scored(
        &mut self,
        w: &WindowMeta,
        probs: &[f32],
        verifier: &mut Option<&mut dyn ClipScorer>,
        on_window: &mut impl FnMut(&WindowMeta, &[f32]),
        on_event: &mut impl FnMut(&Event),
    ) -> Result<(), ProcessError> {
        let event = self.apply(w, probs)?;
        on_window(w, self.smoothed());
        if let Some(e) = &event {
            on_event(e);
        }
        if let Some(v) = verifier.as_mut() {
            self.verify_ready(&mut **v, on_event)?;
        }
        Ok(())
    }

    /// Verify every candidate whose clip is ready, one after the other (a verdict may make the next
    /// candidate pending, whose clip may be ready too).
    fn verify_ready(
        &mut self,
        verifier: &mut dyn ClipScorer,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<(), ProcessError> {
        while let Some(clip) = self.ready_clip()? {
            let probs = verifier.score_clips(&[clip.clip()])?;
            let probs = probs.first().ok_or(VerifyError::ModelOutput {
                model: "head",
                got: 0,
                want: crate::verifier::HEAD_CLASSES,
            })?;
            if let Some(e) = self.verdict(clip.candidate.id, probs)? {
                on_event(&e);
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
            first_stage_only: false,
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
                        first_stage_only: hop_ms == Some(20),
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
        let mut config = StreamConfig::from_manifest(&m, PcmFormat::native_s16());
        config.cascade = None; // the first stage's windows only
        let mut spotter = Spotter::new(config, m.num_classes()).expect("spotter");
        let mut batch = WindowBatch::new();
        let samples: Vec<f32> = (0..16_000 * 8).map(|i| ((i % 97) as f32 / 97.0) - 0.5).collect();
        spotter.push_samples(&samples, &mut batch).expect("push");
        spotter.finish(&mut batch).expect("finish");
        assert!(batch.len() > SCORE_CHUNK_WINDOWS, "spans several scorer calls");
        let mut seen = Vec::new();
        spotter
            .score_windows(
                &mut Silence(m.num_classes()),
                None,
                &batch,
                |w, _| seen.push(w.seq),
                |_| {},
            )
            .expect("scored");
        assert_eq!(seen, (0..batch.len() as u64).collect::<Vec<_>>());
        // The same windows again are not the next ones: refused, not skipped.
        let e = spotter
            .score_windows(&mut Silence(m.num_classes()), None, &batch, |_, _| {}, |_| {})
            .expect_err("order");
        assert!(matches!(e, ProcessError::Apply(ApplyError::Order(_))), "{e:?}");
    }

    /// Scores every window as keyword 0 at 0.95.
    struct Keyword0(usize);

    impl Scorer for Keyword0 {
        fn num_classes(&self) -> usize {
            self.0
        }
        fn score(&mut self, _: &[f32], out: &mut [f32]) -> Result<(), ScoreError> {
            for p in out.chunks_exact_mut(self.0) {
                p.fill(0.05 / (self.0 - 1) as f32);
                p[0] = 0.95;
            }
            Ok(())
        }
    }

    fn cascaded() -> (Manifest, Spotter) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verifier");
        let m = Manifest::load(dir).expect("fixture manifest");
        let s = Spotter::new(
            StreamConfig::from_manifest(&m, PcmFormat::native_s16()),
            m.num_classes(),
        )
        .expect("spotter");
        (m, s)
    }

    fn apply_all(s: &mut Spotter, batch: &WindowBatch, classes: usize) {
        let mut probs = vec![0.0; batch.len() * classes];
        Keyword0(classes)
            .score(batch.features(), &mut probs)
            .expect("scored");
        for (w, p) in batch.windows().iter().zip(probs.chunks_exact(classes)) {
            assert_eq!(s.apply(w, p).expect("applied"), None, "events come from verdicts");
        }
    }

    #[test]
    fn a_clip_that_left_the_ring_is_an_error_not_a_miscut() {
        let (m, mut s) = cascaded();
        let ring = crate::two_stage::ring_samples(s.cascade().expect("cascade")) as u64;
        assert_eq!(ring, 38_880);
        assert_eq!(s.audio_room(), ring);
        // 5 s fed before any window is applied: the first window's clip (from sample 0) is gone.
        let mut batch = WindowBatch::new();
        s.push_samples(&vec![0.01; 80_000], &mut batch).expect("push");
        apply_all(&mut s, &batch, m.num_classes());
        assert_eq!(s.pending_candidate().map(|c| (c.id, c.end_ms)), Some((0, 1000)));
        assert!(
            matches!(
                s.ready_clip(),
                Err(ApplyError::ClipLost {
                    candidate: 0,
                    start: 0,
                    oldest
                }) if oldest == 80_000 - ring
            ),
            "refused"
        );
    }

    #[test]
    fn disabled_keywords_are_never_candidates() {
        let (m, _) = cascaded();
        let keywords = vec!["no".to_string()];
        let c = StreamConfig::resolve(
            &m,
            PcmFormat::native_s16(),
            &keywords,
            [],
            DecoderOverrides::default(),
        )
        .expect("config");
        let mut s = Spotter::new(c, m.num_classes()).expect("spotter");
        let mut batch = WindowBatch::new();
        s.push_samples(&vec![0.01; 32_000], &mut batch).expect("push");
        // Every window scores "yes" at 0.95, which this stream did not enable.
        apply_all(&mut s, &batch, m.num_classes());
        assert!(s.windows_applied() > 0);
        assert_eq!(s.pending_candidate(), None);
        let (_, mut all) = cascaded();
        apply_all(&mut all, &batch, m.num_classes());
        assert!(all.pending_candidate().is_some(), "enabled, it is one");
    }

    #[test]
    fn audio_room_keeps_every_clip_in_the_ring() {
        let (m, mut s) = cascaded();
        let piece = vec![0.01f32; 1600];
        let mut batch = WindowBatch::new();
        let mut fed = 0u64;
        let mut clip = None;
        // Feed 100 ms at a time while there is room, applying windows at once but never answering
        // the candidate: feeding stops within the ring, the clip is intact.
        while s.audio_room() >= piece.len() as u64 {
            batch.clear();
            s.push_samples(&piece, &mut batch).expect("push");
            fed += piece.len() as u64;
            apply_all(&mut s, &batch, m.num_classes());
            if clip.is_none() {
                clip = s.ready_clip().expect("in the ring");
            }
            assert!(fed < 20 * 16_000, "room never ran out");
        }
        let clip = clip.expect("the first candidate's clip was cut");
        // Window [0, 1000) ms: the view starts 3 embeddings before the stream (lead 3).
        assert_eq!(
            (clip.start, clip.lead, clip.audio.len()),
            (0, 3, crate::verifier::clip_samples(9 - 3))
        );
        assert!(
            clip.audio
                .iter()
                .all(|&x| x == (0.01f32 * 32768.0).round() / 32768.0)
        );
        assert!(s.ready_clip().expect("no error").is_none(), "handed out once");
        // Nothing beyond the ring from the clip's start (sample 0) was fed.
        let ring = crate::two_stage::ring_samples(s.cascade().expect("cascade")) as u64;
        assert!(
            fed <= ring && fed + piece.len() as u64 > ring - 1280,
            "fed {fed} of {ring}"
        );
        // A verdict for another candidate, or before a clip is handed out, is refused.
        assert!(s.verdict(7, &[0.0; 12]).is_err());
        let event = s.verdict(0, &[0.99; 12]).expect("verdict");
        assert_eq!(
            event.map(|e| (e.class, e.end_ms, e.verifier_score)),
            Some((0, 1000, Some(0.99)))
        );
    }
}
