//! The cascade inside a `Spotter` (`kws_models::two_stage`) on real audio with the fixture
//! manifest (TC-ResNet8 fp32 + the research verifier head, `tests/fixtures/verifier/`):
//! - a reference computed independently: first-stage windows of the whole stream, then
//!   `cascade::run_offline` with clips sliced from the whole stream in memory;
//! - `Spotter::process_with` (verdicts at once) and a live driver (chunks of several sizes, window
//!   scores and verdicts arriving late, within `audio_room`) must give the same events, bit for bit;
//! - the golden stream starts with a keyword (its clip is cut at the stream start, lead > 0) and a
//!   truncated copy ends right after one (its clip is cut at the stream end).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::path::PathBuf;

use common::*;
use kws_models::cascade::{CascadeEvent, run_offline};
use kws_models::verifier::{Clip, ClipRange, EMB_HOP_SAMPLES, MIN_CLIP_SAMPLES};
use kws_models::{
    DecoderOverrides, Event, Manifest, OnnxScorer, PcmFormat, ReadyClip, Scorer, ScorerOptions, Spotter,
    StreamConfig, Verifier, WindowBatch, WindowMeta,
};

fn fixture_dir() -> PathBuf {
    crate_dir().join("tests").join("fixtures").join("verifier")
}

struct Models {
    manifest: Manifest,
    scorer: OnnxScorer,
    verifier: Verifier,
}

fn models() -> Models {
    ort();
    let manifest = Manifest::load(fixture_dir()).unwrap();
    let scorer = OnnxScorer::new(&manifest, "fp32", &ScorerOptions::default()).unwrap();
    let verifier = Verifier::from_manifest(&manifest, &ScorerOptions::default()).unwrap();
    Models {
        manifest,
        scorer,
        verifier,
    }
}

/// The golden stream of TC-ResNet8 (5.5 s: "yes" at 0.06 s, "stop", "left" at ~4 s).
fn golden_stream() -> Vec<f32> {
    read_wav(&model_dir("tc-resnet8").join("golden").join("stream.wav"))
}

fn s16(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| ((v * 32768.0).round() as i16).to_le_bytes())
        .collect()
}

/// The stream config of the fixture manifest with every verdict threshold at `v`.
fn config(m: &Manifest, v: f32) -> StreamConfig {
    let mut c = StreamConfig::from_manifest(m, PcmFormat::native_s16());
    c.cascade.as_mut().unwrap().config.thresholds = vec![v; m.keywords.len()];
    c
}

/// An event as a comparable tuple: (keyword, start, end, first-stage score bits, verifier score bits).
type Key = (usize, u64, u64, u32, u32);

/// The events as comparable tuples: (keyword, start, end, first-stage score, verifier score).
fn key(e: &Event) -> Key {
    (
        e.class,
        e.start_ms,
        e.end_ms,
        e.score.to_bits(),
        e.verifier_score.expect("a cascade event").to_bits(),
    )
}

fn key_cascade(e: &CascadeEvent) -> Key {
    (
        e.keyword,
        e.start_ms,
        e.end_ms,
        e.score.to_bits(),
        e.verifier_score.to_bits(),
    )
}

