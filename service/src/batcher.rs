//! Dynamic batching of scoring jobs across streams (Triton's dynamic batcher is the model).
//!
//! Streams submit jobs (one or more windows each, at most `max_batch`) to a bounded MPMC queue per
//! model. Each inference worker is a dedicated OS thread owning one ONNX Runtime session. A worker
//! takes the first job, then keeps collecting (looking at the queue every millisecond, so that
//! submitting a job does not wake it) until the batch holds `max_batch` windows or `max_delay` has
//! passed since that first job was enqueued, runs one `Session::run` over the
//! concatenated windows and sends every job its slice of posteriors. `max_batch` is a hard cap: a job
//! that would take the batch beyond it is held over and opens the next batch. Jobs are never
//! dropped while their stream waits: a full queue makes `submit` wait (which makes the stream stop
//! reading its client), and every job is answered, with an error if inference fails. A job whose
//! stream has gone (its reply channel is closed) is not scored.
//!
//! The batching decision itself (`BatchState`) is plain state, tested without threads or clocks;
//! the worker adds the queue, the deadline and the scorer.
//!
//! # Two kinds of scorer
//! A model's workers are all windowed ([`Batcher::start`]: jobs of whole 98-frame windows) or all
//! streaming ([`Batcher::start_streaming`], a model served on its streaming graph): a streaming job
//! is ONE hop of one stream (`hop * 40` frames and the stream's model state) and counts as one row
//! of the batch; the batch is scored in one `StreamScorer::score_each` call, which gathers the
//! states from the jobs' own buffers onto the batch dimension and writes each new state back into
//! its job's buffer (no batch-wide state buffer to copy through), and each job's reply carries its
//! posteriors and its new state (frames, state and posteriors come back for the stream to reuse). A
//! stream has at most one hop in a batcher at a time (hop `i + 1` needs hop `i`'s state; the session
//! submits rounds). Queue, batching, backpressure, metrics, shutdown and errors are the same code
//! for both kinds; a job of the wrong kind or shape is answered with an error, never scored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kws_models::frontend::WINDOW_VALUES;
use kws_models::{ScoreError, Scorer, StateLayout, StreamScorer};
use tokio::sync::oneshot;

use crate::telemetry::names;

/// How often a worker collecting a batch looks for more jobs: a batch that fills closes at most this
/// much later, one that does not closes at its deadline as before.
const COLLECT_POLL: Duration = Duration::from_millis(1);

/// Bytes of one window of features.
pub const WINDOW_BYTES: usize = WINDOW_VALUES * std::mem::size_of::<f32>();

/// One stream's windows to score: `windows() * 98 * 40` feature values; or (streaming) one hop of a
/// stream: its frames and model state. The fields are private so that these invariants, which the
/// worker's slicing relies on, hold for every job (the hop's sizes are checked by the worker, which
/// knows the model's state layout).
#[derive(Debug)]
pub struct Job {
    features: Vec<f32>,
    /// Streaming: the stream's state before the hop (the new state comes back in it). Empty for a
    /// windowed job.
    state: Vec<f32>,
    /// Where the posteriors are written (reused by the stream; may be empty).
    probs: Vec<f32>,
    windows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
}

impl Job {
    /// A job of the whole windows in `features` (at least one; a partial window is refused), enqueued
    /// now; its result goes to `reply`.
    pub fn new(features: Vec<f32>, reply: oneshot::Sender<JobResult>) -> Result<Self, ScoreError> {
        if features.is_empty() || !features.len().is_multiple_of(WINDOW_VALUES) {
            return Err(ScoreError::InputShape { got: features.len() });
        }
        Ok(Self {
            windows: features.len() / WINDOW_VALUES,
            features,
            state: Vec::new(),
            probs: Vec::new(),
            enqueued: Instant::now(),
            reply,
        })
    }

