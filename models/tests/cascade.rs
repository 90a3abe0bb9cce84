//! The cascade decision rule (`kws_models::cascade`) against
//! - a golden from the Python research code (`verifier.cascade_events` on two real validation
//!   streams over a grid of first-stage and verifier thresholds, `kws_train.verifier_golden`), and
//! - a direct port of that Python loop (`reference` below) on random sequences (proptest),
//!
//! each time offline (every verdict at once) and live (verdicts arriving after a random number of
//! further windows). Events must be identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::crate_dir;
use kws_models::cascade::{Candidate, CandidateRule, Cascade, CascadeConfig, CascadeEvent, run_offline};
use proptest::prelude::*;
use serde::Deserialize;

/// The Python loop, verbatim: `verify(i)` for window `i`; returns (keyword, window index) events.
/// `mass`: the `keyword_mass` rule (`verifier.candidate_scores`: the keywords' scores summed in f64
/// in keyword order, rounded to f32, compared with t1).
#[allow(clippy::too_many_arguments)]
fn reference(
    scores: &[Vec<f32>],
    end_ms: &[u64],
    mass: bool,
    t1: f32,
    verify: &dyn Fn(usize) -> Vec<f32>,
    v: &[f32],
    refractory_ms: u64,
    reject_gap_ms: u64,
) -> Vec<(usize, usize)> {
    let mut events = Vec::new();
    let mut deadline: i64 = -1;
    for (i, s) in scores.iter().enumerate() {
        // np.argmax over the keywords: first maximum.
        let mut best = 0;
        for k in 1..s.len() {
            if s[k] > s[best] {
                best = k;
            }
        }
        let score = if mass {
            let mut m = 0.0f64;
            for &x in s {
                m += f64::from(x);
            }
            m as f32
        } else {
            s[best]
        };
        if score < t1 || (end_ms[i] as i64) < deadline {
            continue;
        }
        let p = verify(i);
        if p[best] >= v[best] {
            events.push((best, i));
            deadline = (end_ms[i] + refractory_ms) as i64;
        } else {
            deadline = (end_ms[i] + reject_gap_ms) as i64;
        }
    }
    events
}

/// Drive a [`Cascade`] live: the verdict on a candidate arrives only after `delays[n]` more windows
/// (n-th candidate), or at the end of the stream. Returns (keyword, window index) events.
fn live(
    config: CascadeConfig,
    windows: &[(u64, u64, Vec<f32>)],
    verify: &dyn Fn(usize) -> Vec<f32>,
    delays: &[usize],
) -> Vec<(usize, usize)> {
    let index: BTreeMap<u64, usize> = windows.iter().enumerate().map(|(i, w)| (w.1, i)).collect();
    let window_of = |c: &Candidate| index[&c.end_ms];
    let mut cascade = Cascade::new(config).unwrap();
    let mut events = Vec::new();
    let mut due: VecDeque<(usize, Candidate)> = VecDeque::new(); // (deliver after window i, candidate)
    let mut ncand = 0usize;
    let take = |e: Option<CascadeEvent>, events: &mut Vec<(usize, usize)>| {
        if let Some(e) = e {
            events.push((e.keyword, index[&e.end_ms]));
        }
    };
    let mut schedule = |c: Candidate, now: usize, due: &mut VecDeque<(usize, Candidate)>| {
        let d = delays.get(ncand % delays.len().max(1)).copied().unwrap_or(0);
        ncand += 1;
        due.push_back((now + d, c));
    };
    for (i, (start, end, s)) in windows.iter().enumerate() {
        if let Some(c) = cascade.push(*start, *end, s).unwrap() {
            schedule(c, i, &mut due);
        }
        while due.front().is_some_and(|(at, _)| *at <= i) {
            let (_, c) = due.pop_front().unwrap();
            let r = cascade.verdict(c.id, &verify(window_of(&c))).unwrap();
            take(r.event, &mut events);
            if let Some(n) = r.next {
                schedule(n, i, &mut due);
            }
        }
    }
    // End of stream: the remaining verdicts (their clips are cut short by the stream end).
    while let Some((_, c)) = due.pop_front() {
        let r = cascade.verdict(c.id, &verify(window_of(&c))).unwrap();
        take(r.event, &mut events);
        if let Some(n) = r.next {
            due.push_back((0, n));
        }
    }
    assert!(cascade.pending().is_none() && cascade.backlog() == 0);
    events
}

fn offline(
    config: CascadeConfig,
    windows: &[(u64, u64, Vec<f32>)],
    verify: &dyn Fn(usize) -> Vec<f32>,
) -> Vec<(usize, usize)> {
    let index: BTreeMap<u64, usize> = windows.iter().enumerate().map(|(i, w)| (w.1, i)).collect();
    run_offline(config, windows.iter().cloned(), |c| verify(index[&c.end_ms]))
        .unwrap()
        .into_iter()
        .map(|e| (e.keyword, index[&e.end_ms]))
        .collect()
}

#[derive(Debug, Deserialize)]
struct Golden {
    keywords: Vec<String>,
    refractory_ms: u32,
    reject_gap_ms: u32,
    files: Vec<GoldenFile>,
}

#[derive(Debug, Deserialize)]
struct GoldenFile {
    stream: String,
    windows: usize,
    first_start_ms: u64,
    hop_ms: u64,
    window_ms: u64,
    /// [window, [keyword, score], ...]
    scores: Vec<Vec<serde_json::Value>>,
    verifier: BTreeMap<String, Vec<f32>>,
    grid: Vec<GridPoint>,
}

