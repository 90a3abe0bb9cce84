//! The model manifest (`manifest.json` beside the ONNX files), and its validation.
//!
//! A manifest is accepted only if it describes what this crate computes: the frontend parameters
//! must equal the compiled ones (this crate has one frontend, the one the model was trained on),
//! the input is `[N, 98, 40]`, the output `[N, classes]`, keywords are the first classes, and
//! thresholds are in [0, 1]. Model files are checked against their sha256 when loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::frontend;

/// Name of the manifest file in a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// `-1` marks the dynamic batch dimension.
    pub shape: Vec<i64>,
    pub dtype: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FileSpec {
    /// Relative to the manifest's directory.
    pub path: String,
    pub sha256: String,
    #[serde(default)]
    pub bytes: u64,
}

/// Frontend parameters as written by the training side.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FrontendSpec {
    pub sample_rate: u32,
    pub frame_length: usize,
    pub hop_length: usize,
    pub fft_size: usize,
    pub window: String,
    pub spectrum: String,
    pub num_mel: usize,
    pub mel_low_hz: f64,
    pub mel_high_hz: f64,
    pub mel_scale: String,
    pub log_offset: f64,
    pub dct: String,
    pub num_mfcc: usize,
    pub window_frames: usize,
}

impl FrontendSpec {
    /// The frontend this crate implements.
    pub fn compiled() -> Self {
        Self {
            sample_rate: frontend::SAMPLE_RATE,
            frame_length: frontend::FRAME_LENGTH,
            hop_length: frontend::HOP_LENGTH,
            fft_size: frontend::FFT_SIZE,
            window: "hann_periodic".into(),
            spectrum: "power".into(),
            num_mel: frontend::NUM_MEL,
            mel_low_hz: frontend::MEL_LOW_HZ,
            mel_high_hz: frontend::MEL_HIGH_HZ,
            mel_scale: "htk_1127_ln".into(),
            log_offset: frontend::LOG_OFFSET,
            dct: "dct2_ortho".into(),
            num_mfcc: frontend::NUM_MFCC,
            window_frames: frontend::WINDOW_FRAMES,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WindowSpec {
    pub frames: usize,
    pub samples: usize,
    pub default_hop_frames: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DecoderDefaults {
    pub smoothing_ms: u32,
    pub refractory_ms: u32,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Output order of the model.
    pub classes: Vec<String>,
    /// The first `keywords.len()` classes.
    pub keywords: Vec<String>,
    pub input: TensorSpec,
    pub output: TensorSpec,
    pub frontend: FrontendSpec,
    pub window: WindowSpec,
    pub decoder: DecoderDefaults,
    /// Recommended threshold per keyword.
    pub thresholds: BTreeMap<String, f32>,
    pub params: u64,
    pub flops: u64,
    /// Variant name (`fp32`, `int8`) -> file.
    pub files: BTreeMap<String, FileSpec>,
    #[serde(default)]
    pub training: serde_json::Value,
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Optional second-stage verifier (`crate::verifier`, `crate::cascade`); absent in the
    /// shipped manifests so far.
    #[serde(default)]
    pub verifier: Option<VerifierSpec>,
    /// Optional streaming (external-state) graph of the same weights (`crate::streaming`).
    #[serde(default)]
    pub streaming: Option<crate::streaming::StreamingSpec>,
    #[serde(skip)]
    dir: PathBuf,
}

impl Manifest {
    /// Load `path` (a manifest file, or a model directory containing `manifest.json`) and validate it.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join(MANIFEST_FILE);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let mut m: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        m.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        m.validate()
            .map_err(|reason| ModelError::Manifest { path, reason })?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        if self.frontend != FrontendSpec::compiled() {
            return Err(format!(
                "frontend {:?} differs from the one this build implements {:?}",
                self.frontend,
                FrontendSpec::compiled()
            ));
        }
        let classes = self.classes.len() as i64;
        if self.classes.is_empty() || self.classes.len() > crate::decoder::MAX_CLASSES {
            return Err(format!(
                "{} classes; 1..={} supported",
                classes,
                crate::decoder::MAX_CLASSES
            ));
        }
        if self.keywords.is_empty()
            || self.classes[..self.keywords.len().min(self.classes.len())] != self.keywords[..]
        {
            return Err("keywords must be the first classes, in order".into());
        }
        let want_in = [-1, frontend::WINDOW_FRAMES as i64, frontend::NUM_MFCC as i64];
        if self.input.shape != want_in || self.input.dtype != "float32" {
            return Err(format!(
                "input must be float32 {want_in:?}, got {} {:?}",
                self.input.dtype, self.input.shape
            ));
        }
        if self.output.shape != [-1, classes] || self.output.dtype != "float32" {
            return Err(format!(
                "output must be float32 [-1, {classes}], got {} {:?}",
                self.output.dtype, self.output.shape
            ));
        }
        if self.window.frames != frontend::WINDOW_FRAMES
            || self.window.default_hop_frames == 0
            || self.window.default_hop_frames as usize > frontend::WINDOW_FRAMES
        {
            return Err(format!("window {:?} is not supported", self.window));
        }
        for (k, t) in &self.thresholds {
            if !self.keywords.contains(k) {
                return Err(format!("threshold for {k:?}, which is not a keyword"));
            }
            if !(0.0..=1.0).contains(t) {
                return Err(format!("threshold {t} for {k:?} is outside [0, 1]"));
            }
        }
        if self.files.is_empty() {
            return Err("no model files".into());
        }
        if let Some(v) = &self.verifier {
            v.validate(&self.keywords).map_err(|e| format!("verifier: {e}"))?;
        }
        if let Some(s) = &self.streaming {
            s.validate(self.classes.len())
                .map_err(|e| format!("streaming: {e}"))?;
        }
        Ok(())
    }

    /// Directory the manifest was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of model outputs.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Index of `keyword` among the keywords (= its class index), if it is one.
    pub fn keyword_index(&self, keyword: &str) -> Option<usize> {
        self.keywords.iter().position(|k| k == keyword)
    }

    /// Default threshold per keyword, in keyword order (0.5 where the manifest has none).
    pub fn default_thresholds(&self) -> Vec<f32> {
        self.keywords
            .iter()
            .map(|k| self.thresholds.get(k).copied().unwrap_or(0.5))
            .collect()
    }

    /// Available variants (`fp32`, `int8`, ...), sorted.
    pub fn variants(&self) -> Vec<&str> {
        self.files.keys().map(String::as_str).collect()
    }

    /// Read the file of `variant` and check it against the manifest's sha256. Returns the bytes.
    pub fn read_verified(&self, variant: &str) -> Result<(PathBuf, Vec<u8>), ModelError> {
        let spec = self
            .files
            .get(variant)
            .ok_or_else(|| ModelError::Variant(variant.into(), self.variants().join(", ")))?;
        read_checked(self.dir.join(&spec.path), &spec.sha256)
    }
}

impl Manifest {
    /// Read the streaming graph of `variant` and check it against the manifest's sha256.
    pub fn read_verified_streaming(&self, variant: &str) -> Result<(PathBuf, Vec<u8>), ModelError> {
        let files = self.streaming.as_ref().map(|s| &s.files);
        let spec = files.and_then(|f| f.get(variant)).ok_or_else(|| {
            let have = files.map(|f| f.keys().cloned().collect::<Vec<_>>().join(", "));
            ModelError::Variant(
                format!("streaming {variant}"),
                have.unwrap_or_else(|| "none: no streaming section".into()),
            )
        })?;
        read_checked(self.dir.join(&spec.path), &spec.sha256)
    }
}

/// Read `path` and check it against `sha256`. Returns the path and the bytes.
fn read_checked(path: PathBuf, sha256: &str) -> Result<(PathBuf, Vec<u8>), ModelError> {
    let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(ModelError::Checksum {
            path,
            expected: sha256.to_string(),
            actual,
        });
    }
    Ok((path, bytes))
}

/// A model file of the verifier section (no `bytes`: the sha256 pins it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifierFile {
    /// Relative path (see [`VerifierSpec`] for relative to what).
    pub path: String,
    /// Lower-case hex.
    pub sha256: String,
}

/// The optional `verifier` section of a manifest: the second stage of `crate::cascade`.
///
/// ```json
/// "verifier": {
///   "features": {"dir": "../speech-embedding",
///                "mel": {"path": "melspectrogram.onnx", "sha256": "ba2b…"},
///                "embedding": {"path": "embedding_model.onnx", "sha256": "ba75…"}},
///   "head": {"path": "verifier/head.onnx", "sha256": "…"},
///   "embeddings_per_view": 9, "centre_offset_ms": 0, "view_shifts": 1,
///   "candidate_rule": "keyword_mass",
///   "first_stage_threshold": 0.7, "thresholds": {"yes": 0.9, …}, "reject_gap_ms": 200,
///   "licence": "…"
/// }
/// ```
///
/// `features.dir` is relative to the manifest's directory and the feature files to it (the feature
/// models are shared by all models); `head.path` is relative to the manifest's directory. Unknown
/// keys are refused, so a misspelt key cannot silently fall back to a default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VerifierSpec {
    pub features: FeatureModels,
    pub head: VerifierFile,
    /// Consecutive embeddings (80 ms apart) per head input; 9 for the research head.
    pub embeddings_per_view: usize,
    /// The view is centred on the candidate time plus this (ms).
    pub centre_offset_ms: i32,
    /// Shifted views on each side of the candidate's view: the verdict's probabilities are, per
    /// class, the minimum of the head's over the `2 · view_shifts + 1` views of
    /// `embeddings_per_view` embeddings shifted by `−view_shifts..=view_shifts` embeddings (80 ms
    /// each), all cut from one clip of [`clip_embeddings`](Self::clip_embeddings) embeddings centred
    /// where the single view is. 0 (absent: manifests before 2.6.0): the candidate's view alone.
    #[serde(default)]
    pub view_shifts: usize,
    /// What the first stage compares with t1; `best_keyword` when absent (manifests before 2.3.0).
    #[serde(default)]
    pub candidate_rule: crate::cascade::CandidateRule,
    /// First-stage threshold t1: a window whose candidate score (`candidate_rule`) is `>=` this
    /// proposes a candidate.
    pub first_stage_threshold: f32,
    /// Verifier threshold v per keyword (every keyword must have one).
    pub thresholds: BTreeMap<String, f32>,
    /// After a rejected candidate, no new candidate before `end_ms + reject_gap_ms`.
    pub reject_gap_ms: u32,
    /// Licence status of the feature models and head, for model info and audits.
    pub licence: String,
}