    /// A streaming job: one hop of one stream, `frames` (`hop * 40` values) and its model `state`
    /// (not empty), enqueued now; the posteriors are written into `probs` (cleared; its capacity
    /// is reused) and the new state into `state`, both handed back in the reply.
    pub fn hop(
        frames: Vec<f32>,
        state: Vec<f32>,
        probs: Vec<f32>,
        reply: oneshot::Sender<JobResult>,
    ) -> Result<Self, ScoreError> {
        if frames.is_empty() || state.is_empty() {
            return Err(ScoreError::InputShape { got: frames.len() });
        }
        Ok(Self {
            features: frames,
            state,
            probs,
            windows: 1,
            enqueued: Instant::now(),
            reply,
        })
    }

    /// Windows in this job.
    pub fn windows(&self) -> usize {
        self.windows
    }
}

/// Why a job has no posteriors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// ONNX Runtime failed on the batch the job ran in (every job of that batch gets this).
    #[error(transparent)]
    Score(#[from] ScoreError),
}

/// A scored job: the buffers back, and how it went.
#[derive(Debug)]
pub struct JobResult {
    /// The job's features (streaming: frames), handed back so the stream reuses the allocation.
    pub features: Vec<f32>,
    /// `windows * classes` posteriors (empty on error).
    pub probs: Vec<f32>,
    /// Streaming: the stream's new model state (on error: the state sent, unchanged). Empty for a
    /// windowed job.
    pub state: Vec<f32>,
    pub result: Result<(), BatchError>,
    /// Windows in the batch this job ran in.
    pub batch_windows: usize,
}

/// Settings of one model's batcher.
#[derive(Debug, Clone)]
pub struct BatcherSettings {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub queue_capacity: usize,
}

/// Handle used by streams to submit jobs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: flume::Sender<Job>,
    model: Arc<str>,
    max_batch: usize,
    wait: Arc<QueueWait>,
    /// `kws_queue_depth` of this model, registered once (not looked up per job).
    depth: metrics::Gauge,
}

/// Smoothed queue wait of the recent batches (the oldest job's wait, exponentially averaged), read by
/// admission control. A value older than [`QueueWait::STALE`] counts as zero: no batch ran, so
/// nothing waits.
#[derive(Debug)]
pub struct QueueWait {
    ewma_us: AtomicU64,
    updated_ms: AtomicU64,
    epoch: Instant,
}

