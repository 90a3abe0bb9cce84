//! Metrics and logs. Every metric name is defined once here (Prometheus conventions: base units,
//! `_total` counters, bounded labels: never a stream id). Histograms have explicit buckets so they
//! render as Prometheus histograms, which aggregate across pods.
//!
//! `metrics` counters are integers, so totals measured in seconds (audio, CPU) are exported as
//! gauges that only ever increase (`*_seconds_total`): `rate()` and `increase()` work on them as on
//! counters, and they restart from 0 with the process like counters do.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Deserialize;

pub mod names {
    /// Gauge: Detect streams in progress.
    pub const ACTIVE_STREAMS: &str = "kws_active_streams";
    /// Gauge: the configured stream limit.
    pub const MAX_STREAMS: &str = "kws_max_streams";
    /// Gauge: smoothed lag of the runtime's threads (a 20-ms timer's lateness), read by admission.
    pub const RUNTIME_LAG: &str = "kws_runtime_lag_seconds";
    /// Gauge: the CPU the pod may use, in cores (`server.cpu_limit_cores` or the cgroup quota), read
    /// by admission.
    pub const CPU_LIMIT: &str = "kws_cpu_limit_cores";
    /// Gauge: cores the process used over the last 2 s, as admission measures them.
    pub const CPU_USED: &str = "kws_cpu_used_cores";
    /// Gauge: streams opened that have not sent their config yet (they hold no stream slot).
    pub const AWAITING_CONFIG: &str = "kws_streams_awaiting_config";
    /// Gauge: bytes of features queued for scoring or being scored, all streams together.
    pub const QUEUED_BYTES: &str = "kws_queued_bytes";
    /// Gauge: the process-wide limit of queued feature bytes (`server.max_queued_bytes`).
    pub const MAX_QUEUED_BYTES: &str = "kws_max_queued_bytes";
    /// Counter: times a stream had to wait for room under `server.max_queued_bytes` (it stops
    /// reading its client meanwhile; nothing is dropped).
    pub const QUEUE_BUDGET_WAITS: &str = "kws_queued_bytes_waits_total";
    /// Counter: bytes given back to the operating system by the periodic heap trim.
    pub const MEMORY_TRIMMED: &str = "kws_memory_trimmed_bytes_total";
    /// Counter{outcome}: streams ended, by outcome (ok, cancelled, invalid_argument, resource_exhausted,
    /// deadline_exceeded, unavailable, unauthenticated, internal).
    pub const STREAMS: &str = "kws_streams_total";
    /// Float total{model}: seconds of audio received from clients.
    pub const AUDIO_RECEIVED: &str = "kws_audio_received_seconds_total";
    /// Float total{model}: seconds of audio processed: up to the end of the last scored window while a
    /// stream runs, all of it once the stream is flushed. Equals received for streams that end
    /// normally.
    pub const AUDIO_PROCESSED: &str = "kws_audio_processed_seconds_total";
    /// Float total{model, outcome}: seconds of audio received but not processed, counted when a
    /// stream ends (0 for streams that end normally: ok, or closed by a drain or time limit after
    /// their summary). received == processed + unprocessed at all times between streams.
    pub const AUDIO_UNPROCESSED: &str = "kws_audio_unprocessed_seconds_total";
    /// Counter{result}: bearer-token reloads (ok, error).
    pub const AUTH_RELOADS: &str = "kws_auth_reloads_total";
    /// Counter{model}: windows scored.
    pub const WINDOWS: &str = "kws_windows_scored_total";
    /// Counter{model, keyword}: keyword events sent.
    pub const EVENTS: &str = "kws_events_total";
    /// Counter{model, keyword}: first-stage candidates sent to the verifier (cascade streams).
    pub const CANDIDATES: &str = "kws_candidates_total";
    /// Counter{model, keyword}: candidates the verifier rejected (no event).
    pub const VERIFIER_REJECTIONS: &str = "kws_verifier_rejections_total";
    /// Histogram{model}: candidate clips per verifier call.
    pub const VERIFIER_BATCH_SIZE: &str = "kws_verifier_batch_size";
    /// Histogram{model}: verifier time per batch (mel, embeddings, head).
    pub const VERIFIER_INFERENCE: &str = "kws_verifier_seconds";
    /// Histogram{model}: from a candidate's clip being complete to its verdict reaching the stream.
    pub const VERDICT_LATENCY: &str = "kws_verdict_latency_seconds";
    /// Histogram{model}: windows per ONNX Runtime call.
    pub const BATCH_SIZE: &str = "kws_batch_size";
    /// Histogram{model}: time a scoring job waited in the queue before its batch ran.
    pub const QUEUE_WAIT: &str = "kws_batch_queue_wait_seconds";
    /// Histogram{model}: ONNX Runtime time per batch.
    pub const INFERENCE: &str = "kws_inference_seconds";
    /// Histogram{model}: from receiving the audio chunk that completed a window to sending its event.
    pub const EVENT_LATENCY: &str = "kws_event_latency_seconds";
    /// Counter{model}: times a stream's unscored backlog crossed the `behind` threshold.
    pub const STREAMS_BEHIND: &str = "kws_streams_behind_total";
    /// Counter{reason}: requests refused before a stream started (admission and load shedding:
    /// resource_exhausted; draining: unavailable; auth: unauthenticated).
    pub const REJECTED: &str = "kws_rejected_total";
    /// Gauge{model, variant, version}: 1 for each model loaded and serving.
    pub const MODEL_LOADED: &str = "kws_model_loaded";
    /// Counter{model}: model loads that failed (at start-up).
    pub const MODEL_LOAD_FAILURES: &str = "kws_model_load_failures_total";
    /// Gauge{model}: scoring jobs waiting in the batcher queue.
    pub const QUEUE_DEPTH: &str = "kws_batch_queue_depth";
    /// Float total: CPU seconds used by the process (user + system), from /proc.
    pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
    /// Gauge: resident memory of the process in bytes, from /proc.
    pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
    /// Gauge: open file descriptors of the process.
    pub const PROCESS_FDS: &str = "process_open_fds";
    /// Counter{model, keyword, threshold}: evaluation, true positives (labelled streams).
    pub const EVAL_TP: &str = "kws_eval_true_positives_total";
    /// Counter{model, keyword, threshold}: evaluation, false positives (labelled and negative streams).
    pub const EVAL_FP: &str = "kws_eval_false_positives_total";
    /// Counter{model, keyword, threshold}: evaluation, false negatives (labelled streams).
    pub const EVAL_FN: &str = "kws_eval_false_negatives_total";
    /// Float total{model, kind}: audio seconds evaluated (kind = labelled | negative).
    pub const EVAL_AUDIO: &str = "kws_eval_audio_seconds_total";
    /// Counter{model}: evaluated streams whose grid reached `evaluation.max_grid_events` (only their
    /// first part was evaluated).
    pub const EVAL_TRUNCATED: &str = "kws_eval_truncated_streams_total";
    /// Counter{model, keyword, verdict}: feedback received (correct, false_alarm, missed).
    pub const FEEDBACK: &str = "kws_feedback_total";
    /// Gauge{model, keyword}: the model's recommended (operating) threshold of each keyword.
    pub const KEYWORD_THRESHOLD: &str = "kws_keyword_threshold";
    /// Counter{method, code}: unary RPCs (GetModelInfo, ListModels, SubmitFeedback) by status code.
    pub const REQUESTS: &str = "kws_requests_total";
    /// Gauge{cpu_arch, int8_kernels}: always 1; the CPU and the int8 kernel family ONNX Runtime
    /// uses on it (an info metric: two pods that score differently can be told apart by it).
    pub const RUNTIME_INFO: &str = "kws_runtime_info";
}

