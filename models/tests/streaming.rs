//! Streaming (external-state) scoring against the windowed model of the same weights
//! (`tc-resnet8-stream`: `model.onnx` / `model.int8.onnx` windowed, `model.stream*.onnx` streaming).
//!
//! The windowed graph first reproduces the model's golden trace (`golden/golden.json`, written by
//! `kws_train.export` with Python onnxruntime): fp32 within 1e-5, int8 within 2e-3 (the int8
//! tolerance of the golden tests across instruction sets). Then, for the golden stream, and for
//! seeded noise and a tone sweep, the windows of a [`Spotter`] scored
//! by the windowed graph and the hops of a streaming [`Spotter`] scored by the streaming graph must
//! give the same windows (sequence numbers, times) and, from the first full window on:
//! - fp32: posteriors within [`FP32_TOLERANCE`] (the bound) and the same events;
//! - int8 (if the manifest ships an int8 streaming graph): within [`INT8_TOLERANCE`] of the windowed
//!   int8 model and the same events. The int8 streaming graph carries the windowed int8 graph's
//!   quantization tensor by tensor (`kws_train.streaming.build_int8`), so it computes the same
//!   integers; measured: identical posteriors on every path (models/README.md).
//!
//! Also, on random MFCC frames fed straight to both scorers (no frontend; values beyond the input
//! quantization range included): the same bound per variant.
//!
//! Also: chunk sizes of 1, 7, 160, 1000 and 16000 samples give bit-identical streaming posteriors;
//! three streams scored together (states concatenated on the batch dimension) equal each scored
//! alone, and `score_each` (each stream's state in its own buffer, as the service batches) equals
//! `score` bit for bit and refuses a state of the wrong length without writing any; a manifest whose state shapes disagree with the graph is refused.
//!
//! The cascade: with `models/tc-resnet8`'s verifier section applied to the stream model, the
//! golden stream's verified events through the streaming first stage equal those through the
//! windowed one (fp32), and do not depend on the chunk size (natively only: skipped with
//! `KWS_VERIFIER_QUICK=1`, as the shipped cascade golden is).
//!
//! `KWS_TEST_VARIANTS` selects variants as in the golden tests (`deploy/test-isa.sh` runs this file
//! on the emulated AVX2 and arm64 paths).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use kws_models::{
    CascadeSettings, Encoding, Event, FirstStage, Manifest, OnnxScorer, OnnxStreamScorer, PcmFormat, Scorer,
    ScorerOptions, Spotter, StreamConfig, StreamScorer, Verifier, WindowBatch, WindowMeta,
};

/// The bound for fp32: streaming == windowed from the first full window on.
const FP32_TOLERANCE: f32 = 1e-5;
/// int8 streaming vs int8 windowed, any posterior: both graphs quantize the same values with the same
/// scales and weights (measured difference 0 natively, on AVX2 and on arm64); the bound leaves only
/// float rounding of the dequantized softmax, far below one step of any quantized activation.
const INT8_TOLERANCE: f32 = 1e-6;
/// The golden trace, per variant (as `tests/golden.rs`).
const GOLDEN_TOLERANCE: [(&str, f32); 2] = [("fp32", 1e-5), ("int8", 2e-3)];

fn dir() -> PathBuf {
    model_dir("tc-resnet8-stream")
}

/// The variants under test (`KWS_TEST_VARIANTS`) that the manifest has a streaming graph of.
fn streaming_variants(manifest: &Manifest) -> Vec<&'static str> {
    let files = &manifest.streaming.as_ref().unwrap().files;
    let v: Vec<&'static str> = variants()
        .into_iter()
        .filter(|v| files.contains_key(*v))
        .collect();
    assert!(
        !v.is_empty(),
        "no streaming graph of {:?} in the manifest",
        variants()
    );
    v
}

fn config(manifest: &Manifest) -> StreamConfig {
    // The manifest's defaults (its hop is the streaming graph's) for s16 mono at 16 kHz.
    let config = StreamConfig::from_manifest(manifest, PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap());
    assert_eq!(config.hop_frames, manifest.streaming.as_ref().unwrap().hop_frames);
    config
}

