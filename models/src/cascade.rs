//! The cascade decision rule: the first stage proposes candidates, the verifier accepts or rejects
//! them. A pure state machine (no threads, no clocks, no models), ported from `cascade_events` in
//! `training/kws_train/verifier.py`.
//!
//! For each scored window, in stream order, with `smoothed` its smoothed posteriors (the decoder's
//! smoothing, `Decoder::smoothed`):
//! 1. the window's best keyword is the highest smoothed keyword score (ties: lowest index);
//! 2. it is a *candidate* if its candidate score ([`CandidateRule`]: that keyword's score, or the
//!    sum of all keywords' scores) is `>=` the first-stage threshold t1 and the window's
//!    `end_ms >=` the deadline (initially 0);
//! 3. the verifier scores the candidate's clip ([`crate::verifier::View`]); it is *accepted* if the
//!    verifier's probability of the first stage's keyword is `>=` that keyword's threshold v:
//!    an event, and the deadline becomes `end_ms + refractory_ms`; otherwise the deadline becomes
//!    `end_ms + reject_gap_ms`.
//!
//! # Verdicts arrive late
//!
//! A live stream cannot verify a candidate at once: its clip ends up to ~250 ms after the window
//! (and the verifier takes time). [`Cascade::push`] returns the candidate; windows pushed while its
//! verdict is pending are kept (only those at or above t1, as the others can never be candidates)
//! in a bounded backlog; [`Cascade::verdict`] applies the decision and replays the backlog, which
//! may yield the next candidate. The events are exactly those of the offline rule whatever the
//! timing of the verdicts (tested against a direct port of the Python loop and against a golden
//! computed by `verifier.cascade_events` on a real validation stream).

use std::collections::VecDeque;

use crate::decoder::MAX_REFRACTORY_MS;

/// Default bound of the backlog: 5 s of windows at the default 20-ms hop.
pub const DEFAULT_MAX_BACKLOG: usize = 250;

/// What a window's first-stage scores are compared with t1 as (manifest `verifier.candidate_rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateRule {
    /// The highest smoothed keyword score (the models before 2.3.0).
    #[default]
    BestKeyword,
    /// The sum of all keywords' smoothed scores, added in f64 in keyword order and rounded to f32
    /// (`verifier.candidate_scores` in the research code). A window whose keyword probability is
    /// split between confusable keywords (go/no, on/off) is still proposed; its keyword is still
    /// the highest one, and the verifier judges that keyword.
    KeywordMass,
}

impl CandidateRule {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BestKeyword => "best_keyword",
            Self::KeywordMass => "keyword_mass",
        }
    }

    /// The score compared with t1 for a window whose best keyword scored `best`.
    fn score(self, keywords: &[f32], best: f32) -> f32 {
        match self {
            Self::BestKeyword => best,
            // A NaN anywhere makes the sum NaN: never a candidate, like a NaN best score.
            Self::KeywordMass => keywords.iter().map(|&s| f64::from(s)).sum::<f64>() as f32,
        }
    }
}

/// Cascade parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeConfig {
    /// What is compared with t1.
    pub candidate_rule: CandidateRule,
    /// First-stage threshold t1 (float32 comparison, as in the research code).
    pub first_stage_threshold: f32,
    /// Verifier threshold v per keyword (the first `thresholds.len()` classes are the keywords).
    pub thresholds: Vec<f32>,
    /// Refractory period after an accepted candidate.
    pub refractory_ms: u32,
    /// Gap after a rejected candidate (200 ms in the research).
    pub reject_gap_ms: u32,
    /// Windows at or above t1 held while a verdict is pending; more is an error.
    pub max_backlog: usize,
}

impl CascadeConfig {
    /// The configuration of `manifest`'s `verifier` section with its decoder's refractory period;
    /// `None` without a section.
    pub fn from_manifest(manifest: &crate::Manifest) -> Option<Self> {
        let v = manifest.verifier.as_ref()?;
        Some(Self {
            candidate_rule: v.candidate_rule,
            first_stage_threshold: v.first_stage_threshold,
            thresholds: v.thresholds_for(&manifest.keywords),
            refractory_ms: manifest.decoder.refractory_ms,
            reject_gap_ms: v.reject_gap_ms,
            max_backlog: DEFAULT_MAX_BACKLOG,
        })
    }

