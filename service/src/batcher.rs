//! Dynamic batching of scoring jobs across streams (Triton's dynamic batcher is the model).
//!
//! Streams submit jobs (one or more windows each) to a bounded MPMC queue per model. Each inference
//! worker is a dedicated OS thread owning one ONNX Runtime session. A worker takes the first job,
//! then keeps collecting until the batch holds `max_batch` windows or `max_delay` has passed since that
//! first job was enqueued, runs one `Session::run` over the concatenated windows and sends every job
//! its slice of posteriors. Jobs are never dropped: a full queue makes `submit` wait (which makes the
//! stream stop reading its client), and every job is answered, with an error if inference fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kws_models::Scorer;
use kws_models::frontend::WINDOW_VALUES;
use tokio::sync::oneshot;

use crate::telemetry::names;

/// One stream's windows to score. `features` holds `windows * 98 * 40` values; `probs` is a buffer
/// the worker fills (`windows * classes`), handed back with the reply so streams reuse allocations.
#[derive(Debug)]
pub struct Job {
    pub features: Vec<f32>,
    pub probs: Vec<f32>,
    pub windows: usize,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

/// A scored job: the buffers back, and how it went.
#[derive(Debug)]
pub struct JobResult {
    pub features: Vec<f32>,
    pub probs: Vec<f32>,
    pub result: Result<(), String>,
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

impl Batcher {
    /// Start `scorers.len()` workers, one OS thread each, sharing one queue.
    pub fn start(
        model: &str,
        scorers: Vec<Box<dyn Scorer>>,
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
                model,
                max_batch: settings.max_batch,
                wait,
            },
            handles,
        ))
    }

    /// Most windows per job (a job may not exceed a batch).
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
        metrics::gauge!(names::QUEUE_DEPTH, "model" => self.model.to_string()).set(self.tx.len() as f64);
        r
    }

    /// Smoothed queue wait of recent batches (for load shedding).
    pub fn queue_wait(&self) -> Duration {
        self.wait.current()
    }

    /// The served model's name. Workers exit once every `Batcher` clone is dropped and the queue
    /// is empty.
    pub fn model(&self) -> &str {
        &self.model
    }
}

fn worker(
    mut scorer: Box<dyn Scorer>,
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
    let mut jobs: Vec<Job> = Vec::with_capacity(settings.max_batch);
    let mut features: Vec<f32> = Vec::with_capacity(settings.max_batch * WINDOW_VALUES);
    let mut probs: Vec<f32> = Vec::new();
    // `recv` fails only when every sender is gone: the service is shutting down.
    while let Ok(first) = rx.recv() {
        let deadline = first.enqueued + settings.max_delay;
        let mut windows = first.windows;
        jobs.push(first);
        while windows < settings.max_batch {
            match rx.recv_deadline(deadline) {
                Ok(job) => {
                    windows += job.windows;
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        depth.set(rx.len() as f64);
        let started = Instant::now();
        features.clear();
        if let Some(oldest) = jobs.first() {
            wait.record(started.saturating_duration_since(oldest.enqueued));
        }
        for job in &jobs {
            features.extend_from_slice(&job.features[..job.windows * WINDOW_VALUES]);
            queue_wait.record(started.saturating_duration_since(job.enqueued).as_secs_f64());
        }
        probs.resize(windows * classes, 0.0);
        let result = scorer.score(&features, &mut probs).map_err(|e| e.to_string());
        inference.record(started.elapsed().as_secs_f64());
        batch_size.record(windows as f64);
        if let Err(e) = &result {
            tracing::error!(model = %model, windows, error = %e, "inference failed");
        }
        let mut offset = 0;
        for mut job in jobs.drain(..) {
            let n = job.windows * classes;
            job.probs.clear();
            if result.is_ok() {
                job.probs.extend_from_slice(&probs[offset..offset + n]);
            }
            offset += n;
            // A stream that went away does not read its reply: nothing to do.
            let _ = job.reply.send(JobResult {
                features: job.features,
                probs: job.probs,
                result: result.clone(),
                batch_windows: windows,
            });
        }
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
        (
            Job {
                features,
                probs: Vec::new(),
                windows,
                enqueued: Instant::now(),
                reply,
            },
            rx,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_across_jobs_and_routes_results() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let settings = BatcherSettings {
            max_batch: 8,
            max_delay: Duration::from_millis(200),
            queue_capacity: 64,
        };
        let (b, handles) = Batcher::start("m", vec![Box::new(Echo(sizes.clone()))], settings).expect("start");
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
