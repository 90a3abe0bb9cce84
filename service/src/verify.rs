//! The second stage of models with a verifier: candidate clips of every stream, scored in batches
//! on worker threads that own their ONNX Runtime sessions (the first stage's `batcher` is the
//! model).
//!
//! A stream's session sends a [`ClipJob`] when a candidate's clip is complete
//! (`Spotter::ready_clip`) and applies the reply with `Spotter::verdict`. Candidates are rare (a
//! few per minute of speech per stream) and each one holds its stream's events back until its
//! verdict, so a worker never waits for a batch to fill: it takes the first queued clip and
//! whatever else is queued, up to `max_batch`, and runs one batch. The queue is bounded
//! (`verifier.queue_capacity`): a full queue makes `submit` wait, and the stream stops reading its
//! client meanwhile. Every job is answered: its probabilities, or the error (a batch that fails is
//! retried clip by clip, so one bad clip fails only its own stream). A job whose stream has gone is
//! not scored.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kws_models::verifier::{Clip, HEAD_CLASSES};
use kws_models::{ClipScorer, VerifyError};
use tokio::sync::oneshot;

use crate::telemetry::names;

/// One candidate's clip to score.
#[derive(Debug)]
pub struct ClipJob {
    pub audio: Vec<f32>,
    pub lead: usize,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<ClipResult>,
}

/// A scored clip: the audio back (for reuse) and the head's probabilities, or why there are none.
#[derive(Debug)]
pub struct ClipResult {
    pub audio: Vec<f32>,
    pub probs: Result<[f32; HEAD_CLASSES], VerifyError>,
}

/// Settings of one model's verifier pool.
#[derive(Debug, Clone, Copy)]
pub struct VerifierSettings {
    pub max_batch: usize,
    pub queue_capacity: usize,
}

/// The workers were shut down.
#[derive(Debug, thiserror::Error)]
#[error("the verifier workers of model {0} have stopped")]
pub struct VerifierClosed(pub Arc<str>);

/// Handle used by streams to submit candidate clips; cheap to clone.
#[derive(Debug, Clone)]
pub struct VerifierPool {
    tx: flume::Sender<ClipJob>,
    model: Arc<str>,
}

impl VerifierPool {
    /// Start one worker thread per scorer, sharing one bounded queue.
    pub fn start(
        model: &str,
        scorers: Vec<Box<dyn ClipScorer + Send>>,
        settings: VerifierSettings,
    ) -> std::io::Result<(Self, Vec<JoinHandle<()>>)> {
        let (tx, rx) = flume::bounded::<ClipJob>(settings.queue_capacity);
        let model: Arc<str> = Arc::from(model);
        let mut handles = Vec::new();
        for (i, scorer) in scorers.into_iter().enumerate() {
            let rx = rx.clone();
            let model = model.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kws-verify-{i}"))
                    .spawn(move || worker(scorer, rx, settings.max_batch, &model))?,
            );
        }
        Ok((Self { tx, model }, handles))
    }

    /// Enqueue a clip; waits while the queue is full.
    pub async fn submit(&self, job: ClipJob) -> Result<(), VerifierClosed> {
        self.tx
            .send_async(job)
            .await
            .map_err(|_| VerifierClosed(self.model.clone()))
    }
}

/// Score `jobs` as one batch into their replies; on a batch error, each clip alone (so that only
/// the clip at fault gets the error).
fn score_batch(scorer: &mut dyn ClipScorer, jobs: Vec<ClipJob>) {
    let clips: Vec<Clip<'_>> = jobs
        .iter()
        .map(|j| Clip {
            audio: &j.audio,
            lead: j.lead,
        })
        .collect();
    let batch = scorer.score_clips(&clips);
    drop(clips);
    let results: Vec<Result<[f32; HEAD_CLASSES], VerifyError>> = match batch {
        Ok(rows) if rows.len() == jobs.len() => rows.into_iter().map(Ok).collect(),
        Ok(_) | Err(_) if jobs.len() > 1 => jobs
            .iter()
            .map(|j| {
                let one = Clip {
                    audio: &j.audio,
                    lead: j.lead,
                };
                scorer.score_clips(&[one]).and_then(|r| {
                    r.first().copied().ok_or(VerifyError::ModelOutput {
                        model: "head",
                        got: 0,
                        want: HEAD_CLASSES,
                    })
                })
            })
            .collect(),
        Ok(rows) => vec![Err(VerifyError::ModelOutput {
            model: "head",
            got: rows.len() * HEAD_CLASSES,
            want: HEAD_CLASSES,
        })],
        Err(e) => vec![Err(e)],
    };
    for (job, probs) in jobs.into_iter().zip(results) {
        if let Err(e) = &probs {
            tracing::error!(error = %e, samples = job.audio.len(), "verifier failed on a clip");
        }
        // A stream that went away meanwhile does not read its reply.
        let _ = job.reply.send(ClipResult {
            audio: job.audio,
            probs,
        });
    }
}

