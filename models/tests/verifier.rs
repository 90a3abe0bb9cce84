//! The second-stage verifier against the Python reference (`kws_train.verifier_golden`, onnxruntime
//! on the same three files): candidate time → clip range, and head input (embeddings) and
//! probabilities of real clips cut from validation streams; plus the manifest's `verifier` section.
//!
//! Fixtures: `tests/fixtures/verifier/` (clips, `clips.json`, the research head
//! `head-research-conv15k.onnx` — a test fixture, not the head that will ship — and a test manifest
//! that adds a `verifier` section to TC-ResNet8's).
//!
//! Tolerances: probabilities 1e-4 absolute (measured: identical bits on x86-64 with AVX-512 VNNI,
//! 3.6e-7 on the AVX2 path and 1.7e-6 on arm64 under qemu; `models/README.md`); embeddings 1e-3 absolute on values of magnitude up to ~40 (fp32
//! convolutions summed in another order). Runs on every instruction-set path of
//! `deploy/test-isa.sh` (fp32 only, so no path should differ by more than ~1e-5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use kws_models::error::{ModelError, RuntimeError};
use kws_models::verifier::{CLIP_SAMPLES, Clip, HEAD_CLASSES, VerifierFiles, VerifyError, View};
use kws_models::{Manifest, ScorerOptions, Verifier};
use serde::Deserialize;

const PROB_TOL: f32 = 1e-4;
const EMB_TOL: f32 = 1e-3;

fn fixtures() -> PathBuf {
    crate_dir().join("tests").join("fixtures").join("verifier")
}

#[derive(Debug, Deserialize)]
struct ClipsGolden {
    clips: Vec<GoldenClip>,
    views: Vec<ViewRow>,
}

#[derive(Debug, Deserialize)]
struct GoldenClip {
    wav: String,
    what: String,
    t_ms: i64,
    first: i64,
    start: u64,
    end: u64,
    lead: usize,
    samples: usize,
    embeddings: Vec<f32>,
    probs: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct ViewRow {
    t_ms: i64,
    #[serde(default)]
    offset_ms: i64,
    first: i64,
    start: u64,
    end: u64,
    lead: usize,
}

fn golden() -> ClipsGolden {
    let p = fixtures().join("clips.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn verifier() -> Verifier {
    ort();
    let m = Manifest::load(fixtures()).unwrap();
    Verifier::from_manifest(&m, &ScorerOptions::default()).unwrap()
}

#[test]
fn clip_ranges_match_python() {
    let g = golden();
    assert!(g.views.len() > 50);
    for r in &g.views {
        let v = View::at(r.t_ms, r.offset_ms, 9);
        let c = v.clip();
        assert_eq!(
            (v.first, c.start, c.end, c.lead),
            (r.first, r.start, r.end, r.lead),
            "t {} ms, offset {} ms",
            r.t_ms,
            r.offset_ms
        );
    }
    for c in &g.clips {
        let v = View::at(c.t_ms, 0, 9);
        let r = v.clip();
        assert_eq!(
            (v.first, r.start, r.end, r.lead),
            (c.first, c.start, c.end, c.lead)
        );
    }
}

#[test]
fn probabilities_match_python() {
    let mut g = golden();
    // Quick (the emulated ISA paths): one clip, the stream start with lead 3 (6 embeddings, the
    // fewest); below, without the batch-vs-single and `score` re-runs.
    if verifier_quick() {
        g.clips = g
            .clips
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i == 6)
            .map(|(_, c)| c)
            .collect();
    }
    let audio: Vec<Vec<f32>> = g
        .clips
        .iter()
        .map(|c| read_wav(&fixtures().join(&c.wav)))
        .collect();
    let clips: Vec<Clip<'_>> = g
        .clips
        .iter()
        .zip(&audio)
        .map(|(c, a)| {
            assert_eq!(a.len(), c.samples, "{}", c.wav);
            Clip {
                audio: a,
                lead: c.lead,
            }
        })
        .collect();
    let mut v = verifier();
    // One batch of every clip: the mel model runs per clip, so batch-mates cannot change a result.
    let batch = v.score_clips(&clips).unwrap();
    let mut views = Vec::new();
    if !verifier_quick() {
        v.views(&clips, &mut views).unwrap();
    }
    let (mut worst_p, mut worst_e) = (0.0f32, 0.0f32);
    for (i, c) in g.clips.iter().enumerate() {
        let dp = max_abs_diff(&batch[i], &c.probs);
        let de = if verifier_quick() {
            0.0
        } else {
            max_abs_diff(&views[i * 9 * 96..(i + 1) * 9 * 96], &c.embeddings)
        };
        let db = if verifier_quick() {
            0.0
        } else {
            max_abs_diff(&v.score_clips(&clips[i..=i]).unwrap()[0], &batch[i])
        };
        if verifier_quick() {
            println!(
                "{} ({}): |Δ prob| {dp:e} (quick: embeddings and batching not checked)",
                c.wav, c.what
            );
        } else {
            println!(
                "{} ({}): |Δ prob| {dp:e}, |Δ embedding| {de:e}, batch vs alone {db:e}",
                c.wav, c.what
            );
        }
        assert!(dp <= PROB_TOL, "{}: probabilities differ by {dp}", c.wav);
        assert!(de <= EMB_TOL, "{}: embeddings differ by {de}", c.wav);
        assert!(db <= 1e-6, "{}: batch and single scoring differ by {db}", c.wav);
        let sum: f32 = batch[i].iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "softmax sums to {sum}");
        (worst_p, worst_e) = (worst_p.max(dp), worst_e.max(de));
    }
    println!("{} clips: max |Δ prob| {worst_p:e}", g.clips.len());
    if verifier_quick() {
        return;
    }
    println!("max |Δ embedding| {worst_e:e}");
    // `score` on full clips (lead 0) is `score_clips` with lead 0.
    let full: Vec<&[f32]> = audio
        .iter()
        .zip(&g.clips)
        .filter(|(_, c)| c.lead == 0)
        .map(|(a, _)| a.as_slice())
        .collect();
    assert!(full.iter().any(|a| a.len() == CLIP_SAMPLES));
    let p = v.score(&full).unwrap();
    assert_eq!(p.len(), full.len());
    assert!(p.iter().all(|r| r.len() == HEAD_CLASSES));
}