/// Every `outcome` label value of `kws_streams_total` (derived from the status-code mapping).
pub use crate::error::OUTCOMES;
/// Every `reason` label value of `kws_rejected_total`.
pub const REJECT_REASONS: &[&str] = &["resource_exhausted", "unavailable", "unauthenticated"];
/// Every `verdict` label value of `kws_feedback_total`.
pub const VERDICTS: &[&str] = &["correct", "false_alarm", "missed"];
/// Every `kind` label value of the evaluation series.
pub const EVAL_KINDS: &[&str] = &["labelled", "negative"];

/// Create the cascade's counters of a served model with a verifier at zero (see [`register_model`]).
pub fn register_verifier(model: &str, keywords: &[String]) {
    use names::*;
    for kw in keywords {
        metrics::counter!(CANDIDATES, "model" => model.to_string(), "keyword" => kw.clone()).increment(0);
        metrics::counter!(VERIFIER_REJECTIONS, "model" => model.to_string(), "keyword" => kw.clone())
            .increment(0);
    }
}

/// Create every bounded series of a served model at zero, so the first increment after a start is
/// seen by `rate()`/`increase()` (a series born with a value is invisible to them), and export the
/// operating thresholds.
pub fn register_model(model: &str, keywords: &[String], thresholds: &[f32], grid_labels: &[String]) {
    use names::*;
    for (kw, th) in keywords.iter().zip(thresholds) {
        metrics::gauge!(KEYWORD_THRESHOLD, "model" => model.to_string(), "keyword" => kw.clone())
            .set(f64::from(*th));
        metrics::counter!(EVENTS, "model" => model.to_string(), "keyword" => kw.clone()).increment(0);
        for v in VERDICTS {
            metrics::counter!(FEEDBACK, "model" => model.to_string(), "keyword" => kw.clone(), "verdict" => *v)
                .increment(0);
        }
        for t in grid_labels {
            let lbl = [
                ("model", model.to_string()),
                ("keyword", kw.clone()),
                ("threshold", t.clone()),
            ];
            metrics::counter!(EVAL_TP, &lbl).increment(0);
            metrics::counter!(EVAL_FN, &lbl).increment(0);
            for kind in EVAL_KINDS {
                let lbl = [
                    ("model", model.to_string()),
                    ("keyword", kw.clone()),
                    ("threshold", t.clone()),
                    ("kind", (*kind).to_string()),
                ];
                metrics::counter!(EVAL_FP, &lbl).increment(0);
            }
        }
    }
    for kind in EVAL_KINDS {
        metrics::gauge!(EVAL_AUDIO, "model" => model.to_string(), "kind" => *kind).increment(0.0);
    }
    metrics::counter!(WINDOWS, "model" => model.to_string()).increment(0);
    metrics::counter!(EVAL_TRUNCATED, "model" => model.to_string()).increment(0);
    metrics::counter!(STREAMS_BEHIND, "model" => model.to_string()).increment(0);
}

