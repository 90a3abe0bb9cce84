//! kws-models: the synchronous keyword-spotting core shared by the server and the on-device build.
//!
//! One [`Spotter`] per audio stream turns raw PCM chunks of any size into scoring windows:
//!
//! ```text
//! PCM bytes ─▶ pcm (s16le/f32le, 1–8 ch → mono f32) ─▶ resample (rubato → 16 kHz, delay-compensated)
//!          ─▶ frontend (incremental MFCC, 40 x 10 ms) ─▶ 98-frame ring ─▶ WindowBatch [N, 98, 40]
//! WindowBatch ─▶ Scorer (ONNX Runtime, batched across streams) ─▶ probs [N, 12]
//! probs ─▶ Spotter::apply ─▶ decoder (smoothing, thresholds, refractory) ─▶ Event
//!       └▶ with a verifier: smoothed ─▶ cascade ─▶ candidate ─▶ Spotter::ready_clip (16-kHz samples)
//!          ─▶ ClipScorer (Verifier, batched across streams) ─▶ Spotter::verdict ─▶ Event
//! ```
//!
//! A streamable model (manifest section `streaming`) replaces the ring and the window batch: a
//! `Spotter` made with `Spotter::new_streaming` keeps the model's state, and `StreamScorer` scores
//! one 20-ms hop `[N, 2, 40]` of N streams with their states, giving the same posteriors on the
//! same windows; decoder and cascade are the windowed path's.
//!
//! The frontend and decoder follow `models/README.md` exactly; golden vectors from the Python
//! reference pin them (`tests/golden.rs`). Nothing here spawns threads, blocks, or logs; errors are
//! returned. Per-stream state is about 20 KiB (a cascade adds its 76-KiB sample ring); models, FFT
//! plans and tables are shared.
//!
//! # Layout
//! - [`pcm`]: decoding and validation of raw chunks.
//! - [`resample`]: streaming rubato resampler to 16 kHz.
//! - [`frontend`]: the MFCC frontend.
//! - [`decoder`]: posteriors to events.
//! - [`scorer`]: the [`Scorer`] trait and [`OnnxScorer`] (feature `onnx`, on by default).
//! - [`manifest`]: model manifests and their checks.
//! - [`cpu`]: which int8 kernels ONNX Runtime picks on this CPU (for logs and model info).
//! - [`eval`]: matching detections to ground truth, decoding at a grid of thresholds.
//! - [`spotter`]: the per-stream pipeline; [`StreamConfig::resolve`] (a stream's settings from the
//!   manifest and a client's overrides) and [`Spotter::score_windows`] (scoring pending windows in
//!   order), the rules the service and `kws-client eval --local` share.
//! - [`verifier`]: the second stage's audio geometry and its scorer ([`Verifier`], feature `onnx`):
//!   a head on `speech_embedding` features re-scores candidates.
//! - [`cascade`]: the cascade decision rule (first-stage candidates, late verdicts, events).
//! - [`two_stage`]: the cascade inside a [`Spotter`] (when the manifest has a verifier): a ring of
//!   the stream's 16-kHz samples, candidates' clips ([`Spotter::ready_clip`]) and verdicts
//!   ([`Spotter::verdict`]).
//! - [`streaming`]: streaming (external-state) models: the state layout ([`StateLayout`]) a
//!   streaming [`Spotter`] keeps instead of a 98-frame ring, [`StreamScorer`] scores one hop of
//!   many streams per call.

#![forbid(unsafe_code)]

pub mod cascade;
pub mod cpu;
pub mod decoder;
pub mod error;
pub mod eval;
pub mod frontend;
pub mod manifest;
pub mod pcm;
pub mod resample;
pub mod scorer;
pub mod spotter;
pub mod streaming;
pub mod two_stage;
pub mod verifier;

pub use cascade::{Candidate, Cascade, CascadeConfig, CascadeError, CascadeEvent, Resolution};
pub use decoder::{Decoder, DecoderConfig, Event};
pub use error::{AudioError, ConfigError, ModelError, RuntimeError, ScoreError};
pub use manifest::Manifest;
pub use pcm::{Encoding, PcmFormat};
pub use scorer::Scorer;
#[cfg(feature = "onnx")]
pub use scorer::{OnnxScorer, ScorerOptions};
pub use spotter::{
    ApplyError, DecoderOverrides, FirstStage, Hop, OrderError, ProcessError, Spotter, StreamConfig,
    WindowBatch, WindowMeta, WireOverrides,
};
#[cfg(feature = "onnx")]
pub use streaming::OnnxStreamScorer;
pub use streaming::{StateLayout, StreamScorer, StreamingSpec};
pub use two_stage::{CascadeSettings, ClipScorer, ReadyClip};
#[cfg(feature = "onnx")]
pub use verifier::Verifier;
pub use verifier::{Clip, ClipRange, VerifyError, View};