fn s16(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| ((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
        .collect()
}

/// The audio the comparisons run on: the golden stream, 3 s of seeded white noise at 0.3 full scale,
/// 2.5 s of a 200 Hz → 6 kHz sweep.
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let g = golden(&dir());
    let golden_stream = read_wav(&dir().join("golden").join(&g.stream.wav));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<f32> = (0..48_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
        })
        .collect();
    let sweep: Vec<f32> = (0..40_000)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            let phase = 2.0 * std::f64::consts::PI * (200.0 * t + (5800.0 / 2.5) * t * t / 2.0);
            (0.4 * phase.sin()) as f32
        })
        .collect();
    vec![
        ("golden stream", s16(&golden_stream)),
        ("noise", s16(&noise)),
        ("sweep", s16(&sweep)),
    ]
}

/// Windows, posteriors and events of the windowed path.
fn windowed(manifest: &Manifest, variant: &str, pcm: &[u8]) -> (Vec<WindowMeta>, Vec<f32>, Vec<Event>) {
    let mut scorer = OnnxScorer::new(manifest, variant, &ScorerOptions::default()).unwrap();
    let mut spotter = Spotter::new(config(manifest), manifest.num_classes()).unwrap();
    let mut batch = WindowBatch::new();
    spotter.push_pcm(pcm, &mut batch).unwrap();
    spotter.finish(&mut batch).unwrap();
    let mut probs = vec![0.0; batch.len() * scorer.num_classes()];
    scorer.score(batch.features(), &mut probs).unwrap();
    let c = scorer.num_classes();
    let events = batch
        .windows()
        .iter()
        .zip(probs.chunks_exact(c))
        .filter_map(|(w, p)| spotter.apply(w, p).unwrap())
        .collect();
    (batch.windows().to_vec(), probs, events)
}

/// Windows, posteriors and events of the streaming path, audio pushed in chunks of `chunk` samples.
fn streamed(
    manifest: &Manifest,
    scorer: &mut OnnxStreamScorer,
    pcm: &[u8],
    chunk: usize,
) -> (Vec<WindowMeta>, Vec<f32>, Vec<Event>) {
    let layout = scorer.layout().clone();
    let mut spotter =
        Spotter::new_streaming(config(manifest), manifest.num_classes(), layout.clone()).unwrap();
    let (mut windows, mut all, mut events) = (Vec::new(), Vec::new(), Vec::new());
    let mut probs = vec![0.0; scorer.num_classes()];
    let mut state = layout.initial_state();
    let mut batch = WindowBatch::new();
    let mut drain = |spotter: &mut Spotter| {
        while let Some(hop) = spotter.next_hop() {
            scorer
                .score(hop.frames, hop.state, &mut state, &mut probs)
                .unwrap();
            let (w, e) = spotter.complete_hop(&state, &probs).unwrap();
            if let Some(w) = w {
                windows.push(w);
                all.extend_from_slice(&probs);
            }
            events.extend(e);
        }
    };
    for c in pcm.chunks(chunk * 2) {
        spotter.push_pcm(c, &mut batch).unwrap();
        drain(&mut spotter);
    }
    spotter.finish(&mut batch).unwrap();
    drain(&mut spotter);
    assert!(batch.is_empty());
    assert_eq!(spotter.audio_ms_processed(), spotter.audio_ms_received());
    (windows, all, events)
}

