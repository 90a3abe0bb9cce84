//! One task per Detect stream: it owns the stream's `Spotter`, feeds audio through it, sends the due
//! windows to the model's batcher, applies the posteriors in order and sends events.
//!
//! Backpressure, in order of what fills up first:
//! - windows queued for scoring above `max_inflight_windows`: the task stops reading the client's
//!   messages until replies come back (HTTP/2 flow control then slows the client); a large chunk is
//!   enqueued in parts as replies come back;
//! - feature bytes queued by all streams above `max_queued_bytes`: the stream waits for room (it
//!   applies its own replies meanwhile, so waiting never deadlocks);
//! - the batcher queue: `submit` waits;
//! - the response buffer: sends wait up to `slow_reader_timeout`, then the stream ends with
//!   RESOURCE_EXHAUSTED. Audio is never dropped: every chunk accepted is scored before the summary.
//!
//! How a stream ends: half-close → flush, summary, OK. Drain grace over, idle timeout or lifetime
//! limit → flush, summary (of everything received), then UNAVAILABLE / DEADLINE_EXCEEDED. Bad input
//! → INVALID_ARGUMENT at once. Client gone → nothing to send. Audio accounting: received audio is
//! counted as processed as its windows are scored; whatever is left when a stream ends abnormally is
//! counted as unprocessed with the outcome (`kws_audio_unprocessed_seconds_total`), so nothing is
//! lost silently.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kws_models::frontend::WINDOW_VALUES;
use kws_models::{DecoderConfig, Encoding, PcmFormat, Spotter, StreamConfig, WindowBatch, WindowMeta};
use kws_proto::v1::{self, detect_request, detect_response};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::Status;
use tracing::Instrument;

use crate::batcher::{Job, JobResult};
use crate::config::ServerConfig;
use crate::error::{ServiceError, outcome_of};
use crate::eval::{Evaluator, label_from_proto};
use crate::feedback::EventStore;
use crate::registry::ServedModel;
use crate::shutdown::Phase;
use crate::telemetry::names;

/// Input frames handled per step before yielding to the runtime, so a large chunk does not hold a
/// tokio worker for long (~1 ms of work per step at 48 kHz).
const FRAMES_PER_STEP: usize = 4096;
/// Shortest time a stream stays `behind` once flagged (no flapping at the queue limits).
const BEHIND_HOLD: Duration = Duration::from_secs(2);
/// Spare feature buffers kept per stream for reuse...
const SPARE_BUFFERS: usize = 4;
/// ... each of at most this many windows (a real-time stream's jobs hold one).
const SPARE_MAX_WINDOWS: usize = 4;

/// What a stream asked for, after validation and defaults.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub stream: StreamConfig,
    /// Enabled keywords (class indices, ascending) — the order of trace scores.
    pub keywords: Vec<usize>,
    pub proto: v1::ResolvedConfig,
    pub progress_ms: Option<u64>,
    pub trace: bool,
    pub known_negative: bool,
}