#[derive(Debug, Deserialize)]
struct GridPoint {
    t1: f32,
    v: f32,
    candidates: usize,
    events: Vec<(usize, usize)>,
}

fn golden_windows(f: &GoldenFile, keywords: usize) -> Vec<(u64, u64, Vec<f32>)> {
    let mut w: Vec<(u64, u64, Vec<f32>)> = (0..f.windows as u64)
        .map(|i| {
            let s = f.first_start_ms + i * f.hop_ms;
            (s, s + f.window_ms, vec![0.0; keywords + 2])
        })
        .collect();
    for row in &f.scores {
        let i = row[0].as_u64().unwrap() as usize;
        for ks in &row[1..] {
            let (k, s): (usize, f32) = serde_json::from_value(ks.clone()).unwrap();
            w[i].2[k] = s;
        }
    }
    w
}

#[test]
fn golden_streams_give_the_python_events() {
    let p = crate_dir().join("tests/fixtures/verifier/cascade.json");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let nk = g.keywords.len();
    let mut total = 0;
    for f in &g.files {
        let windows = golden_windows(f, nk);
        let probs: BTreeMap<usize, Vec<f32>> = f
            .verifier
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.clone()))
            .collect();
        for point in &f.grid {
            let calls = std::cell::Cell::new(0usize);
            let verify = |i: usize| {
                calls.set(calls.get() + 1);
                probs
                    .get(&i)
                    .unwrap_or_else(|| panic!("window {i} has no verifier probabilities"))
                    .clone()
            };
            let config = CascadeConfig {
                candidate_rule: CandidateRule::BestKeyword,
                first_stage_threshold: point.t1,
                thresholds: vec![point.v; nk],
                refractory_ms: g.refractory_ms,
                reject_gap_ms: g.reject_gap_ms,
                max_backlog: 100_000,
            };
            let got = offline(config.clone(), &windows, &verify);
            assert_eq!(
                got, point.events,
                "{} t1 {} v {}: offline",
                f.stream, point.t1, point.v
            );
            assert_eq!(
                calls.get(),
                point.candidates,
                "{} t1 {} v {}: candidates",
                f.stream,
                point.t1,
                point.v
            );
            // Live, verdicts 15 windows (300 ms) later, or at varying delays.
            for delays in [&[15usize][..], &[0, 3, 25, 1, 40, 9]] {
                let got = live(config.clone(), &windows, &verify, delays);
                assert_eq!(
                    got, point.events,
                    "{} t1 {} v {}: live {delays:?}",
                    f.stream, point.t1, point.v
                );
            }
            // The port of the Python loop agrees too (so the property test below tests the rule).
            let r = reference(
                &windows.iter().map(|w| w.2[..nk].to_vec()).collect::<Vec<_>>(),
                &windows.iter().map(|w| w.1).collect::<Vec<_>>(),
                false,
                point.t1,
                &verify,
                &vec![point.v; nk],
                u64::from(g.refractory_ms),
                u64::from(g.reject_gap_ms),
            );
            assert_eq!(r, point.events);
            total += point.events.len();
        }
        println!(
            "{}: {} windows, {} grid points",
            f.stream,
            f.windows,
            f.grid.len()
        );
    }
    assert!(total > 100, "the golden must have events ({total})");
}

/// Random streams: a few keywords, bursts of high scores, random verifier probabilities.
fn stream() -> impl Strategy<Value = (Vec<Vec<f32>>, Vec<Vec<f32>>)> {
    (1usize..5, 1usize..300).prop_flat_map(|(nk, n)| {
        let score = prop_oneof![3 => Just(0.0f32), 2 => 0.0f32..1.0, 1 => Just(0.5f32)];
        (
            prop::collection::vec(prop::collection::vec(score, nk), n),
            prop::collection::vec(prop::collection::vec(0.0f32..1.0, nk + 2), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn cascade_equals_the_python_loop(
        (scores, probs) in stream(),
        t1 in prop_oneof![Just(0.5f32), 0.0f32..1.0],
        mass in any::<bool>(),
        v_seed in prop::collection::vec(prop_oneof![Just(0.5f32), 0.0f32..1.0], 4),
        hop in prop_oneof![Just(20u64), 10u64..100],
        refractory in prop_oneof![Just(1000u32), 0u32..3000],
        gap in prop_oneof![Just(200u32), Just(0u32), 0u32..1000],
        delays in prop::collection::vec(0usize..40, 1..6),
    ) {
        let nk = scores[0].len();
        let v: Vec<f32> = (0..nk).map(|k| v_seed[k % v_seed.len()]).collect();
        let windows: Vec<(u64, u64, Vec<f32>)> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| (hop * i as u64, hop * i as u64 + 1000, s.clone()))
            .collect();
        let verify = |i: usize| probs[i].clone();
        let end: Vec<u64> = windows.iter().map(|w| w.1).collect();
        let want = reference(&scores, &end, mass, t1, &verify, &v, u64::from(refractory), u64::from(gap));
        let config = CascadeConfig {
            candidate_rule: if mass { CandidateRule::KeywordMass } else { CandidateRule::BestKeyword },
            first_stage_threshold: t1,
            thresholds: v,
            refractory_ms: refractory,
            reject_gap_ms: gap,
            max_backlog: 100_000,
        };
        prop_assert_eq!(&offline(config.clone(), &windows, &verify), &want);
        prop_assert_eq!(&live(config, &windows, &verify, &delays), &want);
    }
}