#[test]
fn bad_clips_are_refused() {
    if verifier_quick() {
        return; // no arithmetic, nothing ISA-specific
    }
    let mut v = verifier();
    let long = vec![0.0f32; CLIP_SAMPLES + 160];
    let ok = vec![0.0f32; CLIP_SAMPLES];
    match v.score(&[&ok, &long]) {
        Err(VerifyError::ClipLength { index: 1, got, .. }) => assert_eq!(got, CLIP_SAMPLES + 160),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        v.score(&[&ok[..5000]]),
        Err(VerifyError::ClipLength { .. })
    ));
    let mut out = vec![0.0; 5];
    assert!(matches!(
        v.score_into(&[Clip::from(ok.as_slice())], &mut out),
        Err(VerifyError::OutputShape { .. })
    ));
    assert_eq!(v.score(&[]).unwrap().len(), 0);
    let mut views = vec![1.0];
    v.views(&[], &mut views).unwrap();
    assert!(views.is_empty());
}

#[test]
fn shifted_views_are_cut_from_one_clip() {
    // `view_shifts` 1: a candidate's clip holds 11 embeddings and the head sees the three views of
    // 9 starting 0, 1 and 2 embeddings in, so consecutive views overlap in 8 embeddings, exactly.
    if skip_verifier_runs("shifted_views_are_cut_from_one_clip") {
        return;
    }
    ort();
    let m = Manifest::load(fixtures()).unwrap();
    let files = m.verifier.as_ref().unwrap().read_verified(m.dir()).unwrap();
    let mut v = Verifier::new(&files, 9, 1, 12, &ScorerOptions::default()).unwrap();
    assert_eq!((v.view_len(), v.view_shifts(), v.clip_embeddings()), (9, 1, 11));
    let g = golden();
    let c = &g.clips[0];
    let audio = read_wav(&fixtures().join(&c.wav));
    // An 11-embedding clip: the fixture's 9-embedding clip and the next two embeddings' samples
    // (a ramp; any audio will do).
    let mut long = audio.clone();
    long.resize(kws_models::verifier::clip_samples(11), 0.0);
    for (i, x) in long[audio.len()..].iter_mut().enumerate() {
        *x = ((i % 97) as f32 - 48.0) / 400.0;
    }
    let mut views = Vec::new();
    v.views(&[Clip::from(long.as_slice())], &mut views).unwrap();
    fn emb(views: &[f32], view: usize, k: usize) -> &[f32] {
        &views[(view * 9 + k) * 96..(view * 9 + k + 1) * 96]
    }
    assert_eq!(views.len(), 3 * 9 * 96);
    for view in 1..3 {
        for k in 0..8 {
            assert_eq!(
                emb(&views, view, k),
                emb(&views, view - 1, k + 1),
                "view {view}, embedding {k}"
            );
        }
    }
    assert_ne!(emb(&views, 0, 0), emb(&views, 2, 8));
    // A clip cut short by the end of its stream repeats its last embedding in the later views, and
    // one with lead repeats its first in the earlier ones.
    let short = &long[..kws_models::verifier::clip_samples(9)];
    v.views(&[Clip::from(short)], &mut views).unwrap();
    assert_eq!(emb(&views, 2, 7), emb(&views, 2, 8));
    assert_eq!(emb(&views, 1, 8), emb(&views, 2, 8));
    let lead = Clip {
        audio: &long[..kws_models::verifier::clip_samples(10)],
        lead: 1,
    };
    v.views(&[lead], &mut views).unwrap();
    assert_eq!(
        emb(&views, 0, 0),
        emb(&views, 0, 1),
        "the lead repeats the clip's first embedding"
    );
    // The verdict is no view's softmax but their per-class minimum: it sums to at most 1.
    let p = v.score(&[&long[..]]).unwrap()[0];
    assert!(p.iter().sum::<f32>() <= 1.0 + 1e-6);
}