#[test]
fn streaming_equals_windowed_on_the_same_windows() {
    ort();
    let manifest = Manifest::load(dir()).unwrap();
    let g = golden(&dir());
    for variant in streaming_variants(&manifest) {
        let mut scorer = OnnxStreamScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
        for (name, pcm) in inputs() {
            let (w_win, p_win, e_win) = windowed(&manifest, variant, &pcm);
            if name == "golden stream" {
                let trace = if variant == "fp32" {
                    &g.stream.trace_fp32
                } else {
                    &g.stream.trace_int8
                };
                let want: Vec<f32> = trace.iter().flat_map(|t| t.probs.iter().copied()).collect();
                let tol = GOLDEN_TOLERANCE.iter().find(|(v, _)| *v == variant).unwrap().1;
                let d = max_abs_diff(&want, &p_win);
                assert!(d <= tol, "{variant}: windowed golden trace off by {d}");
            }
            let (w_st, p_st, e_st) = streamed(&manifest, &mut scorer, &pcm, pcm.len());
            assert!(!w_win.is_empty());
            assert_eq!(w_win, w_st, "{variant} {name}: windows differ");
            let d = max_abs_diff(&p_win, &p_st);
            eprintln!(
                "{variant} {name}: {} windows, max |streaming - windowed| = {d:.3e}",
                w_win.len()
            );
            let tol = if variant == "fp32" {
                FP32_TOLERANCE
            } else {
                INT8_TOLERANCE
            };
            assert!(d <= tol, "{variant} {name}: max |diff| {d} > {tol}");
            {
                // Same keyword and window; the smoothed score within the posteriors' tolerance.
                let key = |e: &Vec<Event>| {
                    e.iter()
                        .map(|e| (e.class, e.start_ms, e.end_ms))
                        .collect::<Vec<_>>()
                };
                assert_eq!(key(&e_win), key(&e_st), "{variant} {name}: events differ");
                for (a, b) in e_win.iter().zip(&e_st) {
                    assert!(
                        (a.score - b.score).abs() <= tol,
                        "{variant} {name}: {a:?} vs {b:?}"
                    );
                }
            }
        }
    }
}

/// Seeded random MFCC frames `[frames, 40]`: mostly within the features' usual range, one value in
/// 50 far outside it (quantization clamps those, in both graphs alike).
fn random_frames(frames: usize, mut seed: u64) -> Vec<f32> {
    (0..frames * 40)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let u = (seed >> 40) as f32 / (1u64 << 24) as f32;
            if seed.is_multiple_of(50) {
                (u - 0.5) * 400.0
            } else {
                (u - 0.5) * 50.0
            }
        })
        .collect()
}

#[test]
fn streaming_equals_windowed_on_random_frames() {
    ort();
    let manifest = Manifest::load(dir()).unwrap();
    for variant in streaming_variants(&manifest) {
        let mut windowed = OnnxScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
        let mut streaming = OnnxStreamScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
        let layout = streaming.layout().clone();
        let c = streaming.num_classes();
        let (hop, window) = (layout.hop_frames, 98);
        for seed in [1_u64, 0x9e37_79b9_7f4a_7c15] {
            let frames = random_frames(400, seed);
            let mut fed = vec![0.0; layout.lead_frames * 40];
            fed.extend_from_slice(&frames);
            let mut state = layout.initial_state();
            let mut next = layout.initial_state();
            let mut probs = vec![0.0; c];
            // The windowed graph scores all windows in one batch, the streaming graph one hop at a time.
            let (mut got, mut wins) = (Vec::new(), Vec::new());
            for (call, f) in fed.chunks_exact(hop * 40).enumerate() {
                streaming.score(f, &state, &mut next, &mut probs).unwrap();
                std::mem::swap(&mut state, &mut next);
                if let Some(w) = layout.window_of_call(call as u64) {
                    // The window's last frame, in the stream's own frames.
                    let last = hop * (call + 1) - layout.lead_frames - 1;
                    assert_eq!(w.end_ms, last as u64 * 10 + 30);
                    got.extend_from_slice(&probs);
                    wins.extend_from_slice(&frames[(last + 1 - window) * 40..(last + 1) * 40]);
                }
            }
            let mut want = vec![0.0; got.len()];
            windowed.score(&wins, &mut want).unwrap();
            assert!(got.len() / c > 100);
            let d = max_abs_diff(&want, &got);
            eprintln!(
                "{variant} random frames (seed {seed:#x}): {} windows, max |streaming - windowed| = {d:.3e}",
                got.len() / c
            );
            let tol = if variant == "fp32" {
                FP32_TOLERANCE
            } else {
                INT8_TOLERANCE
            };
            assert!(d <= tol, "{variant} random frames: max |diff| {d} > {tol}");
        }
    }
}

