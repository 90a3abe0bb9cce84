//! Giving freed heap memory back to the operating system.
//!
//! After an overload episode the windows queued for scoring are freed, but glibc's allocator keeps
//! most of the freed pages in its arenas (only the top of each heap is returned by itself), so the
//! resident size stays at its peak with no stream running. A periodic `malloc_trim(0)` returns every
//! free page of every arena (`MADV_DONTNEED`); when nothing is free it costs microseconds.
//! Measured effect: `RELIABILITY.md` ("Memory after an overload").

use std::time::{Duration, Instant};

use crate::telemetry::names;

/// Return free heap pages to the OS. Returns whether any memory was released. A no-op outside glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its arena locks; it takes
    // no pointer from us and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Every `interval`, trim the heap on a blocking thread and count what came back.
pub async fn trim_periodically(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let r = tokio::task::spawn_blocking(|| {
            let before = rss();
            let t0 = Instant::now();
            let released = trim();
            (before, rss(), released, t0.elapsed())
        })
        .await;
        if let Ok((Some(before), Some(after), released, took)) = r {
            let freed = before.saturating_sub(after);
            metrics::counter!(names::MEMORY_TRIMMED).increment(freed);
            if freed > 0 {
                tracing::debug!(
                    released,
                    rss_before = before,
                    rss_after = after,
                    took_us = took.as_micros() as u64,
                    "heap trimmed"
                );
            }
        }
    }
}

fn rss() -> Option<u64> {
    crate::telemetry::read_proc_self(100.0).map(|(_, rss)| rss as u64)
}
