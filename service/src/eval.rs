//! Live evaluation of labelled and known-negative streams at every threshold of a grid.
//!
//! Matching rule (README § Evaluation): an event's time is the centre of its window
//! (`(start_ms + end_ms) / 2`, where training places the words). Events are taken in time order; an
//! event matches the earliest still-unmatched label of the same keyword whose span, widened by the
//! tolerance on both sides, contains the event's time. Each label matches at most one event.
//! Unmatched events are false alarms (FP); unmatched labels are misses (FN). A false alarm whose
//! time falls inside the widened span of a label of another keyword also counts as a confusion.
//! On a known-negative stream every event is a false alarm.
//!
//! The grid: the stream's smoothed posteriors are decoded once per grid threshold `t` (every enabled
//! keyword at threshold `t`, the stream's own smoothing and refractory), which is what gives
//! precision/recall-vs-threshold and DET curves from live traffic. Counters are exported at the end
//! of the stream (labels may arrive after the audio they describe).

use kws_models::{Manifest, WindowMeta};
use kws_proto::v1;

use crate::session::Resolved;
use crate::telemetry::names;

/// At most this many grid events are kept per stream (~2.4 MB); beyond it the grid stops collecting
/// and the stream's counters cover only the audio before that point.
pub const MAX_GRID_EVENTS: usize = 100_000;
/// At most this many labels per stream.
pub const MAX_LABELS: usize = 100_000;

/// Server-wide evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub tolerance_ms: u64,
    pub grid: Vec<f32>,
    /// The grid as metric label values ("0.05", ...), formatted once.
    pub grid_labels: Vec<String>,
}

impl EvalSettings {
    pub fn new(tolerance_ms: u64, grid: Vec<f32>) -> Self {
        let grid_labels = grid.iter().map(|t| format!("{t:.2}")).collect();
        Self {
            tolerance_ms,
            grid,
            grid_labels,
        }
    }
}