    fn validate(&self) -> Result<(), CascadeError> {
        let bad = |what: String| Err(CascadeError::Config(what));
        if !(0.0..=1.0).contains(&self.first_stage_threshold) {
            return bad(format!(
                "first-stage threshold {} is outside [0, 1]",
                self.first_stage_threshold
            ));
        }
        if self.thresholds.is_empty() || self.thresholds.len() > crate::decoder::MAX_CLASSES {
            return bad(format!(
                "{} keyword thresholds: use 1..={}",
                self.thresholds.len(),
                crate::decoder::MAX_CLASSES
            ));
        }
        if let Some((k, v)) = self
            .thresholds
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return bad(format!("verifier threshold {v} of keyword {k} is outside [0, 1]"));
        }
        if self.refractory_ms > MAX_REFRACTORY_MS || self.reject_gap_ms > MAX_REFRACTORY_MS {
            return bad(format!(
                "refractory {} ms / reject gap {} ms: use 0..={MAX_REFRACTORY_MS} ms",
                self.refractory_ms, self.reject_gap_ms
            ));
        }
        if self.max_backlog == 0 {
            return bad("max_backlog must be at least 1".into());
        }
        Ok(())
    }
}

/// A window the first stage proposes; its verdict is due before the cascade decides anything else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Sequence number (0, 1, ...) of the candidate in the stream; a verdict names it.
    pub id: u64,
    /// Keyword (class index) of the first stage.
    pub keyword: usize,
    /// Its smoothed first-stage score (below t1 when the keyword mass, not the keyword, reached it).
    pub score: f32,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Candidate {
    /// Candidate time: the centre of its window, `(start_ms + end_ms) / 2` (integer ms, as in the
    /// research code).
    pub fn time_ms(&self) -> u64 {
        (self.start_ms + self.end_ms) / 2
    }

    /// The verifier view of this candidate (`len` embeddings, centre offset in ms).
    pub fn view(&self, offset_ms: i64, len: usize) -> crate::verifier::View {
        crate::verifier::View::at(self.time_ms() as i64, offset_ms, len)
    }
}

/// An accepted candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CascadeEvent {
    pub keyword: usize,
    /// Smoothed first-stage score.
    pub score: f32,
    /// The verifier's probability of `keyword`.
    pub verifier_score: f32,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What a verdict leads to.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resolution {
    /// The event, if the candidate was accepted.
    pub event: Option<CascadeEvent>,
    /// The next candidate found while replaying the backlog (its verdict is now due).
    pub next: Option<Candidate>,
}

/// A misuse of the cascade or a bad configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CascadeError {
    #[error("cascade configuration: {0}")]
    Config(String),
    #[error("window of {got} smoothed scores; the cascade has {keywords} keywords")]
    Scores { got: usize, keywords: usize },
    #[error(
        "{max} windows are waiting for the verdict on candidate {pending}: the verifier is not keeping up"
    )]
    Backlog { pending: u64, max: usize },
    #[error("verdict for candidate {got}, but {}", match .pending { Some(p) => format!("candidate {p} is pending"), None => "no candidate is pending".into() })]
    NotPending { got: u64, pending: Option<u64> },
    #[error("verdict of {got} probabilities; the cascade has {keywords} keywords")]
    Verdict { got: usize, keywords: usize },
    #[error("window ending at {end_ms} ms comes after one ending at {last_ms} ms")]
    Order { end_ms: u64, last_ms: u64 },
}

/// A window kept while a verdict is pending (candidate score at or above t1 only).
#[derive(Debug, Clone, Copy)]
struct Held {
    keyword: usize,
    score: f32,
    start_ms: u64,
    end_ms: u64,
}

