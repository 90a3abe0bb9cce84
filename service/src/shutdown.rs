//! Graceful shutdown: SIGTERM/SIGINT → health NOT_SERVING and no new streams (`Draining`) → in-flight
//! streams run on until they end or the grace period is over → the rest are told to finish
//! (`Closing`: they flush, send their summary and end with UNAVAILABLE) → the server stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Drive the phases after `trigger` resolves; returns when every stream has ended (or `grace` plus a
/// bounded wait for the closing streams is over). `active` is the admission semaphore with
/// `max_streams` permits: all permits back means no stream is running.
pub async fn drain(
    phase: &watch::Sender<Phase>,
    active: &Arc<Semaphore>,
    max_streams: usize,
    grace: Duration,
    on_draining: impl std::future::Future<Output = ()>,
) {
    let _ = phase.send(Phase::Draining);
    on_draining.await;
    let idle = || active.available_permits() >= max_streams;
    let deadline = Instant::now() + grace;
    tracing::info!(
        running = max_streams - active.available_permits(),
        grace_ms = grace.as_millis() as u64,
        "draining: no new streams"
    );
    while !idle() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !idle() {
        tracing::warn!(
            running = max_streams - active.available_permits(),
            "grace period over: closing streams"
        );
        let _ = phase.send(Phase::Closing);
        // Closing streams only flush what they already received: this is quick.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !idle() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tracing::info!("drained");
}
