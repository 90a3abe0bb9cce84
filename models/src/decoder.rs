//! Event decoding from the per-window posteriors: smoothing, per-keyword thresholds, refractory.
//!
//! The rule, the same as the Python reference (`kws_train.stream.decode`):
//! for each scored window in order, `smoothed` = mean of the posteriors of the last `S` windows
//! (fewer at stream start), `S = max(1, round(smoothing_ms / hop_ms))`. Among the enabled keywords
//! whose smoothed score (rounded to f32) is `>=` their f32 threshold, the highest (ties: lowest class index) fires,
//! unless the window ends before the refractory deadline. An event spans the firing window; the
//! deadline becomes `end_ms + refractory_ms` (one utterance, one event, whatever the keyword).

use crate::error::ConfigError;
use crate::frontend::{MS_PER_FRAME, WINDOW_FRAMES};

/// Most classes a model may have (12 in the shipped models).
pub const MAX_CLASSES: usize = 16;
/// Longest smoothing span accepted.
pub const MAX_SMOOTHING_MS: u32 = 1000;
/// Longest refractory period accepted.
pub const MAX_REFRACTORY_MS: u32 = 10_000;

/// Decoder settings for one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Moving-average span of posteriors in ms (0 or less than one hop = no smoothing).
    pub smoothing_ms: u32,
    /// After an event, no new event until a window ends this many ms later.
    pub refractory_ms: u32,
    /// Threshold per keyword, indexed like the model's keywords (the first classes of its output);
    /// `None` disables the keyword.
    pub thresholds: Vec<Option<f32>>,
}

impl DecoderConfig {
    /// Validates ranges: thresholds in [0, 1], smoothing ≤ 1 s, refractory ≤ 10 s, at least one keyword.
    pub fn validate(&self, keywords: &[String]) -> Result<(), ConfigError> {
        if self.smoothing_ms > MAX_SMOOTHING_MS {
            return Err(ConfigError::Smoothing(self.smoothing_ms));
        }
        if self.refractory_ms > MAX_REFRACTORY_MS {
            return Err(ConfigError::Refractory(self.refractory_ms));
        }
        for (k, t) in keywords.iter().zip(&self.thresholds) {
            if let Some(v) = t
                && !(0.0..=1.0).contains(v)
            {
                return Err(ConfigError::Threshold {
                    keyword: k.clone(),
                    value: *v,
                });
            }
        }
        if self.thresholds.len() != keywords.len() || self.thresholds.iter().all(Option::is_none) {
            return Err(ConfigError::NoKeywords {
                known: keywords.join(", "),
            });
        }
        Ok(())
    }
}

/// A detected keyword.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Index of the keyword in the model's classes.
    pub class: usize,
    /// Smoothed posterior that fired, in [0, 1].
    pub score: f32,
    /// Start of the firing window, ms on the stream's own audio clock.
    pub start_ms: u64,
    /// End of the firing window, ms on the stream's own audio clock.
    pub end_ms: u64,
    /// With a cascade: the verifier's probability of the keyword (`score` is then the first
    /// stage's smoothed score of the candidate window). `None`: a first-stage event.
    pub verifier_score: Option<f32>,
}

/// Streaming decoder state: a ring of the last `S` posterior vectors. About 1 KiB at the defaults.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: DecoderConfig,
    classes: usize,
    span: usize,
    history: Vec<[f32; MAX_CLASSES]>,
    next: usize,
    filled: usize,
    deadline_ms: u64,
    smoothed: [f32; MAX_CLASSES],
}

