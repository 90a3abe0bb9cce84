//! kws-service: the gRPC keyword-spotting service.
//!
//! ```text
//! client ══ Detect stream ══▶ grpc (admission, config) ──▶ session task (one per stream)
//!                                                          │ Spotter: PCM → 16 kHz → MFCC → windows
//!                                                          ▼
//!                              batcher (per model): bounded queue ──▶ inference workers (OS threads,
//!                                                                    one ONNX Runtime session each)
//!                                                          ▼
//!                              session: posteriors in order → decoder → events ══▶ client
//!                                       └ model with a verifier: smoothed → cascade → candidate clip
//!                              verify (per model): bounded queue ──▶ verifier workers (OS threads)
//!                                       └ verdict → event ══▶ client
//! ```
//!
//! # Layout
//! - [`config`]: TOML + env + CLI configuration, validated (exit 64), with `Duration` accessors.
//! - [`grpc`]: handlers; [`validation`]: every client message checked (`StreamConfig` →
//!   `ValidStream`, labels, chunks); [`session`]: the per-stream task (its event loop, scoring in
//!   order, the summary); [`response`]: the response stream (slow readers, summary delivery);
//!   [`batcher`]: dynamic batching (`max_batch` windows at most per call); [`verify`]: the
//!   verifier's workers (candidate clips of all streams, batched) for models with a cascade.
//! - [`registry`]: served models; [`eval`]: live evaluation on labelled streams; [`feedback`]: event ids.
//! - [`telemetry`]: metric names and logging; [`shutdown`]: drain; [`server`]: wiring it together.
//! - [`auth`]: bearer tokens (interceptor, reload); [`tls`]: TLS and mTLS settings.
//! - [`admission`]: streams awaiting their config vs configured streams; [`memory`]: heap trimming;
//!   [`guard`]: HTTP 415 for non-gRPC requests, a message for UNIMPLEMENTED.
//!
//! Guarantees, limits and the status of every bad input: `RELIABILITY.md`.

// No panic reachable from input: besides the workspace's `unwrap_used = deny`, non-test code may not
// `expect` or `panic!` either (the fuzz target and property tests look for the rest).
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::panic))]

pub mod admission;
pub mod auth;
pub mod batcher;
pub mod config;
pub mod error;
pub mod eval;
pub mod feedback;
pub mod grpc;
pub mod guard;
pub mod memory;
pub mod registry;
pub mod response;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod validation;
pub mod verify;
