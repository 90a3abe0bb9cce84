//! Evaluation against ground truth: the matching rule and decoding at every threshold of a grid.
//! Shared by the service (live counters) and the client (`kws-client eval`), so both count alike.
//!
//! Matching rule: an event's time is the centre of its window (`(start_ms + end_ms) / 2`, where
//! training places the words). Events are taken in time order; an event matches the earliest
//! still-unmatched label of the same keyword whose span, widened by `tolerance_ms` on both sides,
//! contains the event's time. Each label matches at most one event. Unmatched events are false alarms
//! (FP); unmatched labels are misses (FN). A false alarm whose time falls inside the widened span of a
//! label of another keyword is also counted as a confusion.
//!
//! Grid decoding: the stream's smoothed posteriors are decoded once per grid threshold `t` with every
//! enabled keyword at threshold `t` and the stream's own refractory period (the decoder's rule from
//! [`crate::decoder`], applied to already-smoothed scores).

use crate::spotter::WindowMeta;

/// A ground-truth keyword occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// Keyword index (= class index).
    pub class: usize,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Per-keyword counts of one matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: Vec<u64>,
    pub fp: Vec<u64>,
    pub fn_: Vec<u64>,
    pub confusions: u64,
}

/// A threshold as text, for metric labels and tables: two decimals at least, up to four when they
/// matter ("0.30", "0.95", "0.997", "0.9995"), so the streaming thresholds near 1 stay apart (with
/// two decimals 0.995 and 0.999 would both be "1.00"). The service's `threshold` label and
/// `kws-client`'s tables use it; deploy/generate.py mirrors it.
pub fn threshold_label(t: f32) -> String {
    let mut s = format!("{:.4}", f64::from(t));
    while s.ends_with('0') && s.len() > s.find('.').map_or(0, |d| d + 3) {
        s.pop();
    }
    s
}

/// The time an event is matched at: the centre of its window.
pub fn event_time(start_ms: u64, end_ms: u64) -> u64 {
    (start_ms + end_ms) / 2
}

/// Match events `(class, time_ms)` (any order) against `labels` for a model with `keywords` keywords.
/// Allocates copies to sort.
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

/// Decodes a stream's smoothed posteriors at every threshold of a grid at once.
#[derive(Debug, Clone)]
pub struct GridDecoder {
    grid: Vec<f32>,
    /// Grid indices by ascending threshold (the service's grid is ascending already; a caller's
    /// grid need not be).
    ascending: Vec<usize>,
    /// The lowest grid threshold: a window whose keywords all score below it fires nowhere.
    floor: f32,
    keywords: Vec<usize>,
    refractory_ms: u64,
    deadlines: Vec<u64>,
    /// Per grid point: (class, event time).
    events: Vec<Vec<(usize, u64)>>,
    max_events: usize,
    /// Events over all grid points.
    stored: usize,
    truncated: bool,
}

impl GridDecoder {
    /// `keywords`: enabled keyword indices; at most `max_events` events are kept over all grid points.
    pub fn new(grid: &[f32], keywords: &[usize], refractory_ms: u32, max_events: usize) -> Self {
        let mut ascending: Vec<usize> = (0..grid.len()).collect();
        ascending.sort_by(|&a, &b| grid[a].total_cmp(&grid[b]));
        let floor = ascending.first().map_or(f32::INFINITY, |&g| grid[g]);
        Self {
            grid: grid.to_vec(),
            ascending,
            floor,
            keywords: keywords.to_vec(),
            refractory_ms: u64::from(refractory_ms),
            deadlines: vec![0; grid.len()],
            events: vec![Vec::new(); grid.len()],
            max_events,
            stored: 0,
            truncated: false,
        }
    }

    /// Feed one window's smoothed posteriors (all classes, as from [`crate::Spotter::smoothed`]).
    ///
    /// At grid threshold `t` the window fires the best-scoring enabled keyword among those scoring
    /// at least `t`, unless that point is in its refractory period. That keyword is the same for
    /// every `t` up to the window's best score (the first best in keyword order), so it is found
    /// once, and only the grid points at or below that score are visited: a window below the
    /// lowest threshold (most windows of most streams) costs one pass over the keywords.
    pub fn observe(&mut self, w: &WindowMeta, smoothed: &[f32]) {
        if self.truncated {
            return;
        }
        let mut best: Option<(usize, f32)> = None;
        for &k in &self.keywords {
            let s = smoothed.get(k).copied().unwrap_or(0.0);
            if s >= self.floor && best.is_none_or(|(_, b)| s > b) {
                best = Some((k, s));
            }
        }
        let Some((k, score)) = best else {
            return;
        };
        let time = event_time(w.start_ms, w.end_ms);
        for &g in &self.ascending {
            if self.grid[g] > score {
                break;
            }
            if w.end_ms >= self.deadlines[g] {
                self.deadlines[g] = w.end_ms + self.refractory_ms;
                self.events[g].push((k, time));
                self.stored += 1;
            }
        }
        if self.stored >= self.max_events {
            self.truncated = true;
        }
    }