/// The reference: every window's smoothed scores from a first-stage-only run, then the offline
/// rule with clips cut from the whole stream (end of stream: the samples that exist; a view wholly
/// beyond them repeats the stream's last embedding). Returns the events and the clips verified.
fn reference(models: &mut Models, config: &StreamConfig, audio: &[f32]) -> (Vec<Key>, Vec<ClipRange>) {
    let cascade = config.cascade.clone().unwrap();
    let mut first = config.clone();
    first.cascade = None;
    let mut spotter = Spotter::new(first, models.manifest.num_classes()).unwrap();
    let mut batch = WindowBatch::new();
    spotter.push_pcm(&s16(audio), &mut batch).unwrap();
    spotter.finish(&mut batch).unwrap();
    let mut windows = Vec::new();
    spotter
        .score_windows(
            &mut models.scorer,
            None,
            &batch,
            |w, s| windows.push((w.start_ms, w.end_ms, s.to_vec())),
            |_| {},
        )
        .unwrap();
    let stream: Vec<f32> = audio.iter().map(|v| (v * 32768.0).round() / 32768.0).collect();
    let view = cascade.clip_embeddings;
    let mut ranges = Vec::new();
    let verifier = &mut models.verifier;
    let events = run_offline(cascade.config.clone(), windows, |c| {
        let r = cascade.view(c.start_ms, c.end_ms).clip();
        let mut clip = r.slice(&stream);
        let mut range = r;
        if clip.audio.len() < MIN_CLIP_SAMPLES {
            let last = (stream.len() - MIN_CLIP_SAMPLES) / EMB_HOP_SAMPLES * EMB_HOP_SAMPLES;
            clip = Clip {
                audio: &stream[last..last + MIN_CLIP_SAMPLES],
                lead: view - 1,
            };
            range = ClipRange {
                start: last as u64,
                end: (last + MIN_CLIP_SAMPLES) as u64,
                lead: view - 1,
            };
        } else {
            range.end = range.end.min(stream.len() as u64);
        }
        ranges.push(range);
        verifier.score_clips(&[clip]).unwrap()[0].to_vec()
    })
    .unwrap();
    (events.iter().map(key_cascade).collect(), ranges)
}

/// How a live stream is driven: audio chunks (frames, cycled), window scores applied
/// `score_lag` chunks after their audio, verdicts delivered `verdict_lag` chunks after their clip.
#[derive(Debug, Clone, Copy)]
struct Live {
    chunks: &'static [usize],
    score_lag: usize,
    verdict_lag: usize,
}

/// Drive a cascaded Spotter the way the service does (asynchronous scoring and verification),
/// feeding audio only while `audio_room` allows. Returns the events and the clips handed out.
fn live(models: &mut Models, config: &StreamConfig, audio: &[f32], how: Live) -> (Vec<Key>, Vec<ReadyClip>) {
    let classes = models.manifest.num_classes();
    let mut spotter = Spotter::new(config.clone(), classes).unwrap();
    let bytes = s16(audio);
    // Scored windows waiting to be applied: (due at step, window, probs).
    let mut windows: VecDeque<(usize, WindowMeta, Vec<f32>)> = VecDeque::new();
    // The clip handed out and when its verdict arrives.
    let mut verdict: Option<(usize, ReadyClip, Vec<f32>)> = None;
    let mut events = Vec::new();
    let mut clips = Vec::new();
    let mut step = 0usize;
    let mut pos = 0usize;
    let deliver = |spotter: &mut Spotter,
                   windows: &mut VecDeque<(usize, WindowMeta, Vec<f32>)>,
                   verdict: &mut Option<(usize, ReadyClip, Vec<f32>)>,
                   events: &mut Vec<Key>,
                   clips: &mut Vec<ReadyClip>,
                   verifier: &mut Verifier,
                   now: usize,
                   force: bool| {
        loop {
            let mut progressed = false;
            if verdict.as_ref().is_some_and(|(at, _, _)| *at <= now || force) {
                let (_, clip, probs) = verdict.take().unwrap();
                if let Some(e) = spotter.verdict(clip.candidate.id, &probs).unwrap() {
                    events.push(key(&e));
                }
                clips.push(clip);
                progressed = true;
            }
            while windows.front().is_some_and(|(at, _, _)| *at <= now || force) {
                let (_, w, p) = windows.pop_front().unwrap();
                assert_eq!(spotter.apply(&w, &p).unwrap(), None, "no first-stage events");
                progressed = true;
            }
            if verdict.is_none()
                && let Some(clip) = spotter.ready_clip().unwrap()
            {
                let probs = verifier.score_clips(&[clip.clip()]).unwrap()[0].to_vec();
                *verdict = Some((now.saturating_add(how.verdict_lag), clip, probs));
                progressed = true;
            }
            if !progressed || !force {
                return;
            }
        }
    };
    let mut batch = WindowBatch::new();
    while pos < bytes.len() {
        let frames = how.chunks[step % how.chunks.len()];
        let n = (frames * 2).min(bytes.len() - pos);
        // Backpressure: outstanding scores and verdicts first while the ring has no room.
        while spotter.audio_room() < (n / 2) as u64 && (!windows.is_empty() || verdict.is_some()) {
            let due = windows
                .front()
                .map(|w| w.0)
                .into_iter()
                .chain(verdict.as_ref().map(|v| v.0));
            let at = due.min().unwrap();
            deliver(
                &mut spotter,
                &mut windows,
                &mut verdict,
                &mut events,
                &mut clips,
                &mut models.verifier,
                at,
                false,
            );
        }
        batch.clear();
        spotter.push_pcm(&bytes[pos..pos + n], &mut batch).unwrap();
        pos += n;
        let mut probs = vec![0.0; batch.len() * classes];
        if !batch.is_empty() {
            models.scorer.score(batch.features(), &mut probs).unwrap();
        }
        for (i, w) in batch.windows().iter().enumerate() {
            windows.push_back((
                step + how.score_lag,
                *w,
                probs[i * classes..(i + 1) * classes].to_vec(),
            ));
        }
        deliver(
            &mut spotter,
            &mut windows,
            &mut verdict,
            &mut events,
            &mut clips,
            &mut models.verifier,
            step,
            false,
        );
        step += 1;
    }
    batch.clear();
    spotter.finish(&mut batch).unwrap();
    let mut probs = vec![0.0; batch.len() * classes];
    if !batch.is_empty() {
        models.scorer.score(batch.features(), &mut probs).unwrap();
    }
    for (i, w) in batch.windows().iter().enumerate() {
        windows.push_back((step, *w, probs[i * classes..(i + 1) * classes].to_vec()));
    }
    deliver(
        &mut spotter,
        &mut windows,
        &mut verdict,
        &mut events,
        &mut clips,
        &mut models.verifier,
        usize::MAX,
        true,
    );
    assert!(spotter.pending_candidate().is_none(), "every candidate resolved");
    assert_eq!(spotter.windows_applied(), spotter.windows_emitted());
    (events, clips)
}