impl Default for QueueWait {
    fn default() -> Self {
        Self {
            ewma_us: AtomicU64::new(0),
            updated_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl QueueWait {
    pub const STALE: Duration = Duration::from_secs(1);

    /// Fold in one batch's wait. Workers race on this; an occasionally lost update is harmless.
    pub fn record(&self, wait: Duration) {
        let w = wait.as_micros().min(u128::from(u64::MAX / 8)) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let fresh = self.epoch.elapsed().as_millis() as u64;
        let stale =
            fresh.saturating_sub(self.updated_ms.load(Ordering::Relaxed)) > Self::STALE.as_millis() as u64;
        let new = if old == 0 || stale { w } else { (old * 4 + w) / 5 };
        self.ewma_us.store(new, Ordering::Relaxed);
        self.updated_ms.store(fresh, Ordering::Relaxed);
    }

    /// The smoothed wait now (zero if no batch ran recently).
    pub fn current(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        if now.saturating_sub(self.updated_ms.load(Ordering::Relaxed)) > Self::STALE.as_millis() as u64 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.ewma_us.load(Ordering::Relaxed))
    }
}

/// The batcher was shut down (all workers gone).
#[derive(Debug, thiserror::Error)]
#[error("the scoring workers of model {0} have stopped")]
pub struct BatcherClosed(pub Arc<str>);

/// A worker's scorer: one of each model's workers is of the model's kind (module docs).
enum WorkerScorer {
    Windowed(Box<dyn Scorer>),
    Streaming(Box<dyn StreamScorer>),
}

impl WorkerScorer {
    fn num_classes(&self) -> usize {
        match self {
            Self::Windowed(s) => s.num_classes(),
            Self::Streaming(s) => s.num_classes(),
        }
    }

    fn layout(&self) -> Option<&StateLayout> {
        match self {
            Self::Windowed(_) => None,
            Self::Streaming(s) => Some(s.layout()),
        }
    }
}

/// Whether `job` can be scored by a worker of this kind: a windowed job for a windowed worker, a
/// hop of the model's sizes for a streaming one.
fn check_job(job: &Job, layout: Option<&StateLayout>) -> Result<(), ScoreError> {
    match layout {
        None if job.state.is_empty() => Ok(()),
        None => Err(ScoreError::StateShape {
            got_in: job.state.len(),
            got_out: job.state.len(),
            n: 1,
            per_stream: 0,
        }),
        Some(l) if job.features.len() != l.frame_values() => Err(ScoreError::InputShape {
            got: job.features.len(),
        }),
        Some(l) if job.state.len() != l.len => Err(ScoreError::StateShape {
            got_in: job.state.len(),
            got_out: job.state.len(),
            n: 1,
            per_stream: l.len,
        }),
        Some(_) => Ok(()),
    }
}

impl Batcher {
    /// Start `scorers.len()` windowed workers, one OS thread each, sharing one queue.
    pub fn start(
        model: &str,
        scorers: Vec<Box<dyn Scorer>>,
        settings: BatcherSettings,
    ) -> std::io::Result<(Self, Vec<JoinHandle<()>>)> {
        Self::start_workers(
            model,
            scorers.into_iter().map(WorkerScorer::Windowed).collect(),
            settings,
        )
    }

    /// Start `scorers.len()` streaming workers (jobs of [`Job::hop`]), one OS thread each, sharing
    /// one queue; `max_batch` counts hops.
    pub fn start_streaming(
        model: &str,
        scorers: Vec<Box<dyn StreamScorer>>,
        settings: BatcherSettings,
    ) -> std::io::Result<(Self, Vec<JoinHandle<()>>)> {
        Self::start_workers(
            model,
            scorers.into_iter().map(WorkerScorer::Streaming).collect(),
            settings,
        )
    }

    fn start_workers(
        model: &str,
        scorers: Vec<WorkerScorer>,
        settings: BatcherSettings,
    ) -> std::io::Result<(Self, Vec<JoinHandle<()>>)> {
        let (tx, rx) = flume::bounded::<Job>(settings.queue_capacity);
        let model: Arc<str> = Arc::from(model);
        let wait = Arc::new(QueueWait::default());
        let mut handles = Vec::new();
        for (i, scorer) in scorers.into_iter().enumerate() {
            let rx = rx.clone();
            let model = model.clone();
            let settings = settings.clone();
            let wait = wait.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kws-infer-{i}"))
                    .spawn(move || worker(scorer, rx, settings, model, &wait))?,
            );
        }
        Ok((
            Self {
                tx,
                depth: metrics::gauge!(names::QUEUE_DEPTH, "model" => model.to_string()),
                model,
                max_batch: settings.max_batch,
                wait,
            },
            handles,
        ))
    }

    /// Most windows per job and per batch. Workers exit once every `Batcher` clone is dropped and
    /// the queue is empty.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Enqueue a job; waits while the queue is full.
    pub async fn submit(&self, job: Job) -> Result<(), BatcherClosed> {
        let r = self
            .tx
            .send_async(job)
            .await
            .map_err(|_| BatcherClosed(self.model.clone()));
        self.depth.set(self.tx.len() as f64);
        r
    }

    /// Smoothed queue wait of recent batches (for load shedding).
    pub fn queue_wait(&self) -> Duration {
        self.wait.current()
    }
}

/// What became of a job offered to a [`BatchState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// In the batch, which has room for more.
    Taken,
    /// The batch is complete: the job filled it, or it would have overflowed it and is held over
    /// for the next batch.
    Full,
    /// Its stream has gone (reply channel closed): dropped unscored.
    Skipped,
}

