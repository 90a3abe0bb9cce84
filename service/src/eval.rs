//! Live evaluation of labelled and known-negative streams at every threshold of a grid.
//!
//! The matching rule and grid decoding are `kws_models::eval` (shared with `kws-client eval`); this
//! module keeps a stream's labels and events and exports the counters when the stream ends (labels
//! may arrive after the audio they describe). On a known-negative stream every event is a false alarm.
//!
//! With a cascade (a model with a verifier), the grid measures the **first stage** alone: its
//! smoothed scores decoded at each grid threshold, as without a verifier (so the grid stays
//! comparable across models and shows what the first stage proposes); the verifier runs only on
//! the stream's own candidates and has no grid. The stream's own evaluation (`Summary.evaluation`:
//! hits, misses, false alarms) counts the events the stream was sent, i.e. the cascade's.

use kws_models::WindowMeta;
use kws_models::eval::{GridDecoder, Label, event_time, match_events};
use kws_proto::v1;

use crate::telemetry::names;

/// Default of `evaluation.max_grid_events`: at most this many grid events (one per firing per grid
/// threshold, 16 bytes each) are kept per stream, and as many of the stream's own events: ≤ 64 KB per
/// stream with `Vec` growth slack. Every stream collects them (labels may arrive after the audio they
/// describe), so this is memory every long stream ends up holding. A keyword-dense stream fires ~19
/// grid thresholds per keyword, so it reaches the cap after ~100 keywords (the soak's streams: ~2.5
/// min); beyond it the grid and the stream's own events stop collecting (so nothing grows for the
/// rest of a long stream), `kws_eval_truncated_streams_total` counts the stream when it is evaluated,
/// and its counters and summary cover only the audio and the labels before that point. Labelled
/// corpora (`kws-client eval`) stream one file at a time, far below the cap.
pub const MAX_GRID_EVENTS: usize = 2_000;
/// At most this many labels per stream.
pub const MAX_LABELS: usize = 100_000;

/// Server-wide evaluation settings.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub tolerance_ms: u64,
    pub grid: Vec<f32>,
    /// The grid as metric label values ("0.05", ..., "0.9995"; `threshold_label`), formatted once.
    pub grid_labels: Vec<String>,
    /// Grid events (and own events) kept per stream.
    pub max_grid_events: usize,
}

impl EvalSettings {
    pub fn new(tolerance_ms: u64, grid: Vec<f32>) -> Self {
        let grid_labels = grid
            .iter()
            .map(|&t| kws_models::eval::threshold_label(t))
            .collect();
        Self {
            tolerance_ms,
            grid,
            grid_labels,
            max_grid_events: MAX_GRID_EVENTS,
        }
    }

    /// The same with another per-stream cap of grid events.
    pub fn with_max_grid_events(mut self, n: usize) -> Self {
        self.max_grid_events = n;
        self
    }
}

/// Per-stream evaluation state.
#[derive(Debug)]
pub struct Evaluator {
    grid: GridDecoder,
    grid_labels: Vec<String>,
    tolerance_ms: u64,
    keywords: Vec<usize>,
    keyword_names: Vec<String>,
    known_negative: bool,
    labels: Vec<Label>,
    /// The stream's own events (at its thresholds): (class, time).
    own: Vec<(usize, u64)>,
    max_events: usize,
    /// End of the last window evaluated (all of them until the grid is truncated).
    covered_ms: u64,
}

impl Evaluator {
    /// A stream of a model whose keywords are `keyword_names`, with `keywords` enabled (class
    /// indices, ascending) and the decoder's `refractory_ms`; `known_negative` streams count every
    /// event as a false alarm.
    pub fn new(
        settings: &EvalSettings,
        keyword_names: &[String],
        keywords: &[usize],
        refractory_ms: u32,
        known_negative: bool,
    ) -> Self {
        Self {
            grid: GridDecoder::new(&settings.grid, keywords, refractory_ms, settings.max_grid_events),
            grid_labels: settings.grid_labels.clone(),
            tolerance_ms: settings.tolerance_ms,
            keywords: keywords.to_vec(),
            keyword_names: keyword_names.to_vec(),
            known_negative,
            labels: Vec::new(),
            own: Vec::new(),
            max_events: settings.max_grid_events,
            covered_ms: 0,
        }
    }

    /// Keep a label; false if the per-stream maximum is reached.
    pub fn add_label(&mut self, l: Label) -> bool {
        if self.labels.len() >= MAX_LABELS {
            return false;
        }
        self.labels.push(l);
        true
    }

    /// The first label that ends after `audio_ms` (the stream's audio, rounded up), described for an
    /// error message; such a stream is refused at its end and not evaluated.
    pub fn label_beyond(&self, audio_ms: u64) -> Option<String> {
        self.labels.iter().find(|l| l.end_ms > audio_ms).map(|l| {
            format!(
                "label {:?} [{}, {}] ms ends after the audio",
                self.keyword_names.get(l.class).map(String::as_str).unwrap_or("?"),
                l.start_ms,
                l.end_ms
            )
        })
    }

