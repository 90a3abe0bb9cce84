//! The cascade inside a [`crate::Spotter`]: the stream's recent 16-kHz samples, the candidates the
//! first stage proposes ([`crate::cascade::Cascade`]) and the clips the verifier needs.
//!
//! A stream whose [`crate::StreamConfig::cascade`] is set keeps the samples it fed the frontend in
//! a [`SampleRing`]. Each applied window's smoothed scores go to [`Cascade::push`]; a candidate's
//! clip ([`crate::verifier::ClipRange`]) is copied out once its last sample exists
//! ([`crate::Spotter::ready_clip`]), so the ring can move on while the verifier runs; its verdict
//! ([`crate::Spotter::verdict`]) yields the event. At the end of a stream the pending candidate is
//! verified on the samples that exist.
//!
//! # Ring size and state
//! The ring holds `max(clip, lookback) + 1 s` of samples ([`ring_samples`]): for the research head
//! (9 embeddings, offset 0) 22 880 + 16 000 = 38 880 samples, **77 760 bytes per stream** as `i16`
//! (the rest of a cascaded stream's state: the cascade's backlog, ≤ 250 windows × 32 bytes = 8 KB,
//! allocated once). `i16`, not `f32`: half the memory, and exact for 16-bit input at 16 kHz (the
//! wire's usual format: a sample `v / 32768` is stored as `v`); other inputs are rounded to the
//! nearest of 65 536 levels, below what the verifier's mel model resolves (it scales its input to
//! the int16 range). A sample can be needed as long as a window that may still become a candidate
//! can reach back to it; [`crate::Spotter::audio_room`] says how many more samples can be fed before
//! one of those would be overwritten, and a clip that was overwritten anyway is a typed error
//! ([`crate::spotter::ApplyError::ClipLost`]), never a mis-cut clip.

use crate::cascade::{Candidate, Cascade, CascadeConfig};
use crate::decoder::MAX_CLASSES;
use crate::verifier::{
    ClipRange, EMB_HOP_SAMPLES, HEAD_CLASSES, MIN_CLIP_SAMPLES, VerifyError, View, clip_samples,
};

/// Samples kept beyond a clip (1 s at 16 kHz): the verifier's time budget before a stream must
/// wait for its verdict, and room for the next chunk of audio.
pub const RING_SLACK_SAMPLES: usize = 16_000;

/// The cascade of one stream: the manifest's `verifier` section with the stream's overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeSettings {
    /// The decision rule; its `thresholds` are the verdict thresholds (the manifest's
    /// `verifier.thresholds`, replaced by the stream's own per-keyword thresholds) and its
    /// `refractory_ms` is the stream decoder's.
    pub config: CascadeConfig,
    /// Embeddings per verifier clip: the head's view plus the shifted views around it
    /// ([`crate::manifest::VerifierSpec::clip_embeddings`]).
    pub clip_embeddings: usize,
    /// The view is centred on the candidate time plus this (ms).
    pub centre_offset_ms: i32,
}

impl CascadeSettings {
    /// The manifest's cascade (verdict thresholds, first-stage threshold, its decoder's
    /// refractory), or `None` without a `verifier` section.
    pub fn from_manifest(manifest: &crate::Manifest) -> Option<Self> {
        let v = manifest.verifier.as_ref()?;
        Some(Self {
            config: CascadeConfig::from_manifest(manifest)?,
            clip_embeddings: v.clip_embeddings(),
            centre_offset_ms: v.centre_offset_ms,
        })
    }

    /// The view of a candidate (or of any window) `[start_ms, end_ms)`.
    pub fn view(&self, start_ms: u64, end_ms: u64) -> View {
        View::at(
            ((start_ms + end_ms) / 2) as i64,
            i64::from(self.centre_offset_ms),
            self.clip_embeddings,
        )
    }
}

/// Samples of the ring for `settings`: the longer of one clip and the reach of a window's clip back
/// from the window's end, plus [`RING_SLACK_SAMPLES`].
pub fn ring_samples(settings: &CascadeSettings) -> usize {
    let view = settings.clip_embeddings.max(1);
    // A 1-s window ending at 1 000 s; its clip starts `back` samples before the window's end.
    let end_ms = 1_000_000u64;
    let r = settings.view(end_ms - 1000, end_ms).clip();
    let back = (end_ms * 16).saturating_sub(r.start) as usize + EMB_HOP_SAMPLES;
    clip_samples(view).max(back) + RING_SLACK_SAMPLES
}

/// The last `capacity` samples fed to the frontend, as `i16` (`round(x · 32768)`, clamped).
#[derive(Debug, Clone)]
pub struct SampleRing {
    buf: Box<[i16]>,
    written: u64,
}