/// Per-stream cascade state: O(backlog) memory, allocated once.
#[derive(Debug, Clone)]
pub struct Cascade {
    config: CascadeConfig,
    deadline: u64,
    last_end: u64,
    next_id: u64,
    pending: Option<Candidate>,
    backlog: VecDeque<Held>,
}

impl Cascade {
    pub fn new(config: CascadeConfig) -> Result<Self, CascadeError> {
        config.validate()?;
        let backlog = VecDeque::with_capacity(config.max_backlog);
        Ok(Self {
            config,
            deadline: 0,
            last_end: 0,
            next_id: 0,
            pending: None,
            backlog,
        })
    }

    pub fn config(&self) -> &CascadeConfig {
        &self.config
    }

    /// The candidate whose verdict is due, if any.
    pub fn pending(&self) -> Option<&Candidate> {
        self.pending.as_ref()
    }

    /// Windows held for replay.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Feed the next window (stream order; `smoothed` holds at least the keyword scores). Returns
    /// a candidate whose verdict must be passed to [`Cascade::verdict`]; while one is pending,
    /// windows are held and `None` is returned. Errors leave the state unchanged.
    pub fn push(
        &mut self,
        start_ms: u64,
        end_ms: u64,
        smoothed: &[f32],
    ) -> Result<Option<Candidate>, CascadeError> {
        let keywords = self.config.thresholds.len();
        if smoothed.len() < keywords {
            return Err(CascadeError::Scores {
                got: smoothed.len(),
                keywords,
            });
        }
        if end_ms < self.last_end {
            return Err(CascadeError::Order {
                end_ms,
                last_ms: self.last_end,
            });
        }
        let (keyword, score) = best(&smoothed[..keywords]);
        let candidate_score = self.config.candidate_rule.score(&smoothed[..keywords], score);
        // `>=` as in the research code: false for NaN, so a NaN score is never a candidate.
        let proposes = candidate_score >= self.config.first_stage_threshold;
        if !proposes {
            // Never a candidate (NaN included), whatever the deadline turns out to be.
            self.last_end = end_ms;
            return Ok(None);
        }
        let held = Held {
            keyword,
            score,
            start_ms,
            end_ms,
        };
        if let Some(p) = &self.pending {
            if self.backlog.len() >= self.config.max_backlog {
                return Err(CascadeError::Backlog {
                    pending: p.id,
                    max: self.config.max_backlog,
                });
            }
            self.backlog.push_back(held);
            self.last_end = end_ms;
            return Ok(None);
        }
        self.last_end = end_ms;
        Ok(self.consider(held))
    }

    /// The verdict on the pending candidate `id`: the verifier's probabilities (at least one per
    /// keyword). Applies the decision and replays the held windows.
    pub fn verdict(&mut self, id: u64, probs: &[f32]) -> Result<Resolution, CascadeError> {
        let keywords = self.config.thresholds.len();
        let c = match self.pending {
            Some(c) if c.id == id => c,
            other => {
                return Err(CascadeError::NotPending {
                    got: id,
                    pending: other.map(|c| c.id),
                });
            }
        };
        if probs.len() < keywords {
            return Err(CascadeError::Verdict {
                got: probs.len(),
                keywords,
            });
        }
        self.pending = None;
        let p = probs[c.keyword];
        let event = if p >= self.config.thresholds[c.keyword] {
            self.deadline = c.end_ms.saturating_add(u64::from(self.config.refractory_ms));
            Some(CascadeEvent {
                keyword: c.keyword,
                score: c.score,
                verifier_score: p,
                start_ms: c.start_ms,
                end_ms: c.end_ms,
            })
        } else {
            self.deadline = c.end_ms.saturating_add(u64::from(self.config.reject_gap_ms));
            None
        };
        let mut next = None;
        while let Some(h) = self.backlog.pop_front() {
            next = self.consider(h);
            if next.is_some() {
                break;
            }
        }
        Ok(Resolution { event, next })
    }