/// Validate a client's config against the model and the server limits.
pub fn resolve(
    cfg: &v1::StreamConfig,
    model: &ServedModel,
    server: &ServerConfig,
) -> Result<Resolved, ServiceError> {
    let m = &model.manifest;
    let invalid = |s: String| ServiceError::InvalidConfig(s);
    let encoding = match v1::AudioEncoding::try_from(cfg.encoding) {
        Ok(v1::AudioEncoding::PcmS16le) => Encoding::S16Le,
        Ok(v1::AudioEncoding::PcmF32le) => Encoding::F32Le,
        _ => {
            return Err(invalid(format!(
                "encoding {} is not supported: use AUDIO_ENCODING_PCM_S16LE (1) or AUDIO_ENCODING_PCM_F32LE (2)",
                cfg.encoding
            )));
        }
    };
    let channels = u16::try_from(cfg.channels).map_err(|_| {
        invalid(format!(
            "{} channels is not supported: use 1..=8 interleaved channels",
            cfg.channels
        ))
    })?;
    let format =
        PcmFormat::new(encoding, cfg.sample_rate_hz, channels).map_err(|e| invalid(e.to_string()))?;
    let known = m.keywords.join(", ");
    let mut enabled = vec![cfg.keywords.is_empty(); m.keywords.len()];
    if cfg.keywords.len() > m.keywords.len() {
        return Err(invalid(format!(
            "{} keywords listed, but the model has only {}: list each keyword at most once ({known})",
            cfg.keywords.len(),
            m.keywords.len()
        )));
    }
    for k in &cfg.keywords {
        let i = m.keyword_index(k).ok_or_else(|| {
            invalid(format!(
                "unknown keyword {k:?} in keywords: the model's keywords are {known}"
            ))
        })?;
        if enabled[i] {
            return Err(invalid(format!(
                "keyword {k:?} is listed twice in keywords: list each keyword at most once"
            )));
        }
        enabled[i] = true;
    }
    let mut thresholds = m.default_thresholds();
    for (k, v) in &cfg.thresholds {
        let i = m.keyword_index(k).ok_or_else(|| {
            invalid(format!(
                "unknown keyword {k:?} in thresholds: the model's keywords are {known}"
            ))
        })?;
        if !(0.0..=1.0).contains(v) {
            return Err(invalid(format!("threshold {v} for {k:?} is outside [0, 1]")));
        }
        thresholds[i] = *v;
    }
    if cfg.client_stream_id.len() > 128 {
        return Err(invalid("client_stream_id is longer than 128 bytes".into()));
    }
    let hop_frames = match cfg.hop_ms {
        0 => m.window.default_hop_frames,
        ms if ms % 10 == 0 && (10..=980).contains(&ms) => ms / 10,
        ms => {
            return Err(invalid(format!(
                "hop_ms {ms} must be a multiple of 10 in 10..=980"
            )));
        }
    };
    let smoothing_ms = match (cfg.no_smoothing, cfg.smoothing_ms) {
        (true, _) => 0,
        (false, 0) => m.decoder.smoothing_ms,
        (false, v) => v,
    };
    let refractory_ms = match (cfg.no_refractory, cfg.refractory_ms) {
        (true, _) => 0,
        (false, 0) => m.decoder.refractory_ms,
        (false, v) => v,
    };
    let decoder = DecoderConfig {
        smoothing_ms,
        refractory_ms,
        thresholds: thresholds
            .iter()
            .zip(&enabled)
            .map(|(t, e)| e.then_some(*t))
            .collect(),
    };
    decoder
        .validate(&m.keywords)
        .map_err(|e| invalid(e.to_string()))?;
    let keywords: Vec<usize> = (0..m.keywords.len()).filter(|&i| enabled[i]).collect();
    let progress_ms = (!cfg.disable_progress).then(|| {
        u64::from(if cfg.progress_interval_ms == 0 {
            server.progress_interval_ms
        } else {
            cfg.progress_interval_ms
        })
    });
    let proto = v1::ResolvedConfig {
        encoding: cfg.encoding,
        sample_rate_hz: cfg.sample_rate_hz,
        channels: cfg.channels,
        keywords: keywords.iter().map(|&i| m.keywords[i].clone()).collect(),
        thresholds: keywords
            .iter()
            .map(|&i| (m.keywords[i].clone(), thresholds[i]))
            .collect(),
        hop_ms: hop_frames * 10,
        smoothing_ms,
        refractory_ms,
        score_trace: cfg.score_trace,
        progress_interval_ms: progress_ms.unwrap_or(0) as u32,
        known_negative: cfg.known_negative,
        client_stream_id: cfg.client_stream_id.clone(),
        max_chunk_bytes: server.max_chunk_bytes as u32,
    };
    Ok(Resolved {
        stream: StreamConfig {
            format,
            hop_frames,
            decoder,
        },
        keywords,
        proto,
        progress_ms,
        trace: cfg.score_trace,
        known_negative: cfg.known_negative,
    })
}

/// Validate one audio chunk against the server limit and the stream's format; returns its frames.
pub fn check_chunk(data: &[u8], max_chunk_bytes: usize, format: &PcmFormat) -> Result<usize, ServiceError> {
    if data.is_empty() {
        return Err(ServiceError::InvalidAudio(format!(
            "empty audio chunk: AudioChunk.data must hold at least one frame ({} bytes)",
            format.frame_bytes()
        )));
    }
    if data.len() > max_chunk_bytes {
        return Err(ServiceError::InvalidAudio(format!(
            "chunk of {} bytes exceeds the maximum of {max_chunk_bytes} bytes (ResolvedConfig.max_chunk_bytes): send smaller chunks",
            data.len()
        )));
    }
    format
        .validate(data)
        .map_err(|e| ServiceError::InvalidAudio(e.to_string()))
}