impl SampleRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            written: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Samples written since the stream began (sample `i` of the stream is the `i`-th written).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The oldest sample still held.
    pub fn oldest(&self) -> u64 {
        self.written.saturating_sub(self.buf.len() as u64)
    }

    /// Append samples (floats in [-1, 1]; others are clamped). Never allocates.
    pub fn push(&mut self, samples: &[f32]) {
        let cap = self.buf.len();
        // Only the last `cap` samples of a long push can survive it.
        let skip = samples.len().saturating_sub(cap);
        self.written += skip as u64;
        for &x in &samples[skip..] {
            let v = (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
            self.buf[(self.written % cap as u64) as usize] = v;
            self.written += 1;
        }
    }

    /// Copy samples `[start, end)` into `out` (replaced) as floats `v / 32768`; `Err(oldest)` if
    /// `start` has left the ring. `end` must not exceed [`written`](Self::written).
    pub fn copy(&self, start: u64, end: u64, out: &mut Vec<f32>) -> Result<(), u64> {
        if start < self.oldest() {
            return Err(self.oldest());
        }
        let end = end.min(self.written);
        let cap = self.buf.len() as u64;
        out.clear();
        out.extend((start..end).map(|i| f32::from(self.buf[(i % cap) as usize]) / 32768.0));
        Ok(())
    }
}

/// A candidate's clip, copied out of the ring: score it (alone or batched with others) and pass the
/// probabilities to [`crate::Spotter::verdict`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyClip {
    pub candidate: Candidate,
    /// The samples `[start, start + audio.len())` of the stream (16 kHz, floats in [-1, 1]).
    pub start: u64,
    pub audio: Vec<f32>,
    /// Copies of the clip's first embedding in front of it (see [`ClipRange::lead`]).
    pub lead: usize,
}

impl ReadyClip {
    /// The verifier input.
    pub fn clip(&self) -> crate::verifier::Clip<'_> {
        crate::verifier::Clip {
            audio: &self.audio,
            lead: self.lead,
        }
    }
}

/// Scores candidate clips: [`crate::Verifier`] (feature `onnx`), or a fake in tests. Returns one
/// row of [`HEAD_CLASSES`] probabilities per clip.
pub trait ClipScorer {
    fn score_clips(
        &mut self,
        clips: &[crate::verifier::Clip<'_>],
    ) -> Result<Vec<[f32; HEAD_CLASSES]>, VerifyError>;
}

#[cfg(feature = "onnx")]
impl ClipScorer for crate::Verifier {
    fn score_clips(
        &mut self,
        clips: &[crate::verifier::Clip<'_>],
    ) -> Result<Vec<[f32; HEAD_CLASSES]>, VerifyError> {
        crate::Verifier::score_clips(self, clips)
    }
}

/// The pending candidate and its clip.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingClip {
    pub(crate) candidate: Candidate,
    pub(crate) range: ClipRange,
    /// Copied out already (the verdict is awaited).
    pub(crate) taken: bool,
}

/// Per-stream cascade state (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct SecondStage {
    pub(crate) settings: CascadeSettings,
    pub(crate) cascade: Cascade,
    pub(crate) ring: SampleRing,
    /// Keywords the stream has enabled; the others' scores are hidden from the cascade (never
    /// candidates), as the decoder never fires them.
    enabled: [bool; MAX_CLASSES],
    pub(crate) pending: Option<PendingClip>,
    /// The last window applied (start, end): the next one ends later.
    last_window: Option<(u64, u64)>,
    masked: [f32; MAX_CLASSES],
}

impl SecondStage {
    pub(crate) fn new(
        settings: CascadeSettings,
        enabled: &[bool],
    ) -> Result<Self, crate::cascade::CascadeError> {
        let cascade = Cascade::new(settings.config.clone())?;
        let ring = SampleRing::new(ring_samples(&settings));
        let mut mask = [false; MAX_CLASSES];
        for (m, e) in mask.iter_mut().zip(enabled) {
            *m = *e;
        }
        Ok(Self {
            settings,
            cascade,
            ring,
            enabled: mask,
            pending: None,
            last_window: None,
            masked: [0.0; MAX_CLASSES],
        })
    }

    /// Push one applied window's smoothed scores; a new candidate becomes pending.
    pub(crate) fn push(
        &mut self,
        start_ms: u64,
        end_ms: u64,
        smoothed: &[f32],
    ) -> Result<(), crate::cascade::CascadeError> {
        let n = smoothed.len().min(MAX_CLASSES);
        for (i, (m, s)) in self.masked[..n].iter_mut().zip(smoothed).enumerate() {
            *m = if self.enabled[i] { *s } else { 0.0 };
        }
        let candidate = self.cascade.push(start_ms, end_ms, &self.masked[..n])?;
        self.last_window = Some((start_ms, end_ms));
        if let Some(c) = candidate {
            self.set_pending(c);
        }
        Ok(())
    }

    pub(crate) fn set_pending(&mut self, c: Candidate) {
        self.pending = Some(PendingClip {
            candidate: c,
            range: self.settings.view(c.start_ms, c.end_ms).clip(),
            taken: false,
        });
    }

    /// The first sample a candidate yet to be cut may need: the clip of the pending candidate, or
    /// (once it is cut, or without one) of the earliest window that may still become a candidate.
    pub(crate) fn oldest_needed(&self) -> u64 {
        let window = match (&self.pending, self.last_window) {
            (Some(p), _) => Some((p.candidate.start_ms, p.candidate.end_ms)),
            (None, w) => w,
        };
        match window {
            Some((s, e)) => self.settings.view(s, e).clip().start,
            None => 0,
        }
    }

