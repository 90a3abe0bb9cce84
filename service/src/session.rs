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
//! Cascade streams (a model with a verifier, no `first_stage_only`): the applied windows propose
//! candidates; once a candidate's clip is complete the session sends it to the model's verifier
//! workers (`verify`, one candidate per stream at a time: the next depends on this verdict) and
//! sends the event, if any, when the verdict comes back. Before feeding more audio it waits for its
//! scores and verdict while the Spotter's sample ring has no room (`Spotter::audio_room`), so no
//! clip is overwritten; a verifier that still falls behind ends the stream with RESOURCE_EXHAUSTED,
//! a failed verification with INTERNAL. At the end, the last candidates are verified on the audio
//! there is, before the summary.
//!
//! Streaming models (`ServedModel::streaming`): the Spotter keeps the model state and the frames of
//! the hops not scored yet instead of emitting windows; the session sends ONE hop at a time (frames
//! copied, the state lent by buffer swap, `Spotter::lend_hop`; the buffers come back with the reply
//! and are reused) and, when its reply is in, completes it (`Spotter::return_hop`, the new state
//! swapped back in) and applies the window it completed through the same
//! `apply` as windowed replies (decoder, cascade, events, trace, progress), then sends the next hop.
//! A large chunk's hops thus go in rounds, one per batch; unscored hops count against
//! `max_inflight_windows` like queued windows.
//!
//! How a stream ends: half-close → flush, summary, OK. Drain grace over, idle timeout or lifetime
//! limit → flush, summary (of everything received), then UNAVAILABLE / DEADLINE_EXCEEDED. Bad input
//! → INVALID_ARGUMENT at once. Client gone → nothing to send. Audio accounting: received audio is
//! counted as processed as its windows are scored; whatever is left when a stream ends abnormally is
//! counted as unprocessed with the outcome (`kws_audio_unprocessed_seconds_total`), so nothing is
//! lost silently.
//!
//! # Layout
//! Validation is `validation`'s and the response side `response`'s; here: [`start`] (spawning, and
//! the panic watcher), the main loop (`Session::main_loop`: wait for the next event, then its one
//! handler, `on_event`), scoring in order (`submit`, `on_reply`, `apply`), and the end of a stream (`end`,
//! `finish`: flush, summary, status).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kws_models::frontend::{WINDOW_MS, WINDOW_VALUES};
use kws_models::{ApplyError, CascadeError, Spotter, StateLayout, WindowBatch, WindowMeta};
use kws_proto::v1::{self, detect_request, detect_response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tonic::Status;
use tracing::Instrument;

use crate::batcher::{Job, JobResult, QueueWait};
use crate::config::ServerConfig;
use crate::error::ServiceError;
use crate::eval::{EvalSettings, Evaluator, MAX_LABELS};
use crate::feedback::EventStore;
use crate::registry::ServedModel;
use crate::response::{self, ResponseStream, Responses, SendError};
use crate::shutdown::Phase;
use crate::telemetry::names;
use crate::validation::{ValidStream, check_chunk, inbound_error, label_from_proto};
use crate::verify::{ClipJob, ClipResult};

/// Input frames handled per step before yielding to the runtime, so a large chunk does not hold a
/// tokio worker for long (~1 ms of work per step at 48 kHz).
const FRAMES_PER_STEP: usize = 4096;
/// Shortest time a stream stays `behind` once flagged (no flapping at the queue limits).
const BEHIND_HOLD: Duration = Duration::from_secs(2);
/// Spare feature buffers kept per stream for reuse...
const SPARE_BUFFERS: usize = 4;
/// ... each of at most this many windows (a real-time stream's jobs hold one).
const SPARE_MAX_WINDOWS: usize = 4;

/// Everything a session needs from the server.
#[derive(Debug, Clone)]
pub struct SessionDeps {
    pub server: Arc<ServerConfig>,
    pub phase: watch::Receiver<Phase>,
    pub events: Arc<EventStore>,
    pub evaluation: Arc<EvalSettings>,
    /// Slots of configured streams (`max_streams` permits).
    pub active: Arc<Semaphore>,
    /// Streams that have not sent their config yet (see `admission`).
    pub awaiting: Arc<crate::admission::AwaitingBudget>,
    /// Process-wide budget of windows queued for scoring (`max_queued_bytes / WINDOW_BYTES`).
    pub queued: Arc<Semaphore>,
    /// How late the runtime's tasks run (smoothed): audio waits this long before it is even read
    /// and fed to the frontend when the CPU is short (see `server::probe_runtime_lag`).
    pub runtime_lag: Arc<QueueWait>,
    /// Admitted streams whose first window has not been scored yet (their load does not show).
    pub warming: Arc<AtomicUsize>,
    /// The process's CPU against the pod's CPU limit (admission; see `admission::CpuMeter`).
    pub cpu: Arc<crate::admission::CpuMeter>,
}

/// Counts a stream in [`SessionDeps::warming`] until its first window is scored (or it ends).
#[derive(Debug)]
struct Warming(Arc<AtomicUsize>);

impl Warming {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Warming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Start a session for an admitted stream whose config message has been validated. Returns the
/// response stream; the session runs as its own task and holds `permit` until it ends.
pub fn start(
    inbound: tonic::Streaming<v1::DetectRequest>,
    model: Arc<ServedModel>,
    valid: ValidStream,
    deps: SessionDeps,
    permit: OwnedSemaphorePermit,
    opened: Instant,
) -> Result<ResponseStream, ServiceError> {
    let classes = model.manifest.num_classes();
    let spotter = match &model.streaming {
        Some(layout) => Spotter::new_streaming(valid.stream.clone(), classes, layout.clone()),
        None => Spotter::new(valid.stream.clone(), classes),
    }
    .map_err(|e| ServiceError::InvalidConfig(e.to_string()))?;
    let hop_buffers = model.streaming.as_ref().map(|l| HopBuffers::new(l, classes));
    let (out, stream) = response::channel(deps.server.response_buffer, deps.server.slow_reader_timeout());
    let last_word = out.last_word();
    let stream_id = format!("{:016x}", rand::random::<u64>());
    deps.events.insert_stream(&stream_id, &model.name);
    let span = tracing::info_span!("stream", stream_id = %stream_id, model = %model.name,
        client_stream_id = %valid.proto.client_stream_id);
    let evaluator = Evaluator::new(
        &deps.evaluation,
        &model.manifest.keywords,
        &valid.keywords,
        valid.stream.decoder.refractory_ms,
        valid.known_negative,
    );
    let session = Session {
        metrics: StreamMetrics::new(&model.name),
        id: stream_id,
        evaluator,
        warming: Some(Warming::new(&deps.warming)),
        model,
        valid,
        spotter,
        inbound,
        out,
        deps,
        opened,
        last_message: Instant::now(),
        pending: PendingQueue::default(),
        verdict: None,
        spare: Vec::new(),
        hop_buffers,
        last_arrived: Instant::now(),
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
    let task = tokio::spawn(
        async move {
            // Dropped on return and on unwind alike: the slot and the gauge always come back.
            let _active = Active::new(permit);
            session.run().await;
        }
        .instrument(span.clone()),
    );
    // No panic is reachable from input (clippy denies unwrap; see RELIABILITY.md), but if one ever
    // happens the client gets INTERNAL instead of a silently truncated stream. A second task watches
    // the session's JoinHandle rather than the session wrapping itself in `catch_unwind`: tokio
    // already catches a task's panic and reports it through the handle, whereas `catch_unwind` would
    // need the whole session (tonic's `Streaming`, `&mut` state across awaits) to be asserted
    // `UnwindSafe` and a futures-level `catch_unwind` the runtime does not provide; and nothing of a
    // session that panicked should be used again — the watcher holds only a sender for the last word.
    tokio::spawn(
        async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                metrics::counter!(names::STREAMS, "outcome" => "internal").increment(1);
                tracing::error!("stream task panicked");
                let _ = last_word.try_send(Err(Status::internal(
                    "internal error: the stream's task failed; the audio sent was not fully processed",
                )));
            }
        }
        .instrument(span),
    );
    Ok(stream)
}

/// Audio received in ms, rounded up (a label may end at the last, partial millisecond).
fn audio_ceil_ms(spotter: &Spotter) -> u64 {
    (spotter.frames_received() * 1000).div_ceil(u64::from(spotter.format().sample_rate()))
}

/// Holds a stream's admission permit and its `kws_active_streams` increment.
struct Active(#[allow(dead_code)] OwnedSemaphorePermit);

impl Active {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(names::ACTIVE_STREAMS).increment(1.0);
        Self(permit)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!(names::ACTIVE_STREAMS).decrement(1.0);
    }
}

/// What a job scores.
enum Scored {
    /// Windows of a windowed stream, in order.
    Windows(Vec<WindowMeta>),
    /// The next hop of a streaming stream (its window, if any, comes from `Spotter::return_hop`).
    Hop,
}

impl Scored {
    /// Rows of the batch the job takes.
    fn rows(&self) -> usize {
        match self {
            Self::Windows(w) => w.len(),
            Self::Hop => 1,
        }
    }
}

/// A job to build once the stream has room for it.
enum JobInput {
    Windows(Vec<f32>, Vec<WindowMeta>),
    Hop(HopBuffers),
}

/// A streaming stream's job buffers: they go out with each hop and come back with its reply.
struct HopBuffers {
    frames: Vec<f32>,
    /// Empty between hops: `Spotter::lend_hop` swaps the stream's one state buffer into the job and
    /// leaves this one with the `Spotter` meanwhile, so it never needs room for a state.
    state: Vec<f32>,
    probs: Vec<f32>,
}

impl HopBuffers {
    fn new(layout: &StateLayout, classes: usize) -> Self {
        Self {
            frames: Vec::with_capacity(layout.frame_values()),
            state: Vec::new(),
            probs: Vec::with_capacity(classes),
        }
    }
}

/// A job sent to the batcher whose reply has not been applied yet.
struct Pending {
    scored: Scored,
    arrived: Instant,
    rx: oneshot::Receiver<JobResult>,
    /// This job's share of the process-wide budget, returned once its reply is applied.
    _budget: OwnedSemaphorePermit,
}

/// The stream's jobs in submission order. Replies are applied in this order only (the decoder needs
/// its windows in sequence), so only the oldest job's reply is awaited (TEI keeps its responses in
/// order with a queue of receivers the same way).
#[derive(Default)]
struct PendingQueue(VecDeque<Pending>);

impl PendingQueue {
    /// Wait for the oldest job's reply; never resolves while nothing is queued. Cancel-safe: the job
    /// stays first in the queue until [`pop`](Self::pop) takes it.
    async fn oldest_reply(&mut self) -> Result<JobResult, oneshot::error::RecvError> {
        match self.0.front_mut() {
            Some(p) => (&mut p.rx).await,
            None => std::future::pending().await,
        }
    }

    fn pop(&mut self) -> Option<Pending> {
        self.0.pop_front()
    }

    fn push(&mut self, p: Pending) {
        self.0.push_back(p);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A candidate's clip sent to the verifier.
struct PendingVerdict {
    candidate: kws_models::Candidate,
    /// When its clip was complete and sent.
    sent: Instant,
    rx: oneshot::Receiver<ClipResult>,
}

/// Wait for the verdict on the candidate with the verifier; never resolves without one. Cancel-safe.
async fn verdict_reply(v: &mut Option<PendingVerdict>) -> Result<ClipResult, oneshot::error::RecvError> {
    match v {
        Some(p) => (&mut p.rx).await,
        None => std::future::pending().await,
    }
}

/// The status of a window or verdict the stream's pipeline refused.
fn apply_error(e: ApplyError) -> ServiceError {
    match e {
        ApplyError::Cascade(e @ CascadeError::Backlog { .. }) => ServiceError::VerifierBehind(e.to_string()),
        e @ ApplyError::ClipLost { .. } => ServiceError::VerifierBehind(e.to_string()),
        e @ (ApplyError::Order(_) | ApplyError::Cascade(_) | ApplyError::Hop(_)) => {
            ServiceError::Internal(e.to_string())
        }
    }
}

struct Session {
    id: String,
    model: Arc<ServedModel>,
    valid: ValidStream,
    spotter: Spotter,
    inbound: tonic::Streaming<v1::DetectRequest>,
    out: Responses,
    deps: SessionDeps,
    opened: Instant,
    /// When the client's last message arrived (the idle timeout counts from it).
    last_message: Instant,
    pending: PendingQueue,
    /// The candidate whose clip is with the verifier (cascade streams; one at a time).
    verdict: Option<PendingVerdict>,
    spare: Vec<Vec<f32>>,
    /// Streaming streams: the hop buffers while no hop is with the batcher (`None` while one is).
    hop_buffers: Option<HopBuffers>,
    /// When the last chunk arrived (the hops it completed are timed from it).
    last_arrived: Instant,
    /// Batch rows queued for scoring: windows, or the hop in flight.
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
    metrics: StreamMetrics,
}

/// The metrics a stream updates on every chunk or scored job, registered once when it opens: a
/// `metrics::counter!` with a label builds its key (a clone of the model's name) and looks it up in
/// the registry on every call.
struct StreamMetrics {
    audio_received: metrics::Gauge,
    audio_processed: metrics::Gauge,
    windows: metrics::Counter,
}

impl StreamMetrics {
    fn new(model: &str) -> Self {
        Self {
            audio_received: metrics::gauge!(names::AUDIO_RECEIVED, "model" => model.to_owned()),
            audio_processed: metrics::gauge!(names::AUDIO_PROCESSED, "model" => model.to_owned()),
            windows: metrics::counter!(names::WINDOWS, "model" => model.to_owned()),
        }
    }
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

/// What the main loop waits for; each has one handler ([`Session::on_event`]).
enum Event {
    /// The client reset the stream (or its connection died).
    Gone,
    /// The stream reached `max_stream_lifetime_ms`.
    Lifetime,
    /// The server's phase changed (`false`: the server is gone without a drain).
    Phase(bool),
    /// The oldest pending job's reply.
    Reply(Result<JobResult, oneshot::error::RecvError>),
    /// The verifier's reply on the candidate with it.
    Verdict(Result<ClipResult, oneshot::error::RecvError>),
    /// The client's next message (`None`: half-close).
    Message(Result<Option<v1::DetectRequest>, Status>),
    /// No message for `idle_timeout_ms`.
    Idle,
}

impl Session {
    async fn run(mut self) {
        let end = self.main_loop().await;
        let outcome = self.end(end).await;
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

    /// Close the stream the way `end` says; returns the outcome label.
    async fn end(&mut self, end: End) -> &'static str {
        let closed_by = match end {
            End::Gone => return "cancelled",
            End::Error(e) => return self.fail(e).await,
            End::Finished => None,
            End::Closed(e) => Some(e),
        };
        match self.finish().await {
            Ok(delivered) => match closed_by {
                Some(e) => {
                    tracing::info!(error = %e, "stream closed by the server after its summary");
                    let outcome = e.outcome();
                    self.out.fail(e).await;
                    outcome
                }
                None if delivered => "ok",
                None => "cancelled",
            },
            Err(End::Error(e)) => self.fail(e).await,
            Err(_) => "cancelled",
        }
    }

    /// End the stream with an error; returns the outcome label.
    async fn fail(&mut self, e: ServiceError) -> &'static str {
        if matches!(e, ServiceError::SlowReader(_)) {
            tracing::warn!(error = %e, "stream ended");
        } else {
            tracing::info!(error = %e, "stream ended with error");
        }
        let outcome = e.outcome();
        self.out.fail(e).await;
        outcome
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
                config: Some(self.valid.proto.clone()),
            })),
        };
        if let Err(e) = self.send(ready).await {
            return e;
        }
        let server = self.deps.server.clone();
        let lifetime = tokio::time::sleep_until((self.opened + server.max_stream_lifetime()).into());
        tokio::pin!(lifetime);
        let idle = server.idle_timeout();
        let mut phase = self.deps.phase.clone();
        self.last_message = Instant::now();
        loop {
            if *phase.borrow() == Phase::Closing {
                return End::Closed(ServiceError::Draining);
            }
            // Unscored hops of a streaming stream are queued work too.
            let queued = self.inflight_windows + self.spotter.pending_hops();
            let can_read = queued < server.max_inflight_windows;
            if !can_read {
                self.throttled = true;
            }
            let event = tokio::select! {
                biased;
                _ = self.out.closed() => Event::Gone,
                _ = &mut lifetime => Event::Lifetime,
                changed = phase.changed() => Event::Phase(changed.is_ok()),
                r = self.pending.oldest_reply() => Event::Reply(r),
                r = verdict_reply(&mut self.verdict) => Event::Verdict(r),
                msg = self.inbound.message(), if can_read => Event::Message(msg),
                _ = tokio::time::sleep_until((self.last_message + idle).into()), if can_read => Event::Idle,
            };
            if let Err(end) = self.on_event(event).await {
                return end;
            }
        }
    }

    /// The one handler of each event; `Err` ends the main loop.
    async fn on_event(&mut self, event: Event) -> Result<(), End> {
        let server = self.deps.server.clone();
        match event {
            Event::Gone => Err(End::Gone),
            Event::Lifetime => Err(End::Closed(ServiceError::Lifetime(server.max_stream_lifetime_ms))),
            // A drain is seen at the top of the loop; a server gone without one ends like a drain.
            Event::Phase(true) => Ok(()),
            Event::Phase(false) => Err(End::Closed(ServiceError::Draining)),
            Event::Reply(r) => {
                self.on_reply(r).await?;
                self.submit_hop().await
            }
            Event::Verdict(r) => self.on_verdict(r).await,
            Event::Idle => Err(End::Closed(ServiceError::Idle(server.idle_timeout_ms))),
            Event::Message(msg) => {
                self.last_message = Instant::now();
                match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) => Err(End::Finished),
                    Err(status) => {
                        tracing::debug!(status = %status, "client stream error");
                        Err(match inbound_error(&status, server.max_chunk_bytes) {
                            Some(e) => End::Error(e),
                            None => End::Gone,
                        })
                    }
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
                        "more than {MAX_LABELS} labels in one stream"
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
        self.last_arrived = arrived;
        self.first_audio.get_or_insert(arrived);
        self.throttled = false;
        let format = self.spotter.format();
        check_chunk(&data, self.deps.server.max_chunk_bytes, &format).map_err(End::Error)?;
        let step = FRAMES_PER_STEP * format.frame_bytes();
        for (i, piece) in data.chunks(step).enumerate() {
            if i > 0 {
                tokio::task::yield_now().await;
            }
            self.make_room(piece.len() / format.frame_bytes()).await?;
            let mut batch = WindowBatch::with_buffer(self.spare.pop().unwrap_or_default());
            self.spotter
                .push_pcm(piece, &mut batch)
                .map_err(|e| End::Error(ServiceError::InvalidAudio(e.to_string())))?;
            self.count_received();
            self.submit(batch, arrived).await?;
            self.catch_up_hops(self.deps.server.max_inflight_windows).await?;
            self.dispatch_clip().await?;
        }
        self.check_behind().await
    }

    /// Add the audio received since the last call to the received total.
    fn count_received(&mut self) {
        let now = self.spotter.audio_ms_received();
        if now > self.received_counted_ms {
            self.metrics
                .audio_received
                .increment((now - self.received_counted_ms) as f64 / 1000.0);
            self.received_counted_ms = now;
        }
    }

    /// Add the audio processed up to `upto_ms` (never beyond what was received) to the processed total.
    fn count_processed(&mut self, upto_ms: u64) {
        let now = upto_ms.min(self.received_counted_ms);
        if now > self.processed_counted_ms {
            self.metrics
                .audio_processed
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
            return self
                .submit_job(JobInput::Windows(features, windows), arrived)
                .await;
        }
        for (i, metas) in windows.chunks(max).enumerate() {
            let part = features[i * max * WINDOW_VALUES..(i * max + metas.len()) * WINDOW_VALUES].to_vec();
            self.submit_job(JobInput::Windows(part, metas.to_vec()), arrived)
                .await?;
        }
        self.recycle(features);
        Ok(())
    }

    /// Streaming streams: send the next hop to the batcher, unless one is there already (hop
    /// `i + 1` needs hop `i`'s state) or no full hop is pending. No-op for windowed streams.
    async fn submit_hop(&mut self) -> Result<(), End> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        let Some(mut b) = self.hop_buffers.take() else {
            return Ok(());
        };
        // The state goes to the batcher by buffer swap, not by copy (7.6 KB per hop for TC-ResNet8).
        if !self.spotter.lend_hop(&mut b.frames, &mut b.state) {
            self.hop_buffers = Some(b);
            return Ok(());
        }
        self.submit_job(JobInput::Hop(b), self.last_arrived).await
    }

    /// Streaming streams: score hops in rounds until at most `limit` are unscored (0: all of
    /// them). No-op for windowed streams.
    async fn catch_up_hops(&mut self, limit: usize) -> Result<(), End> {
        loop {
            self.submit_hop().await?;
            if self.spotter.pending_hops() <= limit || self.pending.is_empty() {
                return Ok(());
            }
            self.apply_oldest().await?;
        }
    }

    async fn submit_job(&mut self, input: JobInput, arrived: Instant) -> Result<(), End> {
        let n = match &input {
            JobInput::Windows(_, w) => w.len(),
            JobInput::Hop(_) => 1,
        };
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
        let (job, scored) = match input {
            JobInput::Windows(features, windows) => (Job::new(features, reply), Scored::Windows(windows)),
            JobInput::Hop(b) => (Job::hop(b.frames, b.state, b.probs, reply), Scored::Hop),
        };
        let job = job.map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
        self.inflight_windows += n;
        self.model
            .batcher
            .submit(job)
            .await
            .map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
        self.pending.push(Pending {
            scored,
            arrived,
            rx,
            _budget: permit,
        });
        Ok(())
    }

    /// Wait for the oldest queued job's reply and apply it.
    async fn apply_oldest(&mut self) -> Result<(), End> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self.pending.oldest_reply().await;
        self.on_reply(r).await
    }

    /// The oldest queued job's reply is in: apply it.
    async fn on_reply(&mut self, r: Result<JobResult, oneshot::error::RecvError>) -> Result<(), End> {
        let (Some(p), Ok(result)) = (self.pending.pop(), r) else {
            return Err(End::Error(ServiceError::Internal(
                "scoring worker dropped a job".into(),
            )));
        };
        self.apply(p.scored, p.arrived, result).await
    }

    fn recycle(&mut self, buf: Vec<f32>) {
        // Only small buffers are kept: the large ones of a big chunk would stay with the stream.
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_MAX_WINDOWS * WINDOW_VALUES {
            self.spare.push(buf);
        }
    }

    /// Apply a scored job in order: events, trace, progress.
    async fn apply(&mut self, scored: Scored, arrived: Instant, mut result: JobResult) -> Result<(), End> {
        self.inflight_windows -= scored.rows();
        self.warming = None;
        if let Err(e) = &result.result {
            return Err(End::Error(ServiceError::Internal(format!(
                "inference failed: {e}"
            ))));
        }
        // A hop: the new state goes into the Spotter, which names the window the hop completed
        // (none during warm-up); its posteriors are then applied like a windowed window's.
        let hop_window;
        let windows: &[WindowMeta] = match &scored {
            Scored::Windows(w) => w,
            Scored::Hop => {
                hop_window = self
                    .spotter
                    .return_hop(&mut result.state)
                    .map_err(|e| End::Error(apply_error(e)))?;
                hop_window.as_slice()
            }
        };
        let classes = self.model.manifest.num_classes();
        let mut trace = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let probs = &result.probs[i * classes..(i + 1) * classes];
            let event = self
                .spotter
                .apply(w, probs)
                .map_err(|e| End::Error(apply_error(e)))?;
            self.evaluator
                .observe(w, self.spotter.smoothed(), event.as_ref().map(|e| e.class));
            if self.valid.trace {
                let s = self.spotter.smoothed();
                trace.push(v1::WindowScores {
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    scores: self.valid.keywords.iter().map(|&k| s[k]).collect(),
                });
            }
            self.processed_ms = w.end_ms;
            self.windows += 1;
            if let Some(e) = event {
                self.emit(e, arrived).await?;
            }
        }
        self.dispatch_clip().await?;
        self.metrics.windows.increment(windows.len() as u64);
        self.count_processed(self.processed_ms);
        match scored {
            Scored::Windows(_) => self.recycle(result.features),
            Scored::Hop => {
                self.hop_buffers = Some(HopBuffers {
                    frames: result.features,
                    state: result.state,
                    probs: result.probs,
                });
            }
        }
        if !trace.is_empty() {
            self.send(v1::DetectResponse {
                response: Some(detect_response::Response::Trace(v1::ScoreTrace {
                    windows: trace,
                })),
            })
            .await?;
        }
        self.check_behind().await?;
        if let Some(every) = self.valid.progress_ms
            && self.processed_ms >= self.next_progress_ms
        {
            self.next_progress_ms = self.processed_ms + every;
            self.progress().await?;
        }
        Ok(())
    }

    /// Send an event (first-stage, or accepted by the verifier); `since` is when its audio was
    /// complete (the chunk completing its window, or with a cascade its clip).
    async fn emit(&mut self, e: kws_models::Event, since: Instant) -> Result<(), End> {
        self.events += 1;
        let keyword = self.model.manifest.keywords[e.class].clone();
        let event_id = format!("{}-{}", self.id, self.events);
        let model_label = self.model.name.clone();
        metrics::counter!(names::EVENTS, "model" => model_label.clone(), "keyword" => keyword.clone())
            .increment(1);
        metrics::histogram!(names::EVENT_LATENCY, "model" => model_label)
            .record(since.elapsed().as_secs_f64());
        self.deps.events.insert(&event_id, &self.model.name, &keyword);
        tracing::debug!(
            event_id,
            keyword,
            score = e.score,
            verifier_score = e.verifier_score,
            end_ms = e.end_ms,
            "keyword"
        );
        self.send(v1::DetectResponse {
            response: Some(detect_response::Response::Event(v1::KeywordEvent {
                event_id,
                keyword,
                score: e.score,
                start_ms: e.start_ms,
                end_ms: e.end_ms,
                verifier_score: e.verifier_score,
            })),
        })
        .await
    }

    /// Cascade streams: send the pending candidate's clip to the verifier once it is complete (one
    /// candidate at a time: the next one depends on this verdict).
    async fn dispatch_clip(&mut self) -> Result<(), End> {
        if self.verdict.is_some() {
            return Ok(());
        }
        let Some(pool) = self.model.verifier.clone() else {
            return Ok(());
        };
        let Some(clip) = self
            .spotter
            .ready_clip()
            .map_err(|e| End::Error(apply_error(e)))?
        else {
            return Ok(());
        };
        let c = clip.candidate;
        let keyword = self.model.manifest.keywords[c.keyword].clone();
        metrics::counter!(names::CANDIDATES, "model" => self.model.name.clone(), "keyword" => keyword)
            .increment(1);
        let (reply, rx) = oneshot::channel();
        let sent = Instant::now();
        pool.submit(ClipJob {
            audio: clip.audio,
            lead: clip.lead,
            enqueued: sent,
            reply,
        })
        .await
        .map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
        self.verdict = Some(PendingVerdict {
            candidate: c,
            sent,
            rx,
        });
        Ok(())
    }

    /// The verifier's reply on the candidate with it: its event or rejection, then the next clip.
    async fn on_verdict(&mut self, r: Result<ClipResult, oneshot::error::RecvError>) -> Result<(), End> {
        let Some(p) = self.verdict.take() else {
            return Ok(());
        };
        let probs = r
            .map_err(|_| {
                End::Error(ServiceError::Internal(
                    "verifier worker dropped a candidate".into(),
                ))
            })?
            .probs
            .map_err(|e| End::Error(ServiceError::VerifierFailed(e.to_string())))?;
        metrics::histogram!(names::VERDICT_LATENCY, "model" => self.model.name.clone())
            .record(p.sent.elapsed().as_secs_f64());
        let event = self
            .spotter
            .verdict(p.candidate.id, &probs)
            .map_err(|e| End::Error(apply_error(e)))?;
        match event {
            Some(e) => {
                self.evaluator.own_event(e.class, e.start_ms, e.end_ms);
                self.emit(e, p.sent).await?;
            }
            None => {
                let keyword = self.model.manifest.keywords[p.candidate.keyword].clone();
                metrics::counter!(names::VERIFIER_REJECTIONS, "model" => self.model.name.clone(),
                    "keyword" => keyword.clone())
                .increment(1);
                tracing::debug!(
                    keyword,
                    score = p.candidate.score,
                    verifier_score = probs[p.candidate.keyword],
                    end_ms = p.candidate.end_ms,
                    "candidate rejected"
                );
            }
        }
        self.dispatch_clip().await
    }

    /// Cascade streams: before feeding `frames` more input frames, wait for scores and the verdict
    /// outstanding until the stream's sample ring has room for them (`Spotter::audio_room`), so
    /// that no candidate's clip is overwritten before it is cut.
    async fn make_room(&mut self, frames: usize) -> Result<(), End> {
        let rate = u64::from(self.spotter.format().sample_rate());
        // The samples `frames` make at 16 kHz, plus a resampler block.
        let need = (frames as u64 * 16_000).div_ceil(rate) + 1024;
        while self.spotter.audio_room() < need {
            if self.verdict.is_some() {
                let r = verdict_reply(&mut self.verdict).await;
                self.on_verdict(r).await?;
            } else if !self.pending.is_empty() {
                self.apply_oldest().await?;
                self.submit_hop().await?;
            } else {
                break;
            }
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
        // Before the first window (a whole window of audio) nothing can have been scored: that
        // audio is not a backlog.
        let backlog = received.saturating_sub(self.processed_ms.max(u64::from(WINDOW_MS)));
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
            if self.valid.progress_ms.is_some() {
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
    /// whether the summary reached the client (false: the client is gone).
    async fn finish(&mut self) -> Result<bool, End> {
        let mut batch = WindowBatch::with_buffer(self.spare.pop().unwrap_or_default());
        self.spotter
            .finish(&mut batch)
            .map_err(|e| End::Error(ServiceError::Internal(e.to_string())))?;
        self.last_arrived = Instant::now();
        self.submit(batch, self.last_arrived).await?;
        self.catch_up_hops(0).await?;
        while !self.pending.is_empty() {
            self.apply_oldest().await?;
            self.submit_hop().await?;
        }
        // The last candidates: their clips are cut at the end of the audio.
        self.dispatch_clip().await?;
        while self.verdict.is_some() {
            let r = verdict_reply(&mut self.verdict).await;
            self.on_verdict(r).await?;
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
            Ok(()) => Ok(self.out.summary_delivered().await),
            Err(End::Gone) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Send one response (waits up to the slow-reader timeout for room).
    async fn send(&mut self, msg: v1::DetectResponse) -> Result<(), End> {
        self.out.send(msg).await.map_err(|e| match e {
            SendError::SlowReader => {
                End::Error(ServiceError::SlowReader(self.deps.server.slow_reader_timeout_ms))
            }
            SendError::Gone => End::Gone,
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn a_verifier_that_falls_behind_is_resource_exhausted_and_a_bug_is_internal() {
        let code = |e: ApplyError| tonic::Status::from(apply_error(e)).code();
        let backlog = CascadeError::Backlog { pending: 3, max: 250 };
        assert_eq!(code(backlog.into()), Code::ResourceExhausted);
        let lost = ApplyError::ClipLost {
            candidate: 1,
            start: 0,
            oldest: 16_000,
        };
        let msg = tonic::Status::from(apply_error(lost.clone()))
            .message()
            .to_string();
        assert!(
            msg.contains("not keeping up") && msg.contains("candidate 1"),
            "{msg}"
        );
        assert_eq!(code(lost), Code::ResourceExhausted);
        let order = kws_models::OrderError { expected: 2, got: 5 };
        assert_eq!(code(order.into()), Code::Internal);
        let not_pending = CascadeError::NotPending {
            got: 4,
            pending: None,
        };
        assert_eq!(code(not_pending.into()), Code::Internal);
    }
}