/// What an error reading the client's messages means: `Some` for a message the server could not
/// accept (too large, undecodable), which the client is told about; `None` when the client or its
/// connection went away (nothing can be sent).
pub fn inbound_error(status: &Status, max_chunk_bytes: usize) -> Option<ServiceError> {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Some(ServiceError::BadMessage(format!(
            "{}: the largest accepted AudioChunk.data is {max_chunk_bytes} bytes (ResolvedConfig.max_chunk_bytes); send smaller chunks",
            status.message()
        ))),
        tonic::Code::Internal if !status.message().starts_with("h2 protocol error") => Some(
            ServiceError::BadMessage(format!("cannot decode the DetectRequest: {}", status.message())),
        ),
        _ => None,
    }
}

/// The response stream handed to tonic: in-band messages, plus a priority slot for the terminal
/// status of a client that does not read (its buffer is full, so the status cannot queue behind).
#[derive(Debug)]
pub struct ResponseStream {
    rx: mpsc::Receiver<Result<v1::DetectResponse, Status>>,
    abort: Option<oneshot::Receiver<Status>>,
    /// Notified when tonic takes the summary: the session then knows the call was not reset.
    summary_taken: Arc<tokio::sync::Notify>,
}

impl Stream for ResponseStream {
    type Item = Result<v1::DetectResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.abort = None;
                    self.rx.close();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(v1::DetectResponse {
            response: Some(detect_response::Response::Summary(_)),
        }))) = &item
        {
            self.summary_taken.notify_one();
        }
        item
    }
}

/// Everything a session needs from the server.
#[derive(Debug, Clone)]
pub struct SessionDeps {
    pub server: Arc<ServerConfig>,
    pub phase: watch::Receiver<Phase>,
    pub events: Arc<EventStore>,
    pub evaluation: Arc<crate::eval::EvalSettings>,
    /// Slots of configured streams (`max_streams` permits).
    pub active: Arc<Semaphore>,
    /// Streams that have not sent their config yet (see `admission`).
    pub awaiting: Arc<crate::admission::AwaitingBudget>,
    /// Process-wide budget of windows queued for scoring (`max_queued_bytes / WINDOW_BYTES`).
    pub queued: Arc<Semaphore>,
    /// How late the runtime's tasks run (smoothed): audio waits this long before it is even read
    /// and fed to the frontend when the CPU is short (see `server::probe_runtime_lag`).
    pub runtime_lag: Arc<crate::batcher::QueueWait>,
    /// Admitted streams whose first window has not been scored yet (their load does not show).
    pub warming: Arc<std::sync::atomic::AtomicUsize>,
    /// The process's CPU against the pod's CPU limit (admission; see `admission::CpuMeter`).
    pub cpu: Arc<crate::admission::CpuMeter>,
}

/// Counts a stream in [`SessionDeps::warming`] until its first window is scored (or it ends).
#[derive(Debug)]
struct Warming(Arc<std::sync::atomic::AtomicUsize>);

impl Warming {
    fn new(n: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Warming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes of one window of features.
pub const WINDOW_BYTES: usize = WINDOW_VALUES * std::mem::size_of::<f32>();

/// Start a session for an admitted stream whose config message has been validated. Returns the
/// response stream; the session runs as its own task and holds `permit` until it ends.
pub fn start(
    inbound: tonic::Streaming<v1::DetectRequest>,
    model: Arc<ServedModel>,
    resolved: Resolved,
    deps: SessionDeps,
    permit: tokio::sync::OwnedSemaphorePermit,
    opened: Instant,
) -> Result<ResponseStream, ServiceError> {
    let spotter = Spotter::new(resolved.stream.clone(), model.manifest.num_classes())
        .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?;
    let (tx, rx) = mpsc::channel(deps.server.response_buffer);
    let tx_for_guard = tx.clone();
    let summary_taken = Arc::new(tokio::sync::Notify::new());
    let (abort_tx, abort_rx) = oneshot::channel();
    let stream_id = format!("{:016x}", rand::random::<u64>());
    deps.events.insert_stream(&stream_id, &model.name);
    let span = tracing::info_span!("stream", stream_id = %stream_id, model = %model.name,
        client_stream_id = %resolved.proto.client_stream_id);
    let session = Session {
        id: stream_id,
        evaluator: Evaluator::new(&deps.evaluation, &model.manifest, &resolved),
        warming: Some(Warming::new(&deps.warming)),
        model,
        resolved,
        spotter,
        inbound,
        tx,
        abort: Some(abort_tx),
        summary_taken: summary_taken.clone(),
        deps,
        opened,
        pending: VecDeque::new(),
        spare: Vec::new(),
        inflight_windows: 0,
        processed_ms: 0,
        received_counted_ms: 0,
        processed_counted_ms: 0,
        next_progress_ms: 0,
        behind: false,
        behind_since: None,
        first_audio: None,
        throttled: false,
        events: 0,
        windows: 0,
    };
    let guard_tx = tx_for_guard;
    let task = tokio::spawn(
        async move {
            // Dropped on return and on unwind alike: the slot and the gauge always come back.
            let _active = Active::new(permit);
            session.run().await;
        }
        .instrument(span.clone()),
    );
    // No panic is reachable from input (clippy denies unwrap; see RELIABILITY.md), but if one ever
    // happens the client gets INTERNAL instead of a silently truncated stream.
    tokio::spawn(
        async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                metrics::counter!(names::STREAMS, "outcome" => "internal").increment(1);
                tracing::error!("stream task panicked");
                let _ = guard_tx.try_send(Err(Status::internal(
                    "internal error: the stream's task failed; the audio sent was not fully processed",
                )));
            }
        }
        .instrument(span),
    );
    Ok(ResponseStream {
        rx,
        abort: Some(abort_rx),
        summary_taken,
    })
}