/// Create the server-wide bounded series at zero (see [`register_model`]).
pub fn register_server() {
    for o in OUTCOMES {
        metrics::counter!(names::STREAMS, "outcome" => o).increment(0);
    }
    for r in REJECT_REASONS {
        metrics::counter!(names::REJECTED, "reason" => *r).increment(0);
    }
    metrics::counter!(names::QUEUE_BUDGET_WAITS).increment(0);
    metrics::counter!(names::MEMORY_TRIMMED).increment(0);
    let cpu = kws_models::cpu::detect();
    metrics::gauge!(names::RUNTIME_INFO, "cpu_arch" => cpu.arch, "int8_kernels" => cpu.int8_kernels.as_str())
        .set(1.0);
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Register descriptions (HELP lines).
pub fn describe() {
    use names::*;
    describe_gauge!(ACTIVE_STREAMS, "Detect streams in progress");
    describe_gauge!(MAX_STREAMS, "Configured limit of concurrent Detect streams");
    describe_gauge!(
        RUNTIME_INFO,
        "Always 1: the CPU architecture and the int8 kernel family ONNX Runtime uses on it"
    );
    describe_counter!(STREAMS, "Detect streams ended, by outcome");
    describe_gauge!(
        RUNTIME_LAG,
        Unit::Seconds,
        "Smoothed lateness of the runtime's threads (load shedding reads it)"
    );
    describe_gauge!(
        CPU_LIMIT,
        "CPU the pod may use, in cores (config or cgroup quota; load shedding reads it)"
    );
    describe_gauge!(
        CPU_USED,
        "Cores the process used over the last 2 s (load shedding reads it)"
    );
    describe_gauge!(
        AWAITING_CONFIG,
        "Detect streams opened that have not sent their config yet"
    );
    describe_gauge!(
        QUEUED_BYTES,
        Unit::Bytes,
        "Feature bytes queued for scoring or being scored"
    );
    describe_gauge!(
        MAX_QUEUED_BYTES,
        Unit::Bytes,
        "Limit of feature bytes queued for scoring"
    );
    describe_counter!(
        QUEUE_BUDGET_WAITS,
        "Times a stream waited for room under the queued-bytes limit"
    );
    describe_counter!(
        MEMORY_TRIMMED,
        Unit::Bytes,
        "Bytes returned to the operating system by heap trimming"
    );
    describe_gauge!(AUDIO_RECEIVED, Unit::Seconds, "Audio received from clients");
    describe_gauge!(
        AUDIO_PROCESSED,
        Unit::Seconds,
        "Audio processed (scored, or flushed at the end of its stream)"
    );
    describe_gauge!(
        AUDIO_UNPROCESSED,
        Unit::Seconds,
        "Audio received but not processed, by how its stream ended"
    );
    describe_counter!(AUTH_RELOADS, "Bearer-token reloads, by result");
    describe_counter!(WINDOWS, "Windows scored");
    describe_counter!(EVENTS, "Keyword events sent");
    describe_histogram!(BATCH_SIZE, "Windows per ONNX Runtime call");
    describe_counter!(CANDIDATES, "First-stage candidates sent to the verifier");
    describe_counter!(VERIFIER_REJECTIONS, "Candidates the verifier rejected");
    describe_histogram!(VERIFIER_BATCH_SIZE, "Candidate clips per verifier call");
    describe_histogram!(
        VERIFIER_INFERENCE,
        Unit::Seconds,
        "Verifier time per batch (mel, embeddings, head)"
    );
    describe_histogram!(
        VERDICT_LATENCY,
        Unit::Seconds,
        "From a candidate's clip being complete to its verdict reaching the stream"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Queue wait of a scoring job before its batch ran"
    );
    describe_histogram!(INFERENCE, Unit::Seconds, "ONNX Runtime time per batch");
    describe_histogram!(
        EVENT_LATENCY,
        Unit::Seconds,
        "From receiving the chunk completing a window to sending its event"
    );
    describe_counter!(
        STREAMS_BEHIND,
        "Times a stream's unscored backlog crossed the behind threshold"
    );
    describe_counter!(REJECTED, "Requests refused before a stream started, by reason");
    describe_gauge!(MODEL_LOADED, "1 per model loaded and serving");
    describe_counter!(MODEL_LOAD_FAILURES, "Model loads that failed");
    describe_gauge!(QUEUE_DEPTH, "Scoring jobs waiting in the batcher queue");
    describe_gauge!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time of the process (user + system)"
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the process");
    describe_gauge!(PROCESS_FDS, "Open file descriptors of the process");
    describe_counter!(
        EVAL_TP,
        "Evaluation: detections matching a label, per threshold of the grid"
    );
    describe_counter!(
        EVAL_FP,
        "Evaluation: detections matching no label, per threshold of the grid"
    );
    describe_counter!(
        EVAL_FN,
        "Evaluation: labels with no matching detection, per threshold of the grid"
    );
    describe_gauge!(
        EVAL_AUDIO,
        Unit::Seconds,
        "Evaluation: audio of labelled / negative streams"
    );
    describe_counter!(FEEDBACK, "Feedback received, by verdict");
    describe_counter!(
        EVAL_TRUNCATED,
        "Evaluated streams whose threshold grid reached its per-stream cap"
    );
    describe_gauge!(
        KEYWORD_THRESHOLD,
        "Operating (recommended) detection threshold per keyword"
    );
    describe_counter!(REQUESTS, "Unary RPCs by method and status code");
}

/// Install the Prometheus recorder and spawn its HTTP listener on the current tokio runtime.
pub fn install_metrics(listen: SocketAddr) -> anyhow::Result<()> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), BATCH_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(names::VERIFIER_BATCH_SIZE.into()), BATCH_BUCKETS)?
        .build()?;
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "metrics exporter stopped");
        }
    });
    describe();
    tokio::spawn(process_metrics());
    Ok(())
}

