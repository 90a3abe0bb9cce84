//! Graceful shutdown: SIGTERM/SIGINT → health NOT_SERVING and no new streams (`Draining`) → in-flight
//! streams run on until they end or the grace period is over → the rest are told to finish
//! (`Closing`: they flush, send their summary and end with UNAVAILABLE) → the server stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Refuse new streams; let the running ones continue.
    Draining,
    /// Grace period over: running streams finish now.
    Closing,
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long streams told to close (`Closing`) may take to flush what they already received.
const CLOSING_WAIT: Duration = Duration::from_secs(10);

/// Drive the phases after `trigger` resolves; returns when every stream has ended (or `grace` plus a
/// bounded wait for the closing streams is over). `active` is the admission semaphore with
/// `max_streams` permits: all permits back means no stream is running, so the drain waits for them
/// (a stream's task returns its permit when it ends) instead of polling.
pub async fn drain(
    phase: &watch::Sender<Phase>,
    active: &Arc<Semaphore>,
    max_streams: usize,
    grace: Duration,
    on_draining: impl std::future::Future<Output = ()>,
) {
    let _ = phase.send(Phase::Draining);
    on_draining.await;
    let running = || max_streams.saturating_sub(active.available_permits());
    tracing::info!(
        running = running(),
        grace_ms = grace.as_millis() as u64,
        "draining: no new streams"
    );
    if !all_returned(active, max_streams, grace).await {
        tracing::warn!(running = running(), "grace period over: closing streams");
        let _ = phase.send(Phase::Closing);
        // Closing streams only flush what they already received: this is quick.
        all_returned(active, max_streams, CLOSING_WAIT).await;
    }
    tracing::info!("drained");
}

/// Wait up to `timeout` until all `max_streams` permits are back; true if they are. The permits
/// are given back at once: no stream is admitted while draining anyway.
async fn all_returned(active: &Semaphore, max_streams: usize, timeout: Duration) -> bool {
    // More permits than `acquire_many` can ask for at once (u32) are never configured in practice;
    // such a server waits for the first u32::MAX.
    let all = u32::try_from(max_streams).unwrap_or(u32::MAX);
    matches!(
        tokio::time::timeout(timeout, active.acquire_many(all)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_returns_when_the_last_stream_ends() {
        let active = Arc::new(Semaphore::new(2));
        let stream = active.clone().try_acquire_owned().expect("a running stream");
        let (phase, rx) = watch::channel(Phase::Running);
        let ended = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(stream);
        });
        let grace = Duration::from_secs(60);
        tokio::time::timeout(grace / 2, drain(&phase, &active, 2, grace, async {}))
            .await
            .expect("returned when the stream ended, long before the grace period");
        assert_eq!(*rx.borrow(), Phase::Draining, "never told to close");
        assert_eq!(active.available_permits(), 2, "the permits are back");
        ended.await.expect("stream task");
    }

    #[tokio::test]
    async fn streams_past_the_grace_period_are_told_to_close() {
        let active = Arc::new(Semaphore::new(1));
        let stream = active.clone().try_acquire_owned().expect("a running stream");
        let (phase, mut rx) = watch::channel(Phase::Running);
        let closing = tokio::spawn(async move {
            let _ = rx.wait_for(|p| *p == Phase::Closing).await;
            drop(stream);
        });
        tokio::time::timeout(
            CLOSING_WAIT,
            drain(&phase, &active, 1, Duration::from_millis(20), async {}),
        )
        .await
        .expect("returned when the closing stream ended");
        assert_eq!(*phase.borrow(), Phase::Closing);
        assert_eq!(active.available_permits(), 1);
        closing.await.expect("stream task");
    }
}