/// The shared feature models of a verifier.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureModels {
    /// Directory of the two files, relative to the manifest's directory.
    pub dir: String,
    pub mel: VerifierFile,
    pub embedding: VerifierFile,
}

/// Largest `view_shifts` accepted.
pub const MAX_VIEW_SHIFTS: usize = 4;

/// Largest |centre_offset_ms| accepted.
pub const MAX_VERIFIER_OFFSET_MS: i32 = 2000;

impl VerifierSpec {
    /// Embeddings of a candidate's clip: the view and the shifted views around it.
    pub fn clip_embeddings(&self) -> usize {
        self.embeddings_per_view + 2 * self.view_shifts
    }

    fn validate(&self, keywords: &[String]) -> Result<(), String> {
        for (what, f) in [
            ("features.mel", &self.features.mel),
            ("features.embedding", &self.features.embedding),
            ("head", &self.head),
        ] {
            if f.path.is_empty() || Path::new(&f.path).is_absolute() {
                return Err(format!("{what}.path {:?} must be a relative path", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{what}.sha256 {:?} is not 64 hex digits", f.sha256));
            }
        }
        if self.features.dir.is_empty() || Path::new(&self.features.dir).is_absolute() {
            return Err(format!(
                "features.dir {:?} must be a relative path (\".\" for the manifest's directory)",
                self.features.dir
            ));
        }
        if !(1..=crate::verifier::MAX_VIEW_EMBEDDINGS).contains(&self.embeddings_per_view) {
            return Err(format!(
                "embeddings_per_view {} is not supported: use 1..={}",
                self.embeddings_per_view,
                crate::verifier::MAX_VIEW_EMBEDDINGS
            ));
        }
        if self.view_shifts > MAX_VIEW_SHIFTS || self.clip_embeddings() > crate::verifier::MAX_VIEW_EMBEDDINGS
        {
            return Err(format!(
                "view_shifts {} is not supported: use 0..={MAX_VIEW_SHIFTS}, with embeddings_per_view + 2 · view_shifts <= {}",
                self.view_shifts,
                crate::verifier::MAX_VIEW_EMBEDDINGS
            ));
        }
        if self.centre_offset_ms.abs() > MAX_VERIFIER_OFFSET_MS {
            return Err(format!(
                "centre_offset_ms {} is outside -{MAX_VERIFIER_OFFSET_MS}..={MAX_VERIFIER_OFFSET_MS}",
                self.centre_offset_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.first_stage_threshold) {
            return Err(format!(
                "first_stage_threshold {} is outside [0, 1]",
                self.first_stage_threshold
            ));
        }
        for (k, v) in &self.thresholds {
            if !keywords.contains(k) {
                return Err(format!("threshold for {k:?}, which is not a keyword"));
            }
            if !(0.0..=1.0).contains(v) {
                return Err(format!("threshold {v} for {k:?} is outside [0, 1]"));
            }
        }
        let missing: Vec<&str> = keywords
            .iter()
            .filter(|k| !self.thresholds.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!("no threshold for {}", missing.join(", ")));
        }
        if self.reject_gap_ms > crate::decoder::MAX_REFRACTORY_MS {
            return Err(format!(
                "reject_gap_ms {} is not supported: use 0..={}",
                self.reject_gap_ms,
                crate::decoder::MAX_REFRACTORY_MS
            ));
        }
        if self.licence.trim().is_empty() {
            return Err("licence must say under which terms the feature models and head are used".into());
        }
        Ok(())
    }

    /// Verifier thresholds in keyword order.
    pub fn thresholds_for(&self, keywords: &[String]) -> Vec<f32> {
        keywords
            .iter()
            .map(|k| self.thresholds.get(k).copied().unwrap_or(1.0))
            .collect()
    }

    /// Paths of the mel, embedding and head files for a manifest in `dir`.
    pub fn paths(&self, dir: &Path) -> [PathBuf; 3] {
        let features = dir.join(&self.features.dir);
        [
            features.join(&self.features.mel.path),
            features.join(&self.features.embedding.path),
            dir.join(&self.head.path),
        ]
    }

    /// Read the three files and check their sha256.
    #[cfg(feature = "onnx")]
    pub fn read_verified(&self, dir: &Path) -> Result<crate::verifier::VerifierFiles, ModelError> {
        let [mel, embedding, head] = self.paths(dir);
        Ok(crate::verifier::VerifierFiles {
            mel: read_checked(mel, &self.features.mel.sha256)?,
            embedding: read_checked(embedding, &self.features.embedding.sha256)?,
            head: read_checked(head, &self.head.sha256)?,
        })
    }
}