/// Audio received in ms, rounded up (a label may end at the last, partial millisecond).
fn audio_ceil_ms(spotter: &Spotter) -> u64 {
    (spotter.frames_received() * 1000).div_ceil(u64::from(spotter.format().sample_rate()))
}

/// Holds a stream's admission permit and its `kws_active_streams` increment.
struct Active(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Active {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics::gauge!(names::ACTIVE_STREAMS).increment(1.0);
        Self(permit)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!(names::ACTIVE_STREAMS).decrement(1.0);
    }
}

/// The reply of the oldest pending job (never resolves if there is none).
async fn reply(head: &mut Option<Pending>) -> Result<JobResult, oneshot::error::RecvError> {
    match head.as_mut() {
        Some(h) => (&mut h.rx).await,
        None => std::future::pending().await,
    }
}

struct Pending {
    windows: Vec<WindowMeta>,
    arrived: Instant,
    rx: oneshot::Receiver<JobResult>,
    /// This job's share of the process-wide budget, returned once its reply is applied.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

struct Session {
    id: String,
    model: Arc<ServedModel>,
    resolved: Resolved,
    spotter: Spotter,
    inbound: tonic::Streaming<v1::DetectRequest>,
    tx: mpsc::Sender<Result<v1::DetectResponse, Status>>,
    abort: Option<oneshot::Sender<Status>>,
    summary_taken: Arc<tokio::sync::Notify>,
    deps: SessionDeps,
    opened: Instant,
    pending: VecDeque<Pending>,
    spare: Vec<Vec<f32>>,
    inflight_windows: usize,
    processed_ms: u64,
    /// Audio already added to the received / processed totals (ms of the stream clock).
    received_counted_ms: u64,
    processed_counted_ms: u64,
    next_progress_ms: u64,
    behind: bool,
    /// When `behind` last became true (it is held for at least [`BEHIND_HOLD`]).
    behind_since: Option<Instant>,
    /// When the first audio arrived: a real-time client has sent `now - first_audio` of audio.
    first_audio: Option<Instant>,
    /// The server held this stream back (per-stream or process-wide queue limit) at its last read.
    throttled: bool,
    events: u64,
    windows: u64,
    evaluator: Evaluator,
    warming: Option<Warming>,
}

/// Why the main loop stopped reading the client.
enum End {
    /// Half-close: finish and send the summary.
    Finished,
    /// Drain grace over, idle timeout or lifetime limit: finish, send the summary of what was
    /// received, then end with this error (UNAVAILABLE or DEADLINE_EXCEEDED).
    Closed(ServiceError),
    Error(ServiceError),
    /// The client went away (cancelled or connection lost): nothing more to send.
    Gone,
}

impl Session {
    async fn run(mut self) {
        let end = self.main_loop().await;
        let outcome = match end {
            End::Gone => "cancelled",
            End::Error(ServiceError::SlowReader(ms)) => {
                let e = ServiceError::SlowReader(ms);
                tracing::warn!(error = %e, "stream ended");
                if let Some(a) = self.abort.take() {
                    let _ = a.send(e.clone().into());
                }
                e.outcome()
            }
            End::Error(e) => {
                tracing::info!(error = %e, "stream ended with error");
                let _ = self.tx.send(Err(e.clone().into())).await;
                e.outcome()
            }
            End::Finished | End::Closed(_) => match self.finish().await {
                Ok(delivered) => {
                    if let End::Closed(e) = end {
                        tracing::info!(error = %e, "stream closed by the server after its summary");
                        let outcome = e.outcome();
                        let _ = self.tx.send(Err(e.into())).await;
                        outcome
                    } else if delivered {
                        "ok"
                    } else {
                        "cancelled"
                    }
                }
                Err(End::Error(e)) => {
                    tracing::info!(error = %e, "stream ended with error");
                    let code = Status::from(e.clone()).code();
                    match e {
                        ServiceError::SlowReader(_) => {
                            if let Some(a) = self.abort.take() {
                                let _ = a.send(e.into());
                            }
                        }
                        e => {
                            let _ = self.tx.send(Err(e.into())).await;
                        }
                    }
                    outcome_of(code)
                }
                Err(_) => "cancelled",
            },
        };
        let unprocessed_ms = self.received_counted_ms.saturating_sub(self.processed_counted_ms);
        metrics::gauge!(names::AUDIO_UNPROCESSED, "model" => self.model.name.clone(), "outcome" => outcome)
            .increment(unprocessed_ms as f64 / 1000.0);
        metrics::counter!(names::STREAMS, "outcome" => outcome).increment(1);
        tracing::info!(
            outcome,
            audio_ms = self.spotter.audio_ms_received(),
            unprocessed_ms,
            events = self.events,
            "stream closed"
        );
    }

