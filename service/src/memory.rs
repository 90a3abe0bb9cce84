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

/// Stops the trimming thread when dropped.
#[derive(Debug)]
pub struct Trimmer {
    _stop: std::sync::mpsc::Sender<()>,
}

/// Every `interval`, trim the heap on a thread of its own (`kws-trim`: one thread for the life of
/// the server, so the thread count stays flat) and count what came back.
pub fn spawn_trimmer(interval: Duration) -> std::io::Result<Trimmer> {
    let (stop, rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("kws-trim".into())
        .spawn(move || {
            let counter = metrics::counter!(names::MEMORY_TRIMMED);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                let before = rss();
                let t0 = Instant::now();
                let released = trim();
                let took = t0.elapsed();
                if let (Some(before), Some(after)) = (before, rss()) {
                    let freed = before.saturating_sub(after);
                    counter.increment(freed);
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
        })?;
    Ok(Trimmer { _stop: stop })
}

fn rss() -> Option<u64> {
    crate::telemetry::read_proc_self().map(|(_, rss)| rss as u64)
}