    /// A window at or above t1 with no verdict pending.
    fn consider(&mut self, h: Held) -> Option<Candidate> {
        if h.end_ms < self.deadline {
            return None;
        }
        let c = Candidate {
            id: self.next_id,
            keyword: h.keyword,
            score: h.score,
            start_ms: h.start_ms,
            end_ms: h.end_ms,
        };
        self.next_id += 1;
        self.pending = Some(c);
        Some(c)
    }
}

/// Highest score and its index, as numpy's `argmax`: ties go to the lowest index, and the first
/// NaN wins (so a window with a NaN keyword score is never a candidate).
fn best(scores: &[f32]) -> (usize, f32) {
    let mut b = (0, f32::NEG_INFINITY);
    for (i, &s) in scores.iter().enumerate() {
        if s.is_nan() {
            return (i, s);
        }
        if i == 0 || s > b.1 {
            b = (i, s);
        }
    }
    b
}

/// The whole rule offline: every window at once, verdicts from `verify` (called once per candidate,
/// in order). For evaluation and tests; a live stream uses [`Cascade`] directly.
pub fn run_offline(
    config: CascadeConfig,
    windows: impl IntoIterator<Item = (u64, u64, Vec<f32>)>,
    mut verify: impl FnMut(&Candidate) -> Vec<f32>,
) -> Result<Vec<CascadeEvent>, CascadeError> {
    let mut cascade = Cascade::new(config)?;
    let mut events = Vec::new();
    for (start, end, smoothed) in windows {
        let mut next = cascade.push(start, end, &smoothed)?;
        while let Some(c) = next {
            let r = cascade.verdict(c.id, &verify(&c))?;
            events.extend(r.event);
            next = r.next;
        }
    }
    Ok(events)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> CascadeConfig {
        CascadeConfig {
            candidate_rule: CandidateRule::BestKeyword,
            first_stage_threshold: 0.5,
            thresholds: vec![0.5; 4],
            refractory_ms: 1000,
            reject_gap_ms: 200,
            max_backlog: 8,
        }
    }

    #[test]
    fn best_prefers_the_lowest_index_on_ties() {
        assert_eq!(best(&[0.2, 0.7, 0.7, 0.1]), (1, 0.7));
        assert!(best(&[0.9, f32::NAN, 0.3]).1.is_nan());
    }

    #[test]
    fn keyword_mass_proposes_split_windows_for_the_best_keyword() {
        let mass = CascadeConfig {
            candidate_rule: CandidateRule::KeywordMass,
            first_stage_threshold: 0.8,
            ..config()
        };
        let split = [0.05, 0.40, 0.0, 0.45];
        let mut c = Cascade::new(CascadeConfig {
            candidate_rule: CandidateRule::BestKeyword,
            ..mass.clone()
        })
        .unwrap();
        assert_eq!(c.push(0, 1000, &split), Ok(None));
        let mut c = Cascade::new(mass.clone()).unwrap();
        let cand = c.push(0, 1000, &split).unwrap().unwrap();
        // The keyword is still the highest one, with its own score; the verifier judges it.
        assert_eq!((cand.keyword, cand.score), (3, 0.45));
        let r = c.verdict(cand.id, &[0.0, 0.9, 0.0, 0.2]).unwrap();
        assert_eq!(
            r.event, None,
            "the verifier's own best keyword does not relabel the candidate"
        );
        // Summed in f64 in keyword order, then rounded to f32: exactly the research code's value.
        let want = (0.05f32 as f64 + 0.40f32 as f64 + 0.0 + 0.45f32 as f64) as f32;
        assert_eq!(CandidateRule::KeywordMass.score(&split, 0.45), want);
        // A NaN score never proposes, under either rule.
        for rule in [CandidateRule::BestKeyword, CandidateRule::KeywordMass] {
            let mut c = Cascade::new(CascadeConfig {
                candidate_rule: rule,
                ..mass.clone()
            })
            .unwrap();
            assert_eq!(c.push(0, 1000, &[0.9, f32::NAN, 0.9, 0.9]), Ok(None));
        }
    }

    #[test]
    fn rejection_blocks_only_the_gap() {
        // The Python test `test_cascade_rejection_only_blocks_the_reject_gap`, with 4 keywords.
        let mut windows = Vec::new();
        for i in 0..100u64 {
            let mut s = vec![0.0f32; 4];
            if (10..60).contains(&i) {
                s[3] = 0.9;
            }
            windows.push((20 * i, 20 * i + 1000, s));
        }
        let mut calls = Vec::new();
        let events = run_offline(config(), windows, |c| {
            calls.push(c.start_ms / 20);
            let mut p = vec![0.0; 12];
            p[3] = if c.start_ms / 20 >= 40 { 1.0 } else { 0.0 };
            p
        })
        .unwrap();
        assert_eq!(calls, [10, 20, 30, 40]);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].keyword, events[0].start_ms), (3, 800));
    }

    #[test]
    fn late_verdicts_replay_the_backlog() {
        let mut c = Cascade::new(CascadeConfig {
            max_backlog: 12,
            ..config()
        })
        .unwrap();
        let hi = [0.0, 0.9, 0.0, 0.0];
        let cand = c.push(0, 1000, &hi).unwrap();
        assert_eq!(cand.map(|c| c.id), Some(0));
        // Windows while the verdict is pending are held, not decided.
        for i in 1..=12u64 {
            assert_eq!(c.push(20 * i, 1000 + 20 * i, &hi), Ok(None));
        }
        assert_eq!(c.push(260, 1260, &[0.1; 4]), Ok(None));
        assert_eq!(c.backlog(), 12);
        // Rejected: the deadline is 1200, so the window ending at 1200 is the next candidate.
        let r = c.verdict(0, &[0.0; 12]).unwrap();
        assert_eq!(r.event, None);
        let next = r.next.unwrap();
        assert_eq!((next.id, next.end_ms), (1, 1200));
        assert_eq!(c.backlog(), 2);
        assert!(matches!(
            c.verdict(0, &[0.0; 12]),
            Err(CascadeError::NotPending { .. })
        ));
        let r = c.verdict(1, &[0.0, 1.0, 0.0, 0.0]).unwrap();
        assert!(r.event.is_some() && r.next.is_none());
        assert_eq!(c.backlog(), 0);
        assert_eq!(c.pending(), None);
    }

    #[test]
    fn backlog_is_bounded_and_errors_keep_state() {
        let mut c = Cascade::new(config()).unwrap();
        let hi = [0.9, 0.0, 0.0, 0.0];
        assert!(c.push(0, 1000, &hi).is_ok_and(|x| x.is_some()));
        for i in 1..=8u64 {
            assert_eq!(c.push(20 * i, 1000 + 20 * i, &hi), Ok(None));
        }
        assert_eq!(
            c.push(180, 1180, &hi),
            Err(CascadeError::Backlog { pending: 0, max: 8 })
        );
        assert!(matches!(c.push(0, 900, &hi), Err(CascadeError::Order { .. })));
        assert!(matches!(
            c.push(200, 1200, &[0.9]),
            Err(CascadeError::Scores { .. })
        ));
        assert!(matches!(c.verdict(0, &[1.0]), Err(CascadeError::Verdict { .. })));
        assert_eq!(c.backlog(), 8);
        assert!(c.verdict(0, &[1.0; 4]).is_ok_and(|r| r.event.is_some()));
    }

    #[test]
    fn bad_configs_are_refused() {
        for f in [
            |c: &mut CascadeConfig| c.first_stage_threshold = 1.5,
            |c: &mut CascadeConfig| c.thresholds = vec![],
            |c: &mut CascadeConfig| c.thresholds[2] = -0.1,
            |c: &mut CascadeConfig| c.reject_gap_ms = 20_000,
            |c: &mut CascadeConfig| c.max_backlog = 0,
        ] {
            let mut cfg = config();
            f(&mut cfg);
            assert!(matches!(Cascade::new(cfg), Err(CascadeError::Config(_))));
        }
    }
}