fn worker(
    mut scorer: Box<dyn ClipScorer + Send>,
    rx: flume::Receiver<ClipJob>,
    max_batch: usize,
    model: &str,
) {
    let labels = [("model", model.to_string())];
    let batch_size = metrics::histogram!(names::VERIFIER_BATCH_SIZE, &labels);
    let inference = metrics::histogram!(names::VERIFIER_INFERENCE, &labels);
    // `recv` fails only when every sender is gone: the service is shutting down.
    while let Ok(first) = rx.recv() {
        let mut jobs = Vec::with_capacity(max_batch);
        for job in std::iter::once(first).chain(rx.try_iter().take(max_batch - 1)) {
            if !job.reply.is_closed() {
                jobs.push(job);
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let started = Instant::now();
        let n = jobs.len();
        score_batch(scorer.as_mut(), jobs);
        inference.record(started.elapsed().as_secs_f64());
        batch_size.record(n as f64);
    }
    tracing::debug!(model = %model, "verifier worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts a clip's first sample in class 0; a clip whose first sample is negative fails.
    struct Fake(Arc<std::sync::Mutex<Vec<usize>>>);

    impl ClipScorer for Fake {
        fn score_clips(&mut self, clips: &[Clip<'_>]) -> Result<Vec<[f32; HEAD_CLASSES]>, VerifyError> {
            self.0
                .lock()
                .map_err(|_| VerifyError::Runtime("poisoned".into()))?
                .push(clips.len());
            clips
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if c.audio[0] < 0.0 {
                        return Err(VerifyError::BadSample {
                            index: i,
                            sample: 0,
                            value: c.audio[0],
                        });
                    }
                    let mut p = [0.0; HEAD_CLASSES];
                    p[0] = c.audio[0];
                    Ok(p)
                })
                .collect()
        }
    }

    fn job(v: f32) -> (ClipJob, oneshot::Receiver<ClipResult>) {
        let (reply, rx) = oneshot::channel();
        (
            ClipJob {
                audio: vec![v; 4],
                lead: 0,
                enqueued: Instant::now(),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn a_bad_clip_fails_alone() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut f = Fake(calls.clone());
        let (a, ra) = job(0.25);
        let (b, rb) = job(-1.0);
        let (c, rc) = job(0.5);
        score_batch(&mut f, vec![a, b, c]);
        let got = |mut r: oneshot::Receiver<ClipResult>| r.try_recv().expect("answered").probs;
        assert_eq!(got(ra).map(|p| p[0]), Ok(0.25));
        assert!(matches!(got(rb), Err(VerifyError::BadSample { .. })));
        assert_eq!(got(rc).map(|p| p[0]), Ok(0.5));
        // One batch of three, then each alone.
        assert_eq!(*calls.lock().expect("calls"), vec![3, 1, 1, 1]);
    }

    #[test]
    fn the_pool_batches_what_is_queued_and_answers_every_job() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (pool, handles) = VerifierPool::start(
            "m",
            vec![Box::new(Fake(calls.clone()))],
            VerifierSettings {
                max_batch: 4,
                queue_capacity: 16,
            },
        )
        .expect("started");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let results = rt.block_on(async {
            let mut rxs = Vec::new();
            for i in 0..10 {
                let (j, rx) = job(i as f32 / 10.0);
                pool.submit(j).await.expect("submitted");
                rxs.push(rx);
            }
            let mut out = Vec::new();
            for rx in rxs {
                out.push(rx.await.expect("answered").probs.expect("scored")[0]);
            }
            out
        });
        assert_eq!(results, (0..10).map(|i| i as f32 / 10.0).collect::<Vec<_>>());
        let calls = calls.lock().expect("calls").clone();
        assert_eq!(calls.iter().sum::<usize>(), 10);
        assert!(calls.iter().all(|&n| (1..=4).contains(&n)), "{calls:?}");
        drop(pool);
        for h in handles {
            h.join().expect("worker exits when the pool is dropped");
        }
    }
}