const LIVE: &[Live] = &[
    Live {
        chunks: &[160],
        score_lag: 0,
        verdict_lag: 0,
    },
    Live {
        chunks: &[1000, 37, 4096],
        score_lag: 3,
        verdict_lag: 5,
    },
    Live {
        chunks: &[320],
        score_lag: 1,
        verdict_lag: 40,
    },
];

fn check_stream(models: &mut Models, audio: &[f32], what: &str) -> (usize, usize, Vec<ClipRange>) {
    let (mut accepted, mut candidates) = (0, 0);
    let mut all_ranges = Vec::new();
    for v in [0.0f32, 0.9, 0.999] {
        let config = config(&models.manifest, v);
        let (want, ranges) = reference(models, &config, audio);
        let mut spotter = Spotter::new(config.clone(), models.manifest.num_classes()).unwrap();
        let got: Vec<_> = spotter
            .process_with(&mut models.scorer, Some(&mut models.verifier), audio)
            .unwrap()
            .iter()
            .map(key)
            .collect();
        assert_eq!(got, want, "{what}, v {v}: process_with vs reference");
        for how in LIVE {
            let (got, clips) = live(models, &config, audio, *how);
            assert_eq!(got, want, "{what}, v {v}, {how:?}: live vs reference");
            let cut: Vec<ClipRange> = clips
                .iter()
                .map(|c| ClipRange {
                    start: c.start,
                    end: c.start + c.audio.len() as u64,
                    lead: c.lead,
                })
                .collect();
            assert_eq!(cut, ranges, "{what}, v {v}, {how:?}: clips");
        }
        println!(
            "{what}, v {v}: {} candidates, {} events {want:?}",
            ranges.len(),
            want.len()
        );
        accepted += want.len();
        candidates += ranges.len();
        all_ranges.extend(ranges);
    }
    (accepted, candidates, all_ranges)
}

