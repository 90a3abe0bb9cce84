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
        let path = self.dir.join(&spec.path);
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&spec.sha256) {
            return Err(ModelError::Checksum {
                path,
                expected: spec.sha256.clone(),
                actual,
            });
        }
        Ok((path, bytes))
    }
}