/// Sample /proc/self every second into the process_* metrics.
async fn process_metrics() {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        if let Some((cpu, rss)) = read_proc_self() {
            metrics::gauge!(names::PROCESS_CPU).set(cpu);
            metrics::gauge!(names::PROCESS_RSS).set(rss);
        }
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!(names::PROCESS_FDS).set(rd.count() as f64);
        }
    }
}

/// A `sysconf` value (the kernel's, not an assumption: USER_HZ is not 100 everywhere, and arm64
/// kernels run with 4, 16 or 64 KiB pages).
#[cfg(unix)]
#[allow(unsafe_code)]
fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf reads a system constant; it takes no pointer and touches no memory of ours.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

/// Clock ticks per second of /proc's CPU times (`_SC_CLK_TCK`) and bytes per page (`_SC_PAGESIZE`).
#[cfg(unix)]
fn proc_units() -> Option<(f64, f64)> {
    static UNITS: std::sync::OnceLock<Option<(f64, f64)>> = std::sync::OnceLock::new();
    *UNITS.get_or_init(|| Some((sysconf(libc::_SC_CLK_TCK)?, sysconf(libc::_SC_PAGESIZE)?)))
}

#[cfg(not(unix))]
fn proc_units() -> Option<(f64, f64)> {
    None
}

/// (cpu seconds, rss bytes) of this process, from /proc/self/stat and /proc/self/statm.
pub fn read_proc_self() -> Option<(f64, f64)> {
    let (ticks_per_s, page_bytes) = proc_units()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(((utime + stime) / ticks_per_s, pages * page_bytes))
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Initialise tracing: text or JSON lines on stderr, `filter` (`EnvFilter` directives) unless
/// `RUST_LOG` is set.
pub fn init_tracing(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    // Colour only on a terminal: files and pipes get plain text that `grep ' ERROR '` finds.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