    /// Samples that can still be written before one that may be needed leaves the ring.
    pub(crate) fn room(&self) -> u64 {
        let used = self.ring.written().saturating_sub(self.oldest_needed());
        (self.ring.capacity() as u64).saturating_sub(used)
    }

    /// The range of a clip at the end of a stream of `written` samples: the samples that exist; if
    /// fewer than one embedding's, the view lies wholly beyond the stream and the research code
    /// repeats the stream's last embedding in every position, so the clip is that embedding with
    /// `lead = view − 1`.
    pub(crate) fn final_range(&self, r: ClipRange, written: u64) -> ClipRange {
        let end = r.end.min(written);
        if end.saturating_sub(r.start) >= MIN_CLIP_SAMPLES as u64 || written < MIN_CLIP_SAMPLES as u64 {
            return ClipRange { end, ..r };
        }
        let hop = EMB_HOP_SAMPLES as u64;
        let last = (written - MIN_CLIP_SAMPLES as u64) / hop;
        ClipRange {
            start: last * hop,
            end: last * hop + MIN_CLIP_SAMPLES as u64,
            lead: self.settings.clip_embeddings.max(1) - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CascadeSettings {
        CascadeSettings {
            config: CascadeConfig {
                candidate_rule: crate::cascade::CandidateRule::BestKeyword,
                first_stage_threshold: 0.5,
                thresholds: vec![0.5; 10],
                refractory_ms: 1000,
                reject_gap_ms: 200,
                max_backlog: 250,
            },
            clip_embeddings: 9,
            centre_offset_ms: 0,
        }
    }

    #[test]
    fn ring_size_of_the_research_head() {
        // One clip (1.43 s) is longer than a window's reach back (1.26 s + one embedding hop).
        assert_eq!(ring_samples(&settings()), 22_880 + 16_000);
        // A view centred 1 s earlier reaches further back than a clip is long.
        let early = CascadeSettings {
            centre_offset_ms: -1000,
            ..settings()
        };
        assert!(ring_samples(&early) > ring_samples(&settings()));
        let r = early.view(100_000, 101_000).clip();
        assert!(101_000 * 16 - r.start + (RING_SLACK_SAMPLES as u64) <= ring_samples(&early) as u64);
    }

    #[test]
    fn ring_size_with_shifted_views() {
        // TC-ResNet8 2.6.0 (`view_shifts` 1): clips of 11 embeddings, 25 440 samples, still longer
        // than the reach back of a window's clip (one embedding more than with 9).
        let shifted = CascadeSettings {
            clip_embeddings: 11,
            ..settings()
        };
        assert_eq!(ring_samples(&shifted), 25_440 + 16_000);
        let r = shifted.view(100_000, 101_000).clip();
        assert_eq!(r.start, settings().view(100_000, 101_000).clip().start - 1280);
        assert_eq!(r.len(), 25_440);
    }

    #[test]
    fn ring_keeps_the_last_samples_exactly() {
        let mut r = SampleRing::new(100);
        let x: Vec<f32> = (0..250).map(|i| ((i % 200) as f32 - 100.0) / 32768.0).collect();
        r.push(&x[..30]);
        r.push(&x[30..]);
        assert_eq!((r.written(), r.oldest()), (250, 150));
        let mut out = Vec::new();
        r.copy(150, 250, &mut out).unwrap();
        assert_eq!(out, x[150..]);
        assert_eq!(r.copy(149, 200, &mut out), Err(150));
        // A push longer than the ring keeps its tail.
        r.push(&x[..230]);
        assert_eq!(r.oldest(), 380);
        r.copy(380, 480, &mut out).unwrap();
        assert_eq!(out, x[130..230]);
        // Out of range values are clamped, not wrapped.
        r.push(&[2.0, -2.0]);
        r.copy(480, 482, &mut out).unwrap();
        assert_eq!(out, [32767.0 / 32768.0, -1.0]);
    }

    #[test]
    fn a_view_beyond_the_stream_is_its_last_embedding() {
        let s = SecondStage::new(settings(), &[true; 10]).unwrap();
        let written = 20_000u64;
        // Inside the stream: cut at its end.
        let r = ClipRange {
            start: 1280,
            end: 1280 + 22_880,
            lead: 0,
        };
        assert_eq!(s.final_range(r, written), ClipRange { end: written, ..r });
        // Beyond it: the last whole embedding, repeated 9 times.
        let r = ClipRange {
            start: 12_800,
            end: 12_800 + 22_880,
            lead: 0,
        };
        let f = s.final_range(r, written);
        assert_eq!(f.len(), MIN_CLIP_SAMPLES);
        assert_eq!((f.start, f.lead), (5 * 1280, 8));
        assert!(f.end <= written && f.start + 1280 + MIN_CLIP_SAMPLES as u64 > written);
    }
}