/// A ground-truth keyword occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub class: usize,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Label {
    pub fn from_proto(l: &v1::Label, m: &Manifest) -> Result<Self, String> {
        let class = m.keyword_index(&l.keyword).ok_or_else(|| {
            format!(
                "label keyword {:?} is not one of {}",
                l.keyword,
                m.keywords.join(", ")
            )
        })?;
        if l.end_ms < l.start_ms {
            return Err(format!(
                "label end_ms {} is before start_ms {}",
                l.end_ms, l.start_ms
            ));
        }
        if l.end_ms - l.start_ms > 10_000 {
            return Err(format!(
                "label spans {} ms; a keyword label must span at most 10000 ms",
                l.end_ms - l.start_ms
            ));
        }
        Ok(Self {
            class,
            start_ms: l.start_ms,
            end_ms: l.end_ms,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GridEvent {
    class: u8,
    grid: u8,
    time_ms: u64,
}

/// Counts of one matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: Vec<u64>,
    pub fp: Vec<u64>,
    pub fn_: Vec<u64>,
    pub confusions: u64,
}

/// Match events `(class, time_ms)` (any order) against labels; per-keyword TP/FP/FN.
pub fn match_events(events: &[(usize, u64)], labels: &[Label], keywords: usize, tolerance_ms: u64) -> Counts {
    let mut events = events.to_vec();
    events.sort_by_key(|&(c, t)| (t, c));
    let mut labels = labels.to_vec();
    labels.sort_by_key(|l| (l.start_ms, l.end_ms, l.class));
    let mut matched = vec![false; labels.len()];
    let mut c = Counts {
        tp: vec![0; keywords],
        fp: vec![0; keywords],
        fn_: vec![0; keywords],
        confusions: 0,
    };
    let widened =
        |l: &Label, t: u64| l.start_ms.saturating_sub(tolerance_ms) <= t && t <= l.end_ms + tolerance_ms;
    for &(class, t) in &events {
        let hit = labels
            .iter()
            .enumerate()
            .position(|(i, l)| !matched[i] && l.class == class && widened(l, t));
        match hit {
            Some(i) => {
                matched[i] = true;
                c.tp[class] += 1;
            }
            None => {
                c.fp[class] += 1;
                if labels.iter().any(|l| l.class != class && widened(l, t)) {
                    c.confusions += 1;
                }
            }
        }
    }
    for (l, m) in labels.iter().zip(&matched) {
        if !m {
            c.fn_[l.class] += 1;
        }
    }
    c
}

/// Per-stream evaluation state. Inactive (and free) unless the stream is labelled or known negative.
#[derive(Debug)]
pub struct Evaluator {
    grid: Vec<f32>,
    grid_labels: Vec<String>,
    tolerance_ms: u64,
    keywords: Vec<usize>,
    keyword_names: Vec<String>,
    known_negative: bool,
    refractory_ms: u64,
    /// Per grid point: the refractory deadline.
    deadlines: Vec<u64>,
    grid_events: Vec<GridEvent>,
    truncated: bool,
    labels: Vec<Label>,
    /// The stream's own events (at its thresholds): (class, time).
    own: Vec<(usize, u64)>,
}

impl Evaluator {
    pub fn new(settings: &EvalSettings, m: &Manifest, r: &Resolved) -> Self {
        Self {
            grid: settings.grid.clone(),
            grid_labels: settings.grid_labels.clone(),
            tolerance_ms: settings.tolerance_ms,
            keywords: r.keywords.clone(),
            keyword_names: m.keywords.clone(),
            known_negative: r.known_negative,
            refractory_ms: u64::from(r.stream.decoder.refractory_ms),
            deadlines: vec![0; settings.grid.len()],
            grid_events: Vec::new(),
            truncated: false,
            labels: Vec::new(),
            own: Vec::new(),
        }
    }

    pub fn add_label(&mut self, l: Label) {
        if self.labels.len() < MAX_LABELS {
            self.labels.push(l);
        }
    }

    /// Feed one window's smoothed posteriors and the event the stream's decoder fired on it, if any
    /// (called for every window, labelled or not: labels may come later). Allocation-free but for the
    /// event lists.
    pub fn observe(&mut self, w: &WindowMeta, smoothed: &[f32], fired: Option<usize>) {
        let time = (w.start_ms + w.end_ms) / 2;
        if let Some(k) = fired
            && self.own.len() < MAX_GRID_EVENTS
        {
            self.own.push((k, time));
        }
        if self.truncated {
            return;
        }
        for (g, &t) in self.grid.iter().enumerate() {
            if w.end_ms < self.deadlines[g] {
                continue;
            }
            let mut best: Option<(usize, f32)> = None;
            for &k in &self.keywords {
                if smoothed[k] >= t && best.is_none_or(|(_, s)| smoothed[k] > s) {
                    best = Some((k, smoothed[k]));
                }
            }
            if let Some((k, _)) = best {
                self.deadlines[g] = w.end_ms + self.refractory_ms;
                self.grid_events.push(GridEvent {
                    class: k as u8,
                    grid: g as u8,
                    time_ms: time,
                });
                if self.grid_events.len() >= MAX_GRID_EVENTS {
                    self.truncated = true;
                    tracing::warn!("evaluation grid truncated at {MAX_GRID_EVENTS} events");
                    return;
                }
            }
        }
    }

    fn active(&self) -> bool {
        self.known_negative || !self.labels.is_empty()
    }

    /// End of stream: export the grid counters and return this stream's own evaluation (None if the
    /// stream was neither labelled nor known negative).
    pub fn finish(&mut self, audio_ms: u64, model: &str) -> Option<v1::StreamEvaluation> {
        if !self.active() {
            return None;
        }
        let labels: Vec<Label> = if self.known_negative {
            Vec::new()
        } else {
            self.labels.clone()
        };
        let kind = if self.known_negative {
            "negative"
        } else {
            "labelled"
        };
        metrics::gauge!(names::EVAL_AUDIO, "model" => model.to_string(), "kind" => kind)
            .increment(audio_ms as f64 / 1000.0);
        let n = self.keyword_names.len();
        for (g, label) in self.grid_labels.iter().enumerate() {
            let events: Vec<(usize, u64)> = self
                .grid_events
                .iter()
                .filter(|e| usize::from(e.grid) == g)
                .map(|e| (usize::from(e.class), e.time_ms))
                .collect();
            let c = match_events(&events, &labels, n, self.tolerance_ms);
            for &k in &self.keywords {
                let kw = self.keyword_names[k].clone();
                let lbl = [
                    ("model", model.to_string()),
                    ("keyword", kw),
                    ("threshold", label.clone()),
                ];
                // Zero increments too: every (keyword, threshold) series exists once a stream was evaluated.
                metrics::counter!(names::EVAL_TP, &lbl).increment(c.tp[k]);
                metrics::counter!(names::EVAL_FP, &lbl).increment(c.fp[k]);
                metrics::counter!(names::EVAL_FN, &lbl).increment(c.fn_[k]);
            }
        }
        let own = match_events(&self.own, &labels, n, self.tolerance_ms);
        Some(v1::StreamEvaluation {
            labels: labels.len() as u64,
            hits: own.tp.iter().sum(),
            misses: own.fn_.iter().sum(),
            false_alarms: own.fp.iter().sum(),
            confusions: own.confusions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(class: usize, s: u64, e: u64) -> Label {
        Label {
            class,
            start_ms: s,
            end_ms: e,
        }
    }

    #[test]
    fn matching_rule() {
        let labels = [l(0, 1000, 1500), l(1, 3000, 3400), l(0, 6000, 6400)];
        let events = [
            (0, 1900), // within 1000-1500 widened by 500: hit
            (0, 2100), // second event for an already matched label: FP
            (2, 3200), // other keyword inside label 1's span: FP + confusion
            (0, 9000), // far from everything: FP
        ];
        let c = match_events(&events, &labels, 3, 500);
        assert_eq!(c.tp, vec![1, 0, 0]);
        assert_eq!(c.fp, vec![2, 0, 1]);
        assert_eq!(c.fn_, vec![1, 1, 0], "label 1 and the second 'yes' missed");
        assert_eq!(c.confusions, 1);
    }

    #[test]
    fn each_label_matches_at_most_one_event_and_earliest_first() {
        let labels = [l(0, 1000, 1200), l(0, 1400, 1600)];
        let c = match_events(&[(0, 1300), (0, 1350)], &labels, 1, 500);
        assert_eq!((c.tp[0], c.fp[0], c.fn_[0]), (2, 0, 0));
    }
}