#[test]
fn shipped_manifests_describe_their_cascade() {
    // Models 2.0.0: every shipped manifest has a verifier section whose files are the shipped ones
    // (checksums), and the cascade configuration is read from it.
    for dir in models() {
        let m = Manifest::load(&dir).unwrap();
        let v = m
            .verifier
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no verifier section", dir.display()));
        v.read_verified(m.dir()).unwrap();
        let c = kws_models::CascadeConfig::from_manifest(&m).unwrap();
        assert_eq!(c.first_stage_threshold, v.first_stage_threshold);
        assert_eq!(c.thresholds, v.thresholds_for(&m.keywords));
        assert_eq!(c.refractory_ms, m.decoder.refractory_ms);
        assert!(!v.licence.trim().is_empty());
    }
    let m = Manifest::load(fixtures()).unwrap();
    let c = kws_models::CascadeConfig::from_manifest(&m).unwrap();
    assert_eq!(c.first_stage_threshold, 0.7);
    assert_eq!(c.thresholds, vec![0.9; 10]);
    assert_eq!((c.refractory_ms, c.reject_gap_ms), (1000, 200));
}

/// A directory removed when dropped.
struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The test manifest with `edit` applied to its JSON, in a temporary tree where its relative paths
/// resolve as in the fixtures (`<tmp>/a/b/c/manifest.json`, `<tmp>/{tc-resnet8,speech-embedding}`).
fn load_edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (Result<Manifest, ModelError>, TempTree) {
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap()).unwrap();
    edit(&mut m);
    let tree = TempTree(std::env::temp_dir().join(format!("kws-verifier-{}-{name}", std::process::id())));
    let deep = tree.0.join("a").join("b").join("c");
    std::fs::create_dir_all(&deep).unwrap();
    for rel in ["tc-resnet8", "speech-embedding"] {
        std::os::unix::fs::symlink(crate_dir().join(rel), tree.0.join(rel)).unwrap();
    }
    std::fs::copy(
        fixtures().join("head-research-conv15k.onnx"),
        deep.join("head-research-conv15k.onnx"),
    )
    .unwrap();
    let path = deep.join("manifest.json");
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    (Manifest::load(&path), tree)
}

fn reason((r, _tree): (Result<Manifest, ModelError>, TempTree)) -> String {
    match r {
        Err(ModelError::Manifest { reason, .. }) => reason,
        other => panic!("expected a manifest error, got {other:?}"),
    }
}