impl Decoder {
    /// A decoder for a model with `classes` outputs whose first `config.thresholds.len()` are
    /// keywords, scored every `hop_frames` frames.
    pub fn new(config: DecoderConfig, classes: usize, hop_frames: u32) -> Result<Self, ConfigError> {
        if hop_frames == 0 || hop_frames as usize > WINDOW_FRAMES {
            return Err(ConfigError::Hop(hop_frames));
        }
        let hop_ms = hop_frames * MS_PER_FRAME;
        let span = ((f64::from(config.smoothing_ms) / f64::from(hop_ms)).round() as usize).max(1);
        let classes = classes.min(MAX_CLASSES);
        Ok(Self {
            history: vec![[0.0; MAX_CLASSES]; span],
            config,
            classes,
            span,
            next: 0,
            filled: 0,
            deadline_ms: 0,
            smoothed: [0.0; MAX_CLASSES],
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Windows averaged by the smoothing.
    pub fn smoothing_windows(&self) -> usize {
        self.span
    }

    /// The smoothed posteriors after the last [`push`](Self::push) (all classes).
    pub fn smoothed(&self) -> &[f32] {
        &self.smoothed[..self.classes]
    }

    /// Feed the posteriors of the next window (`probs.len()` = classes). Never allocates.
    pub fn push(&mut self, start_ms: u64, end_ms: u64, probs: &[f32]) -> Option<Event> {
        let n = self.classes.min(probs.len());
        self.history[self.next][..n].copy_from_slice(&probs[..n]);
        self.next = (self.next + 1) % self.span;
        self.filled = (self.filled + 1).min(self.span);
        let mut best: Option<(usize, f32)> = None;
        for c in 0..n {
            // Oldest first, like the reference, so the f64 sums are bit-identical.
            let oldest = (self.next + self.span - self.filled) % self.span;
            let sum = (0..self.filled)
                .map(|i| f64::from(self.history[(oldest + i) % self.span][c]))
                .fold(0.0, |a, b| a + b);
            let mean = sum / self.filled as f64;
            // Compared in f32 (thresholds are f32), exactly like the reference.
            let mean = mean as f32;
            self.smoothed[c] = mean;
            if let Some(Some(th)) = self.config.thresholds.get(c)
                && mean >= *th
                && best.is_none_or(|(_, s)| mean > s)
            {
                best = Some((c, mean));
            }
        }
        let (class, score) = best?;
        if end_ms < self.deadline_ms {
            return None;
        }
        self.deadline_ms = end_ms + u64::from(self.config.refractory_ms);
        Some(Event {
            class,
            score,
            start_ms,
            end_ms,
            verifier_score: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(kw: usize, p: f32) -> Vec<f32> {
        let mut v = vec![(1.0 - p) / 11.0; 12];
        v[kw] = p;
        v
    }

    fn decoder(smoothing_ms: u32, refractory_ms: u32) -> Decoder {
        let cfg = DecoderConfig {
            smoothing_ms,
            refractory_ms,
            thresholds: vec![Some(0.5); 10],
        };
        Decoder::new(cfg, 12, 2).expect("valid")
    }

    #[test]
    fn fires_once_per_refractory_period() {
        let mut d = decoder(0, 1000);
        let mut events = vec![];
        for w in 0..200u64 {
            let p = if (10..30).contains(&w) || (120..125).contains(&w) {
                0.9
            } else {
                0.01
            };
            if let Some(e) = d.push(w * 20, w * 20 + 1000, &probs(3, p)) {
                events.push(e);
            }
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!((events[0].class, events[0].end_ms), (3, 10 * 20 + 1000));
        assert_eq!(events[1].end_ms, 120 * 20 + 1000);
    }

    #[test]
    fn smoothing_delays_and_averages() {
        // Span 60 ms at a 20 ms hop = 3 windows: the mean reaches 0.5 on the third window at 0.6,
        // never with two windows at 0.6 and one at 0.1 before them.
        let mut d = decoder(60, 1000);
        assert!(d.push(0, 1000, &probs(0, 0.1)).is_none());
        assert!(d.push(20, 1020, &probs(0, 0.6)).is_none());
        assert!(d.push(40, 1040, &probs(0, 0.6)).is_none());
        let e = d
            .push(60, 1060, &probs(0, 0.6))
            .expect("fires on the 3rd window at 0.6");
        assert!((e.score - 0.6).abs() < 1e-6);
        assert_eq!(d.smoothing_windows(), 3);
    }

    #[test]
    fn disabled_keywords_and_per_keyword_thresholds() {
        let mut thresholds = vec![Some(0.95); 10];
        thresholds[2] = None;
        thresholds[4] = Some(0.3);
        let cfg = DecoderConfig {
            smoothing_ms: 0,
            refractory_ms: 0,
            thresholds,
        };
        let mut d = Decoder::new(cfg, 12, 2).expect("valid");
        assert!(d.push(0, 1000, &probs(2, 0.99)).is_none(), "disabled keyword");
        assert!(
            d.push(20, 1020, &probs(1, 0.9)).is_none(),
            "below its 0.95 threshold"
        );
        assert_eq!(d.push(40, 1040, &probs(4, 0.35)).map(|e| e.class), Some(4));
    }

    #[test]
    fn validation_messages() {
        let kws: Vec<String> = ["yes", "no"].iter().map(|s| s.to_string()).collect();
        let bad = DecoderConfig {
            smoothing_ms: 0,
            refractory_ms: 0,
            thresholds: vec![Some(1.5), None],
        };
        assert!(
            bad.validate(&kws)
                .expect_err("1.5")
                .to_string()
                .contains("\"yes\"")
        );
        let none = DecoderConfig {
            smoothing_ms: 0,
            refractory_ms: 0,
            thresholds: vec![None, None],
        };
        assert!(matches!(none.validate(&kws), Err(ConfigError::NoKeywords { .. })));
        assert!(Decoder::new(none, 12, 0).is_err());
    }
}