    async fn main_loop(&mut self) -> End {
        let ready = v1::DetectResponse {
            response: Some(detect_response::Response::Ready(v1::Ready {
                stream_id: self.id.clone(),
                model: Some(v1::ModelRef {
                    name: self.model.name.clone(),
                    version: self.model.manifest.version.clone(),
                    variant: self.model.variant.clone(),
                }),
                config: Some(self.resolved.proto.clone()),
            })),
        };
        if let Err(e) = self.send(ready).await {
            return e;
        }
        let server = self.deps.server.clone();
        let lifetime = tokio::time::sleep_until(
            (self.opened + Duration::from_millis(server.max_stream_lifetime_ms)).into(),
        );
        tokio::pin!(lifetime);
        let idle = Duration::from_millis(server.idle_timeout_ms);
        let mut last_message = Instant::now();
        let mut phase = self.deps.phase.clone();
        loop {
            if *phase.borrow() == Phase::Closing {
                return End::Closed(ServiceError::Draining);
            }
            let can_read = self.inflight_windows < server.max_inflight_windows;
            if !can_read {
                self.throttled = true;
            }
            let mut head = self.pending.pop_front();
            let tx = self.tx.clone();
            tokio::select! {
                biased;
                // The client reset the stream (or its connection died): stop working for it.
                _ = tx.closed() => return End::Gone,
                _ = &mut lifetime => {
                    if let Some(h) = head { self.pending.push_front(h); }
                    return End::Closed(ServiceError::Lifetime(server.max_stream_lifetime_ms));
                }
                changed = phase.changed() => {
                    if let Some(h) = head { self.pending.push_front(h); }
                    if changed.is_err() {
                        // The server is gone without a drain: finish like a drain.
                        return End::Closed(ServiceError::Draining);
                    }
                }
                r = reply(&mut head), if head.is_some() => {
                    let Some(h) = head.take() else { continue };
                    match r {
                        Ok(result) => if let Err(e) = self.apply(h.windows, h.arrived, result).await { return e },
                        Err(_) => return End::Error(ServiceError::Internal("scoring worker dropped a job".into())),
                    }
                }
                msg = self.inbound.message(), if can_read => {
                    if let Some(h) = head { self.pending.push_front(h); }
                    last_message = Instant::now();
                    match msg {
                        Ok(Some(req)) => if let Err(e) = self.handle(req).await { return e },
                        Ok(None) => return End::Finished,
                        Err(status) => {
                            tracing::debug!(status = %status, "client stream error");
                            return match inbound_error(&status, server.max_chunk_bytes) {
                                Some(e) => End::Error(e),
                                None => End::Gone,
                            };
                        }
                    }
                }
                _ = tokio::time::sleep_until((last_message + idle).into()), if can_read => {
                    if let Some(h) = head { self.pending.push_front(h); }
                    return End::Closed(ServiceError::Idle(server.idle_timeout_ms));
                }
            }
        }
    }