/// The batching decision: which jobs form the next batch, their concatenated features, and the
/// split of the posteriors back to them. No threads, no clock reads (tests drive it directly).
#[derive(Debug)]
struct BatchState {
    max_batch: usize,
    jobs: Vec<Job>,
    windows: usize,
    /// The job that would have overflowed the last batch; it opens the next one.
    held: Option<Job>,
}

impl BatchState {
    fn new(max_batch: usize) -> Self {
        Self {
            max_batch,
            jobs: Vec::with_capacity(max_batch),
            windows: 0,
            held: None,
        }
    }

    /// The job held over from the last batch, if any: it must open the next one (it waited longest).
    fn take_held(&mut self) -> Option<Job> {
        self.held.take()
    }

    /// Add a job to the batch being collected. The first job is always taken (a job holds at most
    /// `max_batch` windows: the session splits larger ones); a later one only while the batch stays
    /// within `max_batch` windows.
    fn offer(&mut self, job: Job) -> Offer {
        if job.reply.is_closed() {
            return Offer::Skipped;
        }
        if !self.jobs.is_empty() && self.windows + job.windows > self.max_batch {
            self.held = Some(job);
            return Offer::Full;
        }
        self.windows += job.windows;
        self.jobs.push(job);
        if self.windows >= self.max_batch {
            Offer::Full
        } else {
            Offer::Taken
        }
    }

    /// When the batch must run: `max_delay` after its first job was enqueued (None while empty).
    fn deadline(&self, max_delay: Duration) -> Option<Instant> {
        self.jobs.first().map(|j| j.enqueued + max_delay)
    }

    /// Windows in the batch.
    fn windows(&self) -> usize {
        self.windows
    }

    /// When each job of the batch was enqueued, oldest first.
    fn enqueued(&self) -> impl Iterator<Item = Instant> + '_ {
        self.jobs.iter().map(|j| j.enqueued)
    }

    /// The batch's features (streaming: frames), job after job, into `out` (cleared first).
    fn concatenate(&self, out: &mut Vec<f32>) {
        out.clear();
        for job in &self.jobs {
            out.extend_from_slice(&job.features);
        }
    }

    /// Streaming: each job's state buffer, in batch order; the scorer reads the states there and
    /// writes the new ones back (`StreamScorer::score_each`), so they are never copied into a batch
    /// buffer and out again.
    fn states_mut(&mut self) -> Vec<&mut [f32]> {
        self.jobs.iter_mut().map(|j| j.state.as_mut_slice()).collect()
    }

    /// Answer every job of the batch: its slice of `scored` (`windows * classes` posteriors for the
    /// whole batch) or the error, written into the job's own buffer; a streaming job's new state is
    /// in its state buffer already. Empties the batch (a held job stays held).
    fn split(&mut self, scored: Result<&[f32], &BatchError>, classes: usize) {
        let batch_windows = self.windows;
        let mut offset = 0;
        for mut job in self.jobs.drain(..) {
            let n = job.windows * classes;
            job.probs.clear();
            let result = match scored {
                Ok(all) => {
                    job.probs.extend_from_slice(&all[offset..offset + n]);
                    Ok(())
                }
                Err(e) => Err(e.clone()),
            };
            offset += n;
            // A stream that went away meanwhile does not read its reply: nothing to do.
            let _ = job.reply.send(JobResult {
                features: job.features,
                probs: job.probs,
                state: job.state,
                result,
                batch_windows,
            });
        }
        self.windows = 0;
    }
}

/// Answer a job that cannot be scored by this worker (wrong kind or shape) with `e`.
fn refuse(job: Job, e: ScoreError) {
    let _ = job.reply.send(JobResult {
        features: job.features,
        probs: Vec::new(),
        state: job.state,
        result: Err(BatchError::Score(e)),
        batch_windows: 0,
    });
}