#[test]
fn streaming_is_chunk_size_invariant() {
    ort();
    let manifest = Manifest::load(dir()).unwrap();
    let variant = streaming_variants(&manifest)[0];
    let mut scorer = OnnxStreamScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
    let (_, pcm) = inputs().swap_remove(0);
    // The first 2.5 s: 76 windows, enough to cross every chunk boundary case.
    let pcm = &pcm[..2 * 40_000];
    let reference = streamed(&manifest, &mut scorer, pcm, pcm.len());
    assert_eq!(reference.0.len(), 76);
    for chunk in [1, 7, 160, 1000, 16_000] {
        let got = streamed(&manifest, &mut scorer, pcm, chunk);
        assert_eq!(got.0, reference.0, "chunk {chunk}: windows");
        assert!(
            got.1
                .iter()
                .zip(&reference.1)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "chunk {chunk}: posteriors differ"
        );
        assert_eq!(got.2, reference.2, "chunk {chunk}: events");
    }
}

#[test]
fn streams_batched_on_the_batch_dimension_equal_each_alone() {
    ort();
    let manifest = Manifest::load(dir()).unwrap();
    for variant in streaming_variants(&manifest) {
        let mut scorer = OnnxStreamScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
        let layout = scorer.layout().clone();
        let c = scorer.num_classes();
        let pcms: Vec<Vec<u8>> = inputs()
            .into_iter()
            .map(|(_, p)| p[..2 * 32_000].to_vec())
            .collect();
        let alone: Vec<Vec<f32>> = pcms
            .iter()
            .map(|p| streamed(&manifest, &mut scorer, p, p.len()).1)
            .collect();
        let mut batch = WindowBatch::new();
        let mut spotters: Vec<Spotter> = pcms
            .iter()
            .map(|p| {
                let mut s = Spotter::new_streaming(config(&manifest), c, layout.clone()).unwrap();
                s.push_pcm(p, &mut batch).unwrap();
                s.finish(&mut batch).unwrap();
                s
            })
            .collect();
        let n = spotters.len();
        let mut together = vec![Vec::new(); n];
        let (mut frames, mut states_in) = (Vec::new(), Vec::new());
        let mut states_out = vec![0.0; n * layout.len];
        let mut probs = vec![0.0; n * c];
        while spotters.iter().all(|s| s.pending_hops() > 0) {
            frames.clear();
            states_in.clear();
            for s in &spotters {
                let hop = s.next_hop().unwrap();
                frames.extend_from_slice(hop.frames);
                states_in.extend_from_slice(hop.state);
            }
            scorer
                .score(&frames, &states_in, &mut states_out, &mut probs)
                .unwrap();
            // The same batch with each stream's state in its own buffer (the service's batcher):
            // bit for bit the same posteriors and new states.
            let mut own: Vec<Vec<f32>> = states_in.chunks(layout.len).map(<[f32]>::to_vec).collect();
            let mut own_probs = vec![0.0; n * c];
            let mut views: Vec<&mut [f32]> = own.iter_mut().map(Vec::as_mut_slice).collect();
            scorer.score_each(&frames, &mut views, &mut own_probs).unwrap();
            assert!(
                own_probs
                    .iter()
                    .zip(&probs)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{variant}: score_each posteriors differ from score"
            );
            assert!(
                own.concat()
                    .iter()
                    .zip(&states_out)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{variant}: score_each states differ from score"
            );
            // A state of the wrong length is refused and no state is touched.
            let mut short = own[0][1..].to_vec();
            let before: Vec<Vec<f32>> = own.clone();
            let mut views: Vec<&mut [f32]> = own.iter_mut().map(Vec::as_mut_slice).collect();
            views[n - 1] = short.as_mut_slice();
            let err = scorer
                .score_each(&frames, &mut views, &mut own_probs)
                .unwrap_err();
            assert!(matches!(err, kws_models::ScoreError::StateShape { .. }), "{err}");
            assert_eq!(
                own[..n - 1],
                before[..n - 1],
                "{variant}: refused call wrote a state"
            );
            for (i, s) in spotters.iter_mut().enumerate() {
                let p = &probs[i * c..(i + 1) * c];
                if s.complete_hop(&states_out[i * layout.len..(i + 1) * layout.len], p)
                    .unwrap()
                    .0
                    .is_some()
                {
                    together[i].extend_from_slice(p);
                }
            }
        }
        assert!(spotters.iter().all(|s| s.pending_hops() == 0));
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            let d = max_abs_diff(a, b);
            eprintln!("{variant} stream {i}: batch of {n} vs alone max |diff| = {d:.3e}");
            assert!(d <= 1e-6, "{variant} stream {i}: batched differs by {d}");
        }
    }
}