#[test]
fn manifest_section_errors_are_clear() {
    assert!(load_edited("ok", |_| {}).0.is_ok());
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "missing-threshold",
            Box::new(|m| {
                m["verifier"]["thresholds"].as_object_mut().unwrap().remove("go");
            }),
            "no threshold for go",
        ),
        (
            "unknown-keyword",
            Box::new(|m| m["verifier"]["thresholds"]["maybe"] = 0.5.into()),
            "threshold for \"maybe\", which is not a keyword",
        ),
        (
            "threshold-range",
            Box::new(|m| m["verifier"]["thresholds"]["yes"] = 1.5.into()),
            "threshold 1.5 for \"yes\" is outside [0, 1]",
        ),
        (
            "t1-range",
            Box::new(|m| m["verifier"]["first_stage_threshold"] = (-0.1).into()),
            "first_stage_threshold -0.1 is outside [0, 1]",
        ),
        (
            "view",
            Box::new(|m| m["verifier"]["embeddings_per_view"] = 0.into()),
            "embeddings_per_view 0 is not supported",
        ),
        (
            "view-shifts",
            Box::new(|m| m["verifier"]["view_shifts"] = 5.into()),
            "view_shifts 5 is not supported: use 0..=4",
        ),
        (
            "offset",
            Box::new(|m| m["verifier"]["centre_offset_ms"] = 5000.into()),
            "centre_offset_ms 5000 is outside",
        ),
        (
            "gap",
            Box::new(|m| m["verifier"]["reject_gap_ms"] = 20_000.into()),
            "reject_gap_ms 20000 is not supported",
        ),
        (
            "licence",
            Box::new(|m| m["verifier"]["licence"] = " ".into()),
            "licence must say",
        ),
        (
            "sha",
            Box::new(|m| m["verifier"]["head"]["sha256"] = "abc".into()),
            "head.sha256 \"abc\" is not 64 hex digits",
        ),
        (
            "absolute",
            Box::new(|m| m["verifier"]["features"]["mel"]["path"] = "/tmp/mel.onnx".into()),
            "features.mel.path \"/tmp/mel.onnx\" must be a relative path",
        ),
        (
            "typo",
            Box::new(|m| m["verifier"]["reject_gap"] = 200.into()),
            "unknown field `reject_gap`",
        ),
        (
            "missing-field",
            Box::new(|m| {
                m["verifier"].as_object_mut().unwrap().remove("licence");
            }),
            "missing field `licence`",
        ),
    ];
    for (name, edit, want) in cases {
        let got = reason(load_edited(name, edit));
        println!("{name}: {got}");
        assert!(got.contains(want), "{name}: {got:?} does not say {want:?}");
    }
}

#[test]
fn files_are_checked_when_loaded() {
    if verifier_quick() {
        return; // no arithmetic, nothing ISA-specific
    }
    ort();
    // A wrong sha256 of the head: the manifest is valid, loading the verifier fails.
    let (m, _tree) = load_edited("checksum", |m| {
        m["verifier"]["head"]["sha256"] = "0".repeat(64).into();
    });
    match Verifier::from_manifest(&m.unwrap(), &ScorerOptions::default()) {
        Err(RuntimeError::Model(ModelError::Checksum { path, .. })) => {
            assert!(path.ends_with("head-research-conv15k.onnx"))
        }
        other => panic!("{other:?}"),
    }
    // A head that does not take [N, 9, 96]: the embedding model in its place.
    let se = crate_dir().join("speech-embedding");
    let files = VerifierFiles::read(
        &se.join("melspectrogram.onnx"),
        &se.join("embedding_model.onnx"),
        &se.join("embedding_model.onnx"),
    )
    .unwrap();
    match Verifier::new(&files, 9, 0, 12, &ScorerOptions::default()) {
        Err(RuntimeError::Model(ModelError::Shape { reason, .. })) => println!("{reason}"),
        other => panic!("{other:?}"),
    }
    // A manifest without the section.
    let (m, _tree) = load_edited("no-section", |m| {
        m.as_object_mut().unwrap().remove("verifier");
    });
    assert!(matches!(
        Verifier::from_manifest(&m.unwrap(), &ScorerOptions::default()),
        Err(RuntimeError::Model(ModelError::Manifest { .. }))
    ));
}