    async fn handle(&mut self, req: v1::DetectRequest) -> Result<(), End> {
        match req.request {
            Some(detect_request::Request::Audio(chunk)) => self.audio(chunk.data).await,
            Some(detect_request::Request::Label(label)) => {
                let label = label_from_proto(&label, &self.model.manifest)
                    .map_err(|e| End::Error(ServiceError::Protocol(e)))?;
                if !self.evaluator.add_label(label) {
                    return Err(End::Error(ServiceError::Protocol(format!(
                        "more than {} labels in one stream",
                        crate::eval::MAX_LABELS
                    ))));
                }
                Ok(())
            }
            Some(detect_request::Request::Config(_)) => Err(End::Error(ServiceError::Protocol(
                "config sent twice: only the first message may be a config".into(),
            ))),
            None => Err(End::Error(ServiceError::Protocol(
                "empty DetectRequest: set config, audio or label".into(),
            ))),
        }
    }

    async fn audio(&mut self, data: Vec<u8>) -> Result<(), End> {
        let arrived = Instant::now();
        self.first_audio.get_or_insert(arrived);
        self.throttled = false;
        let format = self.spotter.format();
        check_chunk(&data, self.deps.server.max_chunk_bytes, &format).map_err(End::Error)?;
        let step = FRAMES_PER_STEP * format.frame_bytes();
        for (i, piece) in data.chunks(step).enumerate() {
            if i > 0 {
                tokio::task::yield_now().await;
            }
            let mut batch = WindowBatch::with_buffer(self.spare.pop().unwrap_or_default());
            self.spotter
                .push_pcm(piece, &mut batch)
                .map_err(|e| End::Error(ServiceError::InvalidAudio(e.to_string())))?;
            self.count_received();
            self.submit(batch, arrived).await?;
        }
        self.check_behind().await
    }

    /// Add the audio received since the last call to the received total.
    fn count_received(&mut self) {
        let now = self.spotter.audio_ms_received();
        if now > self.received_counted_ms {
            metrics::gauge!(names::AUDIO_RECEIVED, "model" => self.model.name.clone())
                .increment((now - self.received_counted_ms) as f64 / 1000.0);
            self.received_counted_ms = now;
        }
    }

    /// Add the audio processed up to `upto_ms` (never beyond what was received) to the processed total.
    fn count_processed(&mut self, upto_ms: u64) {
        let now = upto_ms.min(self.received_counted_ms);
        if now > self.processed_counted_ms {
            metrics::gauge!(names::AUDIO_PROCESSED, "model" => self.model.name.clone())
                .increment((now - self.processed_counted_ms) as f64 / 1000.0);
            self.deps.cpu.add_processed(self.processed_counted_ms, now);
            self.processed_counted_ms = now;
        }
    }

    /// Send the windows of `batch` to the batcher in jobs of at most `max_batch` windows.
    async fn submit(&mut self, batch: WindowBatch, arrived: Instant) -> Result<(), End> {
        let (features, windows) = batch.into_parts();
        if windows.is_empty() {
            self.recycle(features);
            return Ok(());
        }
        let max = self.model.batcher.max_batch();
        if windows.len() <= max {
            return self.submit_job(features, windows, arrived).await;
        }
        for (i, metas) in windows.chunks(max).enumerate() {
            let part = features[i * max * WINDOW_VALUES..(i * max + metas.len()) * WINDOW_VALUES].to_vec();
            self.submit_job(part, metas.to_vec(), arrived).await?;
        }
        self.recycle(features);
        Ok(())
    }

    async fn submit_job(
        &mut self,
        features: Vec<f32>,
        windows: Vec<WindowMeta>,
        arrived: Instant,
    ) -> Result<(), End> {
        let n = windows.len();
        // Per stream: at most `max_inflight_windows` queued, also within one large chunk.
        while !self.pending.is_empty() && self.inflight_windows + n > self.deps.server.max_inflight_windows {
            self.apply_oldest().await?;
        }
        // Process-wide: room under `max_queued_bytes`. While there is none, apply this stream's own
        // replies (which frees its share); a stream with nothing queued waits its turn (fair queue).
        let budget = self.deps.queued.clone();
        let closed = || End::Error(ServiceError::Internal("the scoring budget was closed".into()));
        let mut waited = false;
        let permit = loop {
            match budget.clone().try_acquire_many_owned(n as u32) {
                Ok(p) => break p,
                Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    if !waited {
                        waited = true;
                        self.throttled = true;
                        metrics::counter!(names::QUEUE_BUDGET_WAITS).increment(1);
                    }
                    if self.pending.is_empty() {
                        break budget
                            .clone()
                            .acquire_many_owned(n as u32)
                            .await
                            .map_err(|_| closed())?;
                    }
                    self.apply_oldest().await?;
                }
            }
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            features,
            probs: Vec::new(),
            windows: n,
            enqueued: Instant::now(),
            reply,
        };
        self.inflight_windows += n;
        self.model
            .batcher
            .submit(job)
            .await
            .map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
        self.pending.push_back(Pending {
            windows,
            arrived,
            rx,
            _budget: permit,
        });
        Ok(())
    }