fn worker(
    mut scorer: WorkerScorer,
    rx: flume::Receiver<Job>,
    settings: BatcherSettings,
    model: Arc<str>,
    wait: &QueueWait,
) {
    let classes = scorer.num_classes();
    let labels = [("model", model.to_string())];
    let batch_size = metrics::histogram!(names::BATCH_SIZE, &labels);
    let queue_wait = metrics::histogram!(names::QUEUE_WAIT, &labels);
    let inference = metrics::histogram!(names::INFERENCE, &labels);
    let depth = metrics::gauge!(names::QUEUE_DEPTH, &labels);
    let mut state = BatchState::new(settings.max_batch);
    let layout = scorer.layout().cloned();
    let per_row = layout.as_ref().map_or(WINDOW_VALUES, StateLayout::frame_values);
    let mut features: Vec<f32> = Vec::with_capacity(settings.max_batch * per_row);
    let mut probs: Vec<f32> = Vec::new();
    loop {
        // A batch opens with the job held over from the last one, else with the next in the queue;
        // `recv` fails only when every sender is gone: the service is shutting down.
        let first = match state.take_held() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut offer = match check_job(&first, layout.as_ref()) {
            Ok(()) => state.offer(first),
            Err(e) => {
                refuse(first, e);
                continue;
            }
        };
        let Some(deadline) = state.deadline(settings.max_delay) else {
            continue; // its stream has gone
        };
        // Collect by looking at the queue every `COLLECT_POLL` rather than waiting on it: a worker
        // waiting on the channel is woken by every job (a futex syscall in the submitting stream's
        // task, a context switch here): 8 % of the service's CPU samples at 400 streams
        // (loadtest/README.md, "Issue 15, after the profile").
        while offer != Offer::Full {
            match rx.try_recv() {
                Ok(job) => match check_job(&job, layout.as_ref()) {
                    Ok(()) => offer = state.offer(job),
                    Err(e) => refuse(job, e),
                },
                Err(flume::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    std::thread::sleep((deadline - now).min(COLLECT_POLL));
                }
                Err(flume::TryRecvError::Disconnected) => break,
            }
        }
        depth.set(rx.len() as f64);
        let started = Instant::now();
        if let Some(oldest) = state.enqueued().next() {
            wait.record(started.saturating_duration_since(oldest));
        }
        for enqueued in state.enqueued() {
            queue_wait.record(started.saturating_duration_since(enqueued).as_secs_f64());
        }
        state.concatenate(&mut features);
        let windows = state.windows();
        probs.resize(windows * classes, 0.0);
        let result = match &mut scorer {
            WorkerScorer::Windowed(s) => s.score(&features, &mut probs),
            WorkerScorer::Streaming(s) => s.score_each(&features, &mut state.states_mut(), &mut probs),
        }
        .map_err(BatchError::from);
        inference.record(started.elapsed().as_secs_f64());
        batch_size.record(windows as f64);
        if let Err(e) = &result {
            tracing::error!(model = %model, windows, error = %e, "inference failed");
        }
        state.split(result.as_ref().map(|()| probs.as_slice()), classes);
    }
    tracing::debug!(model = %model, "inference worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use kws_models::ScoreError;

    /// Scores each window with its first feature value (class 0) and records batch sizes.
    struct Echo(Arc<std::sync::Mutex<Vec<usize>>>);

    impl Scorer for Echo {
        fn num_classes(&self) -> usize {
            2
        }
        fn score(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), ScoreError> {
            let n = features.len() / WINDOW_VALUES;
            self.0
                .lock()
                .map_err(|_| ScoreError::Runtime("poisoned".into()))?
                .push(n);
            for i in 0..n {
                out[2 * i] = features[i * WINDOW_VALUES];
                out[2 * i + 1] = -features[i * WINDOW_VALUES];
            }
            Ok(())
        }
    }

    fn job(value: f32, windows: usize) -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, rx) = oneshot::channel();
        let mut features = vec![0.0; windows * WINDOW_VALUES];
        for w in 0..windows {
            features[w * WINDOW_VALUES] = value + w as f32;
        }
        (Job::new(features, reply).expect("whole windows"), rx)
    }

    #[test]
    fn a_job_holds_whole_windows() {
        let (reply, _rx) = oneshot::channel();
        let e = Job::new(vec![0.0; WINDOW_VALUES + 1], reply).expect_err("partial window");
        assert_eq!(
            e,
            ScoreError::InputShape {
                got: WINDOW_VALUES + 1
            }
        );
        let (reply, _rx) = oneshot::channel();
        assert!(Job::new(Vec::new(), reply).is_err(), "no window");
        assert_eq!(job(0.0, 3).0.windows(), 3);
    }

    #[test]
    fn max_batch_is_a_cap_and_the_overflowing_job_opens_the_next_batch() {
        let mut s = BatchState::new(8);
        let (a, _ra) = job(0.0, 3);
        let (b, _rb) = job(10.0, 3);
        let (c, _rc) = job(20.0, 3);
        assert_eq!(s.offer(a), Offer::Taken);
        assert_eq!(s.offer(b), Offer::Taken);
        // 9 windows would exceed 8: the batch is complete at 6 and `c` waits for the next one.
        assert_eq!(s.offer(c), Offer::Full);
        assert_eq!(s.windows(), 6);
        let mut features = Vec::new();
        s.concatenate(&mut features);
        assert_eq!(features.len(), 6 * WINDOW_VALUES);
        assert!(
            s.states_mut().iter().all(|st| st.is_empty()),
            "windowed jobs have no state"
        );
        s.split(Ok(&[0.5; 6 * 2]), 2);
        assert_eq!(s.windows(), 0);
        let held = s.take_held().expect("held over");
        assert_eq!(held.windows(), 3);
        assert!(s.take_held().is_none());
        assert_eq!(s.offer(held), Offer::Taken);
        // A job that fills the batch exactly completes it.
        let (d, _rd) = job(30.0, 5);
        assert_eq!(s.offer(d), Offer::Full);
        assert_eq!(s.windows(), 8);
        assert!(s.take_held().is_none(), "nothing overflowed");
    }

    #[test]
    fn a_job_of_max_batch_windows_is_a_batch_of_its_own() {
        let mut s = BatchState::new(4);
        let (a, _ra) = job(0.0, 4);
        assert_eq!(s.offer(a), Offer::Full);
        assert_eq!(s.windows(), 4);
    }

    #[test]
    fn jobs_of_streams_that_have_gone_are_not_scored() {
        let mut s = BatchState::new(8);
        let (a, ra) = job(0.0, 2);
        drop(ra);
        assert_eq!(s.offer(a), Offer::Skipped);
        assert!(s.deadline(Duration::from_millis(5)).is_none(), "nothing to run");
        let (b, _rb) = job(1.0, 2);
        assert_eq!(s.offer(b), Offer::Taken);
        assert_eq!(s.windows(), 2);
    }

    #[test]
    fn split_routes_each_jobs_slice_or_the_error() {
        let mut s = BatchState::new(8);
        let (a, mut ra) = job(0.0, 1);
        let (b, mut rb) = job(100.0, 2);
        s.offer(a);
        s.offer(b);
        let mut features = Vec::new();
        s.concatenate(&mut features);
        let firsts: Vec<f32> = features.chunks(WINDOW_VALUES).map(|w| w[0]).collect();
        assert_eq!(
            firsts,
            vec![0.0, 100.0, 101.0],
            "job after job, window after window"
        );
        s.split(Ok(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 2);
        let a = ra.try_recv().expect("a answered");
        let b = rb.try_recv().expect("b answered");
        assert_eq!((a.probs, a.batch_windows), (vec![1.0, 2.0], 3));
        assert_eq!(b.probs, vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(b.features.len(), 2 * WINDOW_VALUES, "buffers come back");

        let (c, mut rc) = job(0.0, 1);
        s.offer(c);
        let failed = BatchError::Score(ScoreError::Runtime("boom".into()));
        s.split(Err(&failed), 2);
        let c = rc.try_recv().expect("c answered");
        assert_eq!(c.result, Err(failed));
        assert!(c.probs.is_empty());
    }

    /// Batch sizes an `Echo` scorer has seen.
    type Sizes = Arc<std::sync::Mutex<Vec<usize>>>;

    /// A windowed batcher of one `Echo` worker, `max_batch` 8, and the batch sizes it records.
    fn echo_batcher(max_delay: Duration) -> (Batcher, Vec<JoinHandle<()>>, Sizes) {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let settings = BatcherSettings {
            max_batch: 8,
            max_delay,
            queue_capacity: 64,
        };
        let (b, handles) = Batcher::start("m", vec![Box::new(Echo(sizes.clone()))], settings).expect("start");
        (b, handles, sizes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_across_jobs_and_routes_results() {
        let (b, handles, sizes) = echo_batcher(Duration::from_millis(200));
        let mut rxs = Vec::new();
        for i in 0..6 {
            let (j, rx) = job(i as f32 * 100.0, 2);
            b.submit(j).await.expect("submit");
            rxs.push(rx);
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            let r = rx.await.expect("reply");
            assert!(r.result.is_ok());
            let base = i as f32 * 100.0;
            assert_eq!(r.probs, vec![base, -base, base + 1.0, -(base + 1.0)]);
            assert_eq!(r.features.len(), 2 * WINDOW_VALUES, "buffers come back");
        }
        // 12 windows with max_batch 8 and a long max_delay: two batches, the first one full.
        assert_eq!(*sizes.lock().expect("lock"), vec![8, 4]);
        drop(b);
        for h in handles {
            h.join().expect("worker exits when the batcher is dropped");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_runs_without_waiting_for_its_deadline() {
        let (b, handles, sizes) = echo_batcher(Duration::from_secs(600));
        let mut rxs = Vec::new();
        for i in 0..4 {
            let (j, rx) = job(i as f32, 2);
            b.submit(j).await.expect("submit");
            rxs.push(rx);
        }
        // The worker looks at the queue while it collects: the fourth job fills the batch, which
        // runs then, not when its deadline (ten minutes) comes.
        for rx in rxs {
            let r = tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .expect("answered before the deadline")
                .expect("reply");
            assert!(r.result.is_ok());
        }
        assert_eq!(*sizes.lock().expect("lock"), vec![8]);
        drop(b);
        for h in handles {
            h.join().expect("worker exits");
        }
    }

    /// A streaming fake: 2 frames x 40 per hop, a state of 3 values per stream; the new state is the
    /// old one plus the hop's first frame value, the posteriors are (first frame value, state[0]).
    struct Counter(StateLayout, Arc<std::sync::Mutex<Vec<usize>>>);

    fn counter_layout() -> StateLayout {
        StateLayout {
            hop_frames: 2,
            lead_frames: 0,
            first_valid_call: 48,
            tensors: Vec::new(),
            len: 3,
        }
    }

    impl StreamScorer for Counter {
        fn num_classes(&self) -> usize {
            2
        }
        fn layout(&self) -> &StateLayout {
            &self.0
        }
        fn score(
            &mut self,
            frames: &[f32],
            states_in: &[f32],
            states_out: &mut [f32],
            probs: &mut [f32],
        ) -> Result<(), ScoreError> {
            let n =
                kws_models::streaming::check_stream_batch(&self.0, frames, states_in, states_out, probs, 2)?;
            self.1
                .lock()
                .map_err(|_| ScoreError::Runtime("poisoned".into()))?
                .push(n);
            for i in 0..n {
                let f = frames[i * 80];
                for k in 0..3 {
                    states_out[i * 3 + k] = states_in[i * 3 + k] + f;
                }
                probs[2 * i] = f;
                probs[2 * i + 1] = states_in[i * 3];
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streaming_jobs_batch_states_and_get_their_new_state_back() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let settings = BatcherSettings {
            max_batch: 8,
            max_delay: Duration::from_millis(200),
            queue_capacity: 64,
        };
        let (b, handles) = Batcher::start_streaming(
            "m",
            vec![Box::new(Counter(counter_layout(), sizes.clone()))],
            settings,
        )
        .expect("start");
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (reply, rx) = oneshot::channel();
            let mut frames = vec![0.0; 80];
            frames[0] = i as f32 + 1.0;
            let state = vec![10.0 * i as f32; 3];
            let probs = Vec::with_capacity(2);
            b.submit(Job::hop(frames, state, probs, reply).expect("hop"))
                .await
                .expect("submit");
            rxs.push(rx);
        }
        // A hop of the wrong size is answered with an error, not scored with the others.
        let (reply, bad) = oneshot::channel();
        b.submit(Job::hop(vec![0.0; 40], vec![0.0; 3], Vec::new(), reply).expect("hop"))
            .await
            .expect("submit");
        // A windowed job on a streaming batcher likewise.
        let (w, wrx) = job(0.0, 1);
        b.submit(w).await.expect("submit");
        for (i, rx) in rxs.into_iter().enumerate() {
            let r = rx.await.expect("reply");
            assert!(r.result.is_ok(), "{:?}", r.result);
            let (f, s) = (i as f32 + 1.0, 10.0 * i as f32);
            assert_eq!(r.probs, vec![f, s]);
            assert_eq!(
                r.state,
                vec![s + f; 3],
                "the new state comes back in the job's buffer"
            );
            assert_eq!(
                (r.features.len(), r.probs.capacity()),
                (80, 2),
                "buffers come back"
            );
        }
        let bad = bad.await.expect("answered");
        assert!(matches!(
            bad.result,
            Err(BatchError::Score(ScoreError::InputShape { got: 40 }))
        ));
        assert_eq!(bad.state, vec![0.0; 3], "state unchanged");
        assert!(wrx.await.expect("answered").result.is_err());
        assert_eq!(*sizes.lock().expect("lock"), vec![3], "three hops, one call");
        drop(b);
        for h in handles {
            h.join().expect("worker exits when the batcher is dropped");
        }
    }

    #[test]
    fn queue_wait_is_smoothed_and_reads_zero_when_idle() {
        let w = QueueWait::default();
        assert_eq!(w.current(), Duration::ZERO, "no batch yet");
        w.record(Duration::from_millis(100));
        assert_eq!(w.current(), Duration::from_millis(100));
        w.record(Duration::from_millis(600));
        assert_eq!(w.current(), Duration::from_millis(200), "EWMA 4:1");
        std::thread::sleep(QueueWait::STALE + Duration::from_millis(50));
        assert_eq!(w.current(), Duration::ZERO, "stale: no batch ran recently");
        w.record(Duration::from_millis(7));
        assert_eq!(w.current(), Duration::from_millis(7), "a stale average restarts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_delay_bounds_the_wait_of_a_lone_job() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let settings = BatcherSettings {
            max_batch: 64,
            max_delay: Duration::from_millis(20),
            queue_capacity: 4,
        };
        let (b, _h) = Batcher::start("m", vec![Box::new(Echo(sizes.clone()))], settings).expect("start");
        let (j, rx) = job(1.0, 1);
        let t0 = Instant::now();
        b.submit(j).await.expect("submit");
        let r = tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .expect("answered")
            .expect("reply");
        assert_eq!(r.batch_windows, 1);
        assert!(
            t0.elapsed() >= Duration::from_millis(15),
            "waited for company up to max_delay"
        );
    }
}