    /// Feed one window's smoothed posteriors and the keyword the stream's decoder fired on it, if any.
    pub fn observe(&mut self, w: &WindowMeta, smoothed: &[f32], fired: Option<usize>) {
        // Once the grid is full, the stream's own events stop too: both cover the same audio, and
        // nothing grows for the rest of a long stream.
        if self.grid.truncated() {
            return;
        }
        self.covered_ms = w.end_ms;
        if let Some(k) = fired
            && self.own.len() < self.max_events
        {
            self.own.push((k, event_time(w.start_ms, w.end_ms)));
        }
        self.grid.observe(w, smoothed);
    }

    /// An event of the stream's cascade (decided by a verdict, after its window was observed).
    pub fn own_event(&mut self, class: usize, start_ms: u64, end_ms: u64) {
        if !self.grid.truncated() && end_ms <= self.covered_ms && self.own.len() < self.max_events {
            self.own.push((class, event_time(start_ms, end_ms)));
        }
    }

    /// End of stream: export the grid counters and return this stream's own evaluation (None unless
    /// the stream was labelled or known negative). Labels beyond the audio are refused before this
    /// ([`label_beyond`](Self::label_beyond)).
    pub fn finish(&mut self, audio_ms: u64, model: &str) -> Option<v1::StreamEvaluation> {
        if !self.known_negative && self.labels.is_empty() {
            return None;
        }
        let mut audio_ms = audio_ms;
        if self.grid.truncated() {
            metrics::counter!(names::EVAL_TRUNCATED, "model" => model.to_string()).increment(1);
            tracing::warn!(
                max = self.max_events,
                evaluated_ms = self.covered_ms,
                "evaluation grid truncated: only the first part of the stream is evaluated"
            );
            // Count only the audio and the labels the truncated grid covers (a later label would
            // count as a miss).
            audio_ms = audio_ms.min(self.covered_ms);
            let covered = self.covered_ms;
            self.labels.retain(|l| l.end_ms <= covered);
        }
        let labels: &[Label] = if self.known_negative { &[] } else { &self.labels };
        let kind = if self.known_negative {
            "negative"
        } else {
            "labelled"
        };
        metrics::gauge!(names::EVAL_AUDIO, "model" => model.to_string(), "kind" => kind)
            .increment(audio_ms as f64 / 1000.0);
        let n = self.keyword_names.len();
        for (g, label) in self.grid_labels.iter().enumerate() {
            let c = match_events(self.grid.events(g), labels, n, self.tolerance_ms);
            for &k in &self.keywords {
                let lbl = [
                    ("model", model.to_string()),
                    ("keyword", self.keyword_names[k].clone()),
                    ("threshold", label.clone()),
                ];
                // Zero increments too: every (keyword, threshold) series exists once a stream was evaluated.
                metrics::counter!(names::EVAL_TP, &lbl).increment(c.tp[k]);
                let fp_lbl = [
                    lbl[0].clone(),
                    lbl[1].clone(),
                    lbl[2].clone(),
                    ("kind", kind.to_string()),
                ];
                metrics::counter!(names::EVAL_FP, &fp_lbl).increment(c.fp[k]);
                metrics::counter!(names::EVAL_FN, &lbl).increment(c.fn_[k]);
            }
        }
        let own = match_events(&self.own, labels, n, self.tolerance_ms);
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
    use kws_models::Manifest;

    use super::*;

    #[test]
    fn a_truncated_grid_evaluates_only_what_it_covers() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tc-resnet8");
        let m = Manifest::load(&dir).expect("manifest");
        let keywords: Vec<usize> = (0..m.keywords.len()).collect();
        // One grid event fills the grid: the stream is evaluated up to its first window.
        let settings = EvalSettings::new(500, vec![0.5]).with_max_grid_events(1);
        let mut e = Evaluator::new(&settings, &m.keywords, &keywords, m.decoder.refractory_ms, false);
        let label = |start_ms, end_ms| Label {
            class: 0,
            start_ms,
            end_ms,
        };
        assert!(e.add_label(label(0, 1000)) && e.add_label(label(9000, 10_000)));
        let mut smoothed = vec![0.0; m.num_classes()];
        smoothed[0] = 0.9;
        let w = |seq, end_ms| WindowMeta {
            seq,
            start_ms: end_ms - 1000,
            end_ms,
        };
        e.observe(&w(0, 1000), &smoothed, Some(0));
        for (i, end) in (2000..=10_000).step_by(1000).enumerate() {
            e.observe(&w(i as u64 + 1, end), &smoothed, Some(0));
        }
        assert_eq!(
            (e.own.len(), e.covered_ms),
            (1, 1000),
            "nothing kept after the grid is full"
        );
        let s = e.finish(10_000, "m").expect("labelled: evaluated");
        // The label at 9-10 s lies beyond what was evaluated: neither a hit nor a miss.
        assert_eq!((s.labels, s.hits, s.misses, s.false_alarms), (1, 1, 0, 0));
    }
}
