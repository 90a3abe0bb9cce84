//! Error types. Construction errors (bad configuration, missing or mismatched model) are separate
//! from the per-chunk errors of a running stream, which stay small and allocation-free.

use std::path::PathBuf;

/// A stream or decoder configuration that cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("sample rate {0} Hz is not supported: use 8000..=192000 Hz")]
    SampleRate(u32),
    #[error("{0} channels is not supported: use 1..=8 interleaved channels")]
    Channels(u16),
    #[error("hop of {0} frames is not supported: use 1..=98 frames (10 ms each)")]
    Hop(u32),
    #[error(
        "hop of {got} frames ({} ms) is not supported by this streaming model: its graph scores hops of {model} frames ({} ms) only; leave hop_ms unset (0) or set it to {}",
        got * 10, model * 10, model * 10
    )]
    StreamingHop { got: u32, model: u32 },
    #[error("hop_ms {0} must be a multiple of 10 in 10..=980")]
    HopMs(u32),
    #[error(
        "{listed} keywords listed, but the model has only {model}: list each keyword at most once ({known})"
    )]
    TooManyKeywords {
        listed: usize,
        model: usize,
        known: String,
    },
    /// `field` is where the name was given: `keywords` or `thresholds`.
    #[error("unknown keyword {name:?} in {field}: the model's keywords are {known}")]
    UnknownKeyword {
        field: &'static str,
        name: String,
        known: String,
    },
    #[error("keyword {0:?} is listed twice in keywords: list each keyword at most once")]
    DuplicateKeyword(String),
    #[error("threshold {value} for {keyword:?} is outside [0, 1]")]
    Threshold { keyword: String, value: f32 },
    #[error("smoothing span {0} ms is not supported: use 0..=1000 ms")]
    Smoothing(u32),
    #[error("refractory period {0} ms is not supported: use 0..=10000 ms")]
    Refractory(u32),
    #[error("no keyword is enabled: the keyword subset selects none of {known}")]
    NoKeywords { known: String },
    #[error("resampler for {rate} Hz could not be built: {reason}")]
    Resampler { rate: u32, reason: String },
    /// The cascade's settings are out of range (e.g. a verdict threshold).
    #[error("{0}")]
    Cascade(String),
}

/// A chunk of audio that cannot be decoded. Nothing of the chunk is consumed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AudioError {
    #[error(
        "chunk of {len} bytes is not a whole number of frames: {encoding} with {channels} channel(s) needs a multiple of {frame_bytes} bytes"
    )]
    PartialFrame {
        len: usize,
        frame_bytes: usize,
        encoding: &'static str,
        channels: u16,
    },
    #[error(
        "f32 sample {value} at frame {frame}, channel {channel} is not finite or not normalized (|x| <= 8; full scale is 1.0)"
    )]
    BadFloat {
        frame: usize,
        channel: usize,
        value: f32,
    },
    #[error("the stream was already finished; no more audio can be pushed")]
    Finished,
    #[error("empty chunk")]
    Empty,
    #[error("resampler failed: {0}")]
    Resample(String),
}

/// The model manifest or file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("manifest {path} is not valid: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("model file {path} has sha256 {actual}, but the manifest says {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model variant {0:?} is not in the manifest (available: {1})")]
    Variant(String, String),
    #[error("model {path} does not match its manifest: {reason}")]
    Shape { path: PathBuf, reason: String },
}

/// ONNX Runtime could not be loaded or could not run the model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (tried: {tried}); run deploy/fetch-onnxruntime.sh or set KWS_ORT_LIB to libonnxruntime.so"
    )]
    LibraryNotFound { tried: String },
    #[error("ONNX Runtime library {path} could not be loaded: {reason}")]
    LibraryLoad { path: PathBuf, reason: String },
    #[error("ONNX Runtime session for {path} could not be created: {reason}")]
    Session { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A scoring call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    #[error("batch of {got} values is not N x 98 x 40 features")]
    InputShape { got: usize },
    #[error("output buffer of {got} values does not fit N = {n} windows x {classes} classes")]
    OutputShape { got: usize, n: usize, classes: usize },
    #[error(
        "state buffers of {got_in} (in) and {got_out} (out) values do not fit N = {n} streams x {per_stream} values"
    )]
    StateShape {
        got_in: usize,
        got_out: usize,
        n: usize,
        per_stream: usize,
    },
    #[error("inference failed: {0}")]
    Runtime(String),
}