#[test]
fn late_verdicts_give_the_offline_events_on_real_audio() {
    let mut models = models();
    let audio = golden_stream();
    let (accepted, candidates, ranges) = check_stream(&mut models, &audio, "golden stream");
    // Something to compare: candidates accepted at some thresholds and rejected at others, and the
    // first keyword's clip cut at the stream start.
    assert!(
        accepted > 0 && accepted < candidates,
        "{accepted} of {candidates}"
    );
    assert!(ranges.iter().any(|r| r.start == 0 && r.lead > 0), "{ranges:?}");
}

#[test]
fn a_clip_cut_by_the_stream_end() {
    let mut models = models();
    let full = golden_stream();
    // The first-stage window of the last keyword ("left", ~3.96-4.96 s) and a stream that ends
    // 60 ms after it: its clip (which ends ~210 ms after the window) is cut short.
    let config = config(&models.manifest, 0.0);
    let (_, ranges) = reference(&mut models, &config, &full);
    let last = *ranges.last().unwrap();
    let window_end = last.end - 210 * 16;
    let audio = &full[..(window_end as usize + 60 * 16).min(full.len())];
    let (_, _, cut) = check_stream(&mut models, audio, "truncated stream");
    assert!(
        cut.iter()
            .any(|r| r.end == audio.len() as u64 && r.len() < last.len()),
        "a clip ends at the stream's end: {cut:?}"
    );
}

#[test]
fn stream_thresholds_replace_the_verdict_thresholds() {
    let m = Manifest::load(fixture_dir()).unwrap();
    let yes = ("yes".to_string(), 0.999f32);
    let c = StreamConfig::resolve(
        &m,
        PcmFormat::native_s16(),
        &[],
        [(&yes.0, &yes.1)],
        DecoderOverrides {
            refractory_ms: Some(500),
            ..DecoderOverrides::default()
        },
    )
    .unwrap();
    let cascade = c.cascade.as_ref().expect("the manifest has a verifier");
    assert_eq!(cascade.config.thresholds[0], 0.999);
    assert!(cascade.config.thresholds[1..].iter().all(|&t| t == 0.9));
    assert_eq!(cascade.config.first_stage_threshold, 0.7);
    assert_eq!(
        cascade.config.refractory_ms, 500,
        "the decoder's refractory is the cascade's"
    );
    assert_eq!(c.decoder.thresholds[0], Some(0.999));
    let off = StreamConfig::resolve(
        &m,
        PcmFormat::native_s16(),
        &[],
        [],
        DecoderOverrides {
            first_stage_only: true,
            ..DecoderOverrides::default()
        },
    )
    .unwrap();
    assert_eq!(off.cascade, None);
}

#[test]
fn first_stage_only_gives_the_decoder_events() {
    let mut models = models();
    let audio = golden_stream();
    let g = golden(&model_dir("tc-resnet8"));
    let mut c = StreamConfig::from_manifest(&models.manifest, PcmFormat::native_s16());
    c.cascade = None;
    c.hop_frames = g.stream.hop_frames;
    c.decoder.smoothing_ms = g.stream.decoder.smoothing_ms;
    c.decoder.refractory_ms = g.stream.decoder.refractory_ms;
    c.decoder.thresholds = models
        .manifest
        .keywords
        .iter()
        .map(|k| g.stream.thresholds.get(k).copied())
        .collect();
    let mut spotter = Spotter::new(c, models.manifest.num_classes()).unwrap();
    let events = spotter.process(&mut models.scorer, &audio).unwrap();
    let got: Vec<(String, u64)> = events
        .iter()
        .map(|e| (models.manifest.keywords[e.class].clone(), e.end_ms))
        .collect();
    let want: Vec<(String, u64)> = g
        .stream
        .events_fp32
        .iter()
        .map(|e| (e.keyword.clone(), e.end_ms))
        .collect();
    assert_eq!(got, want);
    assert!(events.iter().all(|e| e.verifier_score.is_none()));
    // With the cascade, the verifier is required.
    let mut spotter = Spotter::new(
        StreamConfig::from_manifest(&models.manifest, PcmFormat::native_s16()),
        models.manifest.num_classes(),
    )
    .unwrap();
    assert!(matches!(
        spotter.process(&mut models.scorer, &audio),
        Err(kws_models::ProcessError::NoVerifier)
    ));
}