    /// True if `max_events` was reached and later windows were ignored.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn grid(&self) -> &[f32] {
        &self.grid
    }

    /// Events at grid point `g`: (class, time_ms).
    pub fn events(&self, g: usize) -> &[(usize, u64)] {
        &self.events[g]
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

    /// The rule in its plain form: each grid point on its own, every keyword compared at every point.
    fn naive_grid(
        grid: &[f32],
        keywords: &[usize],
        refractory_ms: u64,
        windows: &[(WindowMeta, Vec<f32>)],
    ) -> Vec<Vec<(usize, u64)>> {
        let mut deadlines = vec![0; grid.len()];
        let mut events = vec![Vec::new(); grid.len()];
        for (w, smoothed) in windows {
            for (g, &t) in grid.iter().enumerate() {
                if w.end_ms < deadlines[g] {
                    continue;
                }
                let mut best: Option<(usize, f32)> = None;
                for &k in keywords {
                    let s = smoothed.get(k).copied().unwrap_or(0.0);
                    if s >= t && best.is_none_or(|(_, b)| s > b) {
                        best = Some((k, s));
                    }
                }
                if let Some((k, _)) = best {
                    deadlines[g] = w.end_ms + refractory_ms;
                    events[g].push((k, event_time(w.start_ms, w.end_ms)));
                }
            }
        }
        events
    }

    #[test]
    fn grid_matches_the_plain_rule_on_random_streams() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Ascending (the service's), unsorted, and with a point repeated.
        let grids: [&[f32]; 3] = [
            &[0.05, 0.3, 0.5, 0.9, 0.99, 0.999],
            &[0.9, 0.2, 0.6, 0.99],
            &[0.5, 0.5, 0.7],
        ];
        for grid in grids {
            for keywords in [vec![0, 1, 2, 3], vec![1, 3]] {
                // Scores from a few levels, so ties between keywords and scores equal to a grid
                // point happen often; long and short runs above the thresholds.
                let levels = [0.0, 0.04, 0.05, 0.2, 0.5, 0.5, 0.6, 0.9, 0.99, 0.995, 0.999, 1.0];
                let windows: Vec<(WindowMeta, Vec<f32>)> = (0..3000u64)
                    .map(|i| {
                        let w = WindowMeta {
                            seq: i,
                            start_ms: i * 20,
                            end_ms: i * 20 + 980,
                        };
                        let quiet = next() % 3 == 0;
                        let s = (0..5)
                            .map(|_| {
                                if quiet {
                                    0.01
                                } else {
                                    levels[(next() % levels.len() as u64) as usize]
                                }
                            })
                            .collect();
                        (w, s)
                    })
                    .collect();
                let mut g = GridDecoder::new(grid, &keywords, 300, usize::MAX);
                for (w, s) in &windows {
                    g.observe(w, s);
                }
                let want = naive_grid(grid, &keywords, 300, &windows);
                assert!(want.iter().map(Vec::len).sum::<usize>() > 100, "the streams fire");
                for (i, events) in want.iter().enumerate() {
                    assert_eq!(
                        g.events(i),
                        events.as_slice(),
                        "grid {grid:?} point {i}, keywords {keywords:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn grid_decodes_each_threshold_with_refractory() {
        let mut g = GridDecoder::new(&[0.3, 0.6, 0.9], &[0, 1], 1000, 1000);
        let scores = [0.0, 0.4, 0.7, 0.4, 0.0];
        for (i, s) in scores.iter().enumerate() {
            let w = WindowMeta {
                seq: i as u64,
                start_ms: i as u64 * 20,
                end_ms: i as u64 * 20 + 1000,
            };
            g.observe(&w, &[*s, 0.0, 0.5]);
        }
        assert_eq!(g.events(0), &[(0, 520)], "fires at 0.4, then refractory");
        assert_eq!(g.events(1), &[(0, 540)]);
        assert!(g.events(2).is_empty());
    }
}