    /// Wait for the oldest queued job's reply and apply it.
    async fn apply_oldest(&mut self) -> Result<(), End> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let r =
            p.rx.await
                .map_err(|_| End::Error(ServiceError::Internal("scoring worker dropped a job".into())))?;
        self.apply(p.windows, p.arrived, r).await
    }

    fn recycle(&mut self, buf: Vec<f32>) {
        // Only small buffers are kept: the large ones of a big chunk would stay with the stream.
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_MAX_WINDOWS * WINDOW_VALUES {
            self.spare.push(buf);
        }
    }

    /// Apply a scored job in order: events, trace, progress.
    async fn apply(
        &mut self,
        windows: Vec<WindowMeta>,
        arrived: Instant,
        result: JobResult,
    ) -> Result<(), End> {
        self.inflight_windows -= windows.len();
        self.warming = None;
        if let Err(e) = &result.result {
            return Err(End::Error(ServiceError::Internal(format!(
                "inference failed: {e}"
            ))));
        }
        let classes = self.model.manifest.num_classes();
        let model_label = self.model.name.clone();
        let mut trace = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let probs = &result.probs[i * classes..(i + 1) * classes];
            let event = self
                .spotter
                .apply(w, probs)
                .map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
            self.evaluator
                .observe(w, self.spotter.smoothed(), event.as_ref().map(|e| e.class));
            if self.resolved.trace {
                let s = self.spotter.smoothed();
                trace.push(v1::WindowScores {
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    scores: self.resolved.keywords.iter().map(|&k| s[k]).collect(),
                });
            }
            self.processed_ms = w.end_ms;
            self.windows += 1;
            if let Some(e) = event {
                self.events += 1;
                let keyword = self.model.manifest.keywords[e.class].clone();
                let event_id = format!("{}-{}", self.id, self.events);
                metrics::counter!(names::EVENTS, "model" => model_label.clone(), "keyword" => keyword.clone())
                    .increment(1);
                metrics::histogram!(names::EVENT_LATENCY, "model" => model_label.clone())
                    .record(arrived.elapsed().as_secs_f64());
                self.deps.events.insert(&event_id, &self.model.name, &keyword);
                tracing::debug!(event_id, keyword, score = e.score, end_ms = e.end_ms, "keyword");
                self.send(v1::DetectResponse {
                    response: Some(detect_response::Response::Event(v1::KeywordEvent {
                        event_id,
                        keyword,
                        score: e.score,
                        start_ms: e.start_ms,
                        end_ms: e.end_ms,
                    })),
                })
                .await?;
            }
        }
        metrics::counter!(names::WINDOWS, "model" => model_label).increment(windows.len() as u64);
        self.count_processed(self.processed_ms);
        self.recycle(result.features);
        if !trace.is_empty() {
            self.send(v1::DetectResponse {
                response: Some(detect_response::Response::Trace(v1::ScoreTrace {
                    windows: trace,
                })),
            })
            .await?;
        }
        self.check_behind().await?;
        if let Some(every) = self.resolved.progress_ms
            && self.processed_ms >= self.next_progress_ms
        {
            self.next_progress_ms = self.processed_ms + every;
            self.progress().await?;
        }
        Ok(())
    }

    /// `behind`: unscored audio on the server above `behind_threshold_ms`, or the server is holding
    /// this stream back (queue limits) while it has read less audio than a real-time client has sent
    /// by now (the backlog is then on the client's side). Held for at least [`BEHIND_HOLD`], so a
    /// stream at the limits does not flap.
    async fn check_behind(&mut self) -> Result<(), End> {
        let threshold = self.deps.server.behind_threshold_ms;
        let received = self.spotter.audio_ms_received();
        let backlog = received.saturating_sub(self.processed_ms.max(1000));
        let unread = match (self.throttled, self.first_audio) {
            (true, Some(t)) => (t.elapsed().as_millis() as u64).saturating_sub(received),
            _ => 0,
        };
        let now = backlog > threshold || unread > threshold;
        let held = self.behind_since.is_some_and(|t| t.elapsed() < BEHIND_HOLD);
        let behind = now || (self.behind && held);
        if now {
            self.behind_since = Some(Instant::now());
        }
        if behind != self.behind {
            self.behind = behind;
            if behind {
                metrics::counter!(names::STREAMS_BEHIND, "model" => self.model.name.clone()).increment(1);
                tracing::warn!(
                    backlog_ms = backlog,
                    unread_ms = unread,
                    "scoring is behind the received audio"
                );
            }
            if self.resolved.progress_ms.is_some() {
                self.progress().await?;
            }
        }
        Ok(())
    }

    async fn progress(&mut self) -> Result<(), End> {
        self.send(v1::DetectResponse {
            response: Some(detect_response::Response::Progress(v1::Progress {
                audio_ms_received: self.spotter.audio_ms_received(),
                audio_ms_processed: self.processed_ms,
                behind: self.behind,
            })),
        })
        .await
    }

    /// End of input: flush the pipeline, score the rest, check the labels, send the summary. Returns
    /// whether the summary reached the response buffer (false: the client is gone).
    async fn finish(&mut self) -> Result<bool, End> {
        let mut batch = WindowBatch::with_buffer(self.spare.pop().unwrap_or_default());
        self.spotter
            .finish(&mut batch)
            .map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
        self.submit(batch, Instant::now()).await?;
        while !self.pending.is_empty() {
            self.apply_oldest().await?;
        }
        let processed_ms = self.spotter.audio_ms_processed();
        // Every window is scored and the frontend has consumed every sample: all of it is processed.
        self.count_processed(processed_ms);
        let received_ms = self.spotter.audio_ms_received();
        if let Some(e) = self.evaluator.label_beyond(audio_ceil_ms(&self.spotter)) {
            return Err(End::Error(ServiceError::Protocol(format!(
                "{e}, but the stream has {received_ms} ms of audio: labels must lie within the audio sent"
            ))));
        }
        let evaluation = self.evaluator.finish(processed_ms, &self.model.name);
        let summary = v1::Summary {
            audio_ms_received: received_ms,
            audio_ms_processed: processed_ms,
            events: self.events,
            windows_scored: self.windows,
            evaluation,
        };
        match self
            .send(v1::DetectResponse {
                response: Some(detect_response::Response::Summary(summary)),
            })
            .await
        {
            Ok(()) => {}
            Err(End::Gone) => return Ok(false),
            Err(e) => return Err(e),
        }
        // tonic turns a client's RST_STREAM(CANCEL) into a plain end of input, so a cancelled call
        // looks like a half-close until its response side is dropped: wait until the summary is
        // taken (the call is alive) or the response side is gone (cancelled). A client that does not
        // read finds the summary in its buffer later.
        let wait = Duration::from_millis(self.deps.server.slow_reader_timeout_ms);
        tokio::select! {
            biased;
            _ = self.summary_taken.notified() => Ok(true),
            _ = self.tx.closed() => Ok(false),
            _ = tokio::time::sleep(wait) => Ok(true),
        }
    }

    /// Send one response, waiting up to the slow-reader timeout for room in the buffer.
    async fn send(&mut self, msg: v1::DetectResponse) -> Result<(), End> {
        let timeout = Duration::from_millis(self.deps.server.slow_reader_timeout_ms);
        match self.tx.send_timeout(Ok(msg), timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(End::Error(ServiceError::SlowReader(
                self.deps.server.slow_reader_timeout_ms,
            ))),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(End::Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_errors_that_the_client_must_hear_about() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 5 bytes",
        );
        match inbound_error(&too_large, 1) {
            Some(ServiceError::BadMessage(m)) => {
                assert!(
                    m.contains("found 9 bytes") && m.contains("largest accepted AudioChunk.data is 1 bytes")
                )
            }
            other => panic!("{other:?}"),
        }
        let undecodable = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert!(matches!(
            inbound_error(&undecodable, 1),
            Some(ServiceError::BadMessage(_))
        ));
        // The client or its connection went away: nothing to tell it.
        for gone in [
            Status::cancelled("x"),
            Status::unknown("h2 protocol error: connection reset"),
            Status::internal("h2 protocol error: stream reset"),
        ] {
            assert!(inbound_error(&gone, 1).is_none(), "{gone:?}");
        }
    }

    #[test]
    fn chunk_checks_name_the_limit() {
        let fmt = PcmFormat::native_s16();
        assert_eq!(check_chunk(&[0; 4], 4, &fmt), Ok(2));
        let e = check_chunk(&[0; 6], 4, &fmt).expect_err("too large");
        assert!(e.to_string().contains("exceeds the maximum of 4 bytes"), "{e}");
        let e = check_chunk(&[], 4, &fmt).expect_err("empty");
        assert!(e.to_string().contains("at least one frame (2 bytes)"), "{e}");
    }
}