#[test]
fn a_manifest_whose_states_disagree_with_the_graph_is_refused() {
    ort();
    let tmp = std::env::temp_dir().join(format!("kws-stream-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = dir();
    let text = std::fs::read_to_string(src.join("manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let file = m["streaming"]["files"]["fp32"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::copy(src.join(&file), tmp.join(&file)).unwrap();
    for (k, f) in m["files"].as_object().unwrap() {
        let p = f["path"].as_str().unwrap();
        if k == "fp32" {
            std::fs::copy(src.join(p), tmp.join(p)).unwrap();
        }
    }
    let cols = m["streaming"]["states"][0]["shape"][2].as_i64().unwrap();
    m["streaming"]["states"][0]["shape"][2] = (cols + 1).into();
    std::fs::write(tmp.join("manifest.json"), m.to_string()).unwrap();
    let manifest = Manifest::load(&tmp).unwrap();
    let err = OnnxStreamScorer::new(&manifest, "fp32", &ScorerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("does not match its manifest"), "{err}");
    let missing = OnnxStreamScorer::new(&manifest, "int9", &ScorerOptions::default()).unwrap_err();
    assert!(missing.to_string().contains("streaming int9"), "{missing}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The stream model with the cascade of `models/tc-resnet8` (its `verifier` section: first-stage
/// threshold, verdict thresholds, view geometry; the speech-embedding features and its head).
fn cascaded(manifest: &Manifest) -> (StreamConfig, Verifier) {
    let tc8 = Manifest::load(model_dir("tc-resnet8")).unwrap();
    assert_eq!(tc8.classes, manifest.classes, "the head scores the same classes");
    let mut config = config(manifest);
    config.cascade = CascadeSettings::from_manifest(&tc8);
    assert!(config.cascade.is_some(), "tc-resnet8 ships a verifier");
    let verifier = Verifier::from_manifest(&tc8, &ScorerOptions::default()).unwrap();
    (config, verifier)
}

/// The cascade's events with the streaming first stage (audio in pieces of `chunk` samples, each
/// scored and its candidates verified before the next, like a live stream).
fn cascade_streamed(
    manifest: &Manifest,
    scorer: &mut OnnxStreamScorer,
    verifier: &mut Verifier,
    config: &StreamConfig,
    pcm: &[u8],
    chunk: usize,
) -> Vec<Event> {
    let layout = scorer.layout().clone();
    let mut s = Spotter::new_streaming(config.clone(), manifest.num_classes(), layout).unwrap();
    let mut batch = WindowBatch::new();
    let mut events = Vec::new();
    for piece in pcm.chunks(chunk * 2).map(Some).chain([None]) {
        match piece {
            Some(p) => s.push_pcm(p, &mut batch).map(|_| ()).unwrap(),
            None => s.finish(&mut batch).unwrap(),
        }
        s.score_pending(
            FirstStage::Streaming(scorer),
            Some(verifier),
            &batch,
            |_, _| {},
            |e| events.push(e.clone()),
        )
        .unwrap();
        assert!(batch.is_empty());
    }
    assert!(s.pending_candidate().is_none(), "every candidate verified");
    events
}

#[test]
fn the_cascade_on_a_streaming_first_stage_equals_the_windowed_cascade() {
    // Emulated paths (`deploy/test-isa.sh`): an embedding costs seconds there and this runs ~20 clips;
    // the streaming posteriors the cascade reads are checked there by the tests above.
    if skip_verifier_runs("the_cascade_on_a_streaming_first_stage_equals_the_windowed_cascade") {
        return;
    }
    ort();
    let manifest = Manifest::load(dir()).unwrap();
    let (config, mut verifier) = cascaded(&manifest);
    let mut windowed = OnnxScorer::new(&manifest, "fp32", &ScorerOptions::default()).unwrap();
    let mut streaming = OnnxStreamScorer::new(&manifest, "fp32", &ScorerOptions::default()).unwrap();
    let (_, pcm) = inputs().swap_remove(0);
    let mut w = Spotter::new(config.clone(), manifest.num_classes()).unwrap();
    let want = w
        .process_pcm_with(&mut windowed, Some(&mut verifier), &pcm)
        .unwrap();
    let mut s =
        Spotter::new_streaming(config.clone(), manifest.num_classes(), streaming.layout().clone()).unwrap();
    let got = s
        .process_pcm_first_stage(FirstStage::Streaming(&mut streaming), Some(&mut verifier), &pcm)
        .unwrap();
    eprintln!("cascade on the golden stream: {} events", want.len());
    assert!(!want.is_empty(), "the golden stream has verified keywords");
    assert!(
        want.iter().all(|e| e.verifier_score.is_some()),
        "events are verdicts"
    );
    let key = |e: &[Event]| {
        e.iter()
            .map(|e| (e.class, e.start_ms, e.end_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&want), key(&got), "streaming vs windowed cascade events");
    for (a, b) in want.iter().zip(&got) {
        assert!((a.score - b.score).abs() <= FP32_TOLERANCE, "{a:?} vs {b:?}");
        // The same clip is verified: the same verdict.
        assert_eq!(a.verifier_score, b.verifier_score, "{a:?} vs {b:?}");
    }
    assert_eq!(s.windows_applied(), w.windows_applied());
    // Chunk sizes do not matter on the streaming path (bit for bit).
    for chunk in [160, 1000, 16_000] {
        let c = cascade_streamed(&manifest, &mut streaming, &mut verifier, &config, &pcm, chunk);
        assert_eq!(c, got, "chunk {chunk}");
    }
}

/// The stream model's own cascade (its manifest's `verifier` section, the default of its streams)
/// gives the cascade golden's events (`golden.json` `stream.cascade`, `kws_train.verifier_golden
/// shipped`) on the windowed graph and on the streaming graph, for every variant it streams.
#[test]
fn the_stream_models_cascade_gives_its_golden_events() {
    if skip_verifier_runs("the_stream_models_cascade_gives_its_golden_events") {
        return;
    }
    ort();
    let manifest = Manifest::load(dir()).unwrap();
    let want = golden(&dir())
        .stream
        .cascade
        .expect("the stream model has a cascade golden");
    let config = config(&manifest);
    assert!(
        config.cascade.is_some(),
        "the manifest's cascade is on by default"
    );
    let mut verifier = Verifier::from_manifest(&manifest, &ScorerOptions::default()).unwrap();
    let (_, pcm) = inputs().swap_remove(0);
    for variant in streaming_variants(&manifest) {
        let want_events = if variant == "fp32" {
            &want.events_fp32
        } else {
            &want.events_int8
        };
        let want_key: Vec<(String, u64, u64)> = want_events
            .iter()
            .map(|w| (w.keyword.clone(), w.start_ms, w.end_ms))
            .collect();
        assert!(!want_key.is_empty());
        let key = |events: &[Event]| -> Vec<(String, u64, u64)> {
            events
                .iter()
                .map(|e| (manifest.keywords[e.class].clone(), e.start_ms, e.end_ms))
                .collect()
        };
        let mut windowed = OnnxScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
        let mut w = Spotter::new(config.clone(), manifest.num_classes()).unwrap();
        let got_windowed = w
            .process_pcm_with(&mut windowed, Some(&mut verifier), &pcm)
            .unwrap();
        assert_eq!(key(&got_windowed), want_key, "{variant} windowed");
        let mut streaming = OnnxStreamScorer::new(&manifest, variant, &ScorerOptions::default()).unwrap();
        let got = cascade_streamed(&manifest, &mut streaming, &mut verifier, &config, &pcm, 320);
        assert_eq!(key(&got), want_key, "{variant} streaming");
        for (e, w) in got.iter().zip(want_events) {
            let v = e
                .verifier_score
                .expect("a cascade event carries the verifier's score");
            assert!((v - w.verifier_score).abs() <= 1e-4, "{e:?} vs {w:?}");
        }
    }
}
