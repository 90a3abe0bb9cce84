//! One load step: N concurrent open-loop real-time streams for a fixed duration.
//!
//! Stream `i` starts at `i * ramp_up / N`, sends its variant's audio in chunks of `chunk_ms`, chunk
//! `k` at `t0 + (k + 1) * chunk duration` (when a microphone would have captured its last sample),
//! never waiting for responses, then half-closes and waits for the summary. Its receiving half runs
//! concurrently and matches events to the expected ones.
//!
//! Latency of an event = arrival time − the scheduled send time of the chunk holding the last sample
//! of the event's window (sample `ceil(end_ms * rate / 1000) − 1`). Measuring from the schedule, not
//! from when the send actually happened, keeps transport backpressure from hiding latency
//! (coordinated omission); how late sends were is reported separately (`max_send_lag_ms`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kws_client::{BearerToken, Client, ClientError, Update};
use tonic::transport::Channel;

use crate::pool::{self, Variant};
use crate::report::{LatencyMs, ServerUsage, StepReport};
use crate::server::{ServerProbe, proc_sample};

/// Settings of one step.
#[derive(Debug, Clone)]
pub struct StepConfig {
    pub streams: usize,
    /// Audio per stream, ms.
    pub duration_ms: u64,
    /// Streams start evenly over this period, ms.
    pub ramp_up_ms: u64,
    pub chunk_ms: u32,
    /// Round-robin rate assignment (repeat a rate to weight it).
    pub rates: Vec<u32>,
    pub wavs: usize,
    pub model: String,
    /// Ask for the first stage's events alone (`StreamConfig.first_stage_only`): no verifier on a
    /// model with one.
    pub first_stage_only: bool,
    /// An event matches an expected one of the same keyword whose window end is within this, ms.
    pub match_tolerance_ms: u64,
    /// Streams per HTTP/2 connection (1 = one connection per stream, like independent clients).
    pub streams_per_connection: usize,
    /// p99 budget for the pass/fail verdict, ms.
    pub budget_ms: f64,
}

/// Counters shared by all streams for the live progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub active: AtomicUsize,
    pub started: AtomicUsize,
    pub events: AtomicU64,
    pub lost: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    pub audio_ms_sent: AtomicU64,
    pub latency: Mutex<Option<Histogram<u64>>>,
}

impl Live {
    /// Current p99 in ms, if any event arrived.
    pub fn p99_ms(&self) -> Option<f64> {
        let h = self.latency.lock().ok()?;
        h.as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

/// Latencies in µs, 1 µs .. 1 h, 3 significant digits.
#[allow(clippy::expect_used)]
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

/// What one stream saw.
#[derive(Debug)]
struct StreamResult {
    rejected: bool,
    error: Option<String>,
    expected: u64,
    matched: u64,
    unexpected: u64,
    /// Event latencies in µs (a few per stream: a histogram each would cost ~190 KB per stream).
    latency_us: Vec<u64>,
    audio_ms_sent: u64,
    audio_ms_processed: u64,
    behind: bool,
    max_send_lag: Duration,
    summary_delay: Option<Duration>,
}

impl StreamResult {
    fn new(expected: u64) -> Self {
        Self {
            rejected: false,
            error: None,
            expected,
            matched: 0,
            unexpected: 0,
            latency_us: Vec::new(),
            audio_ms_sent: 0,
            audio_ms_processed: 0,
            behind: false,
            max_send_lag: Duration::ZERO,
            summary_delay: None,
        }
    }
}

fn code_name(e: &ClientError) -> String {
    match e {
        ClientError::Status(s) => format!("{:?}", s.code()),
        ClientError::Connect { .. } => "ConnectFailed".into(),
        ClientError::StreamClosed => "StreamClosed".into(),
        ClientError::Protocol(_) => "Protocol".into(),
        other => format!("{other}"),
    }
}

async fn run_stream(
    mut client: Client,
    variant: Arc<Variant>,
    cfg: Arc<StepConfig>,
    start_at: Instant,
    live: Arc<Live>,
) -> StreamResult {
    let mut r = StreamResult::new(variant.expected.len() as u64);
    tokio::time::sleep_until(start_at.into()).await;
    let format = variant.format;
    let mut config = format.stream_config();
    config.model = cfg.model.clone();
    config.first_stage_only = cfg.first_stage_only;
    config.progress_interval_ms = 1000;
    config.client_stream_id = "kws-loadtest".into();
    let stream = match client.open(config).await {
        Ok(s) => s,
        Err(e) => {
            if matches!(&e, ClientError::Status(s) if s.code() == tonic::Code::ResourceExhausted) {
                r.rejected = true;
                live.rejected.fetch_add(1, Ordering::Relaxed);
            } else {
                r.error = Some(code_name(&e));
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
            return r;
        }
    };
    live.started.fetch_add(1, Ordering::Relaxed);
    live.active.fetch_add(1, Ordering::Relaxed);
    let rate = u64::from(format.sample_rate_hz);
    let chunk_frames = stream.sink.chunk_frames(&kws_client::SendOptions {
        format,
        chunk_ms: cfg.chunk_ms,
        pacing: kws_client::Pacing::RealTime,
    }) as u64;
    let frame_bytes = format.frame_bytes();
    let t0 = Instant::now();
    // Scheduled send time of chunk k.
    let due = move |k: u64| t0 + Duration::from_micros((k + 1) * chunk_frames * 1_000_000 / rate);
    let sink = stream.sink;
    let pcm = variant.pcm.clone();
    let live_tx = live.clone();
    let sender = tokio::spawn(async move {
        let mut max_lag = Duration::ZERO;
        let mut sent_frames = 0u64;
        for (k, piece) in pcm.chunks(chunk_frames as usize * frame_bytes).enumerate() {
            let at = due(k as u64);
            let now = Instant::now();
            if at > now {
                tokio::time::sleep_until(at.into()).await;
            } else {
                max_lag = max_lag.max(now - at);
            }
            if sink.send_audio(piece.to_vec()).await.is_err() {
                break; // the receiving half has the status
            }
            let frames = (piece.len() / frame_bytes) as u64;
            sent_frames += frames;
            live_tx
                .audio_ms_sent
                .fetch_add(frames * 1000 / rate, Ordering::Relaxed);
        }
        (sent_frames, max_lag, Instant::now())
    });
    let mut responses = stream.responses;
    let mut matched = vec![false; variant.expected.len()];
    loop {
        match responses.next().await {
            Ok(Some(Update::Event(e))) => {
                let now = Instant::now();
                let hit = variant.expected.iter().enumerate().position(|(i, x)| {
                    !matched[i]
                        && x.keyword == e.keyword
                        && x.end_ms.abs_diff(e.end_ms) <= cfg.match_tolerance_ms
                });
                match hit {
                    Some(i) => {
                        matched[i] = true;
                        r.matched += 1;
                        let last_sample = (variant.expected[i].end_ms * rate)
                            .div_ceil(1000)
                            .saturating_sub(1);
                        let latency = now.saturating_duration_since(due(last_sample / chunk_frames));
                        let us = (latency.as_micros() as u64).max(1);
                        r.latency_us.push(us);
                        if let Ok(mut h) = live.latency.lock() {
                            let _ = h.get_or_insert_with(new_histogram).record(us);
                        }
                        live.events.fetch_add(1, Ordering::Relaxed);
                    }
                    None => r.unexpected += 1,
                }
            }
            Ok(Some(Update::Progress(p))) => r.behind |= p.behind,
            Ok(Some(Update::Summary(s))) => {
                r.audio_ms_processed = s.audio_ms_processed;
                r.summary_delay = Some(Instant::now().duration_since(t0));
            }
            Ok(Some(Update::Trace(_))) => {}
            Ok(None) => break,
            Err(e) => {
                r.error = Some(code_name(&e));
                live.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    if let Ok((frames, lag, finished)) = sender.await {
        r.audio_ms_sent = frames * 1000 / rate;
        r.max_send_lag = lag;
        // Delay of the summary after the half-close: the server's backlog at the end.
        r.summary_delay = r
            .summary_delay
            .map(|at| (t0 + at).saturating_duration_since(finished));
    }
    let lost = r.expected - r.matched;
    live.lost.fetch_add(lost, Ordering::Relaxed);
    live.active.fetch_sub(1, Ordering::Relaxed);
    r
}

/// Connect `n` channels (lazily: a refused connection shows up as stream errors, not here).
pub fn channels(endpoint: &tonic::transport::Endpoint, n: usize) -> Vec<Channel> {
    (0..n.max(1)).map(|_| endpoint.connect_lazy()).collect()
}

/// Run one step and aggregate it. `probe` reads the server's CPU/RSS before, during and after.
pub async fn run_step(
    endpoint: &tonic::transport::Endpoint,
    token: &BearerToken,
    variants: &[Arc<Variant>],
    cfg: StepConfig,
    probe: &ServerProbe,
    live: Arc<Live>,
) -> StepReport {
    let cfg = Arc::new(cfg);
    let n = cfg.streams;
    let per_conn = cfg.streams_per_connection.max(1);
    let chans = channels(endpoint, n.div_ceil(per_conn));
    let own_before = proc_sample("/proc/self").ok();
    let (server_before, probe_error) = match probe.sample().await {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e)),
    };
    // RSS peak: sample every second while the step runs.
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let (probe, stop) = (probe.clone(), stop.clone());
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            loop {
                if let Ok(Some(s)) = probe.sample().await {
                    peak = peak.max(s.rss_bytes);
                }
                tokio::select! {
                    _ = stop.notified() => return peak,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    };
    let started = Instant::now();
    let bound = Duration::from_millis(cfg.ramp_up_ms + cfg.duration_ms) + Duration::from_secs(60);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let Some(v) = pool::variant_for(variants, cfg.wavs, &cfg.rates, i) else {
            continue;
        };
        let client = Client::from_channel(
            chans[i / per_conn].clone(),
            token.clone(),
            Duration::from_secs(10),
        );
        let offset = Duration::from_millis(cfg.ramp_up_ms * i as u64 / n.max(1) as u64);
        let (v, cfg2, live2) = (v.clone(), cfg.clone(), live.clone());
        let expected = v.expected.len() as u64;
        tasks.push((
            expected,
            tokio::spawn(async move {
                tokio::time::timeout(bound, run_stream(client, v, cfg2, started + offset, live2)).await
            }),
        ));
    }
    let mut results = Vec::with_capacity(n);
    for (expected, t) in tasks {
        match t.await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(_)) | Err(_) => {
                let mut r = StreamResult::new(expected);
                r.error = Some("Timeout".into());
                live.errors.fetch_add(1, Ordering::Relaxed);
                results.push(r);
            }
        }
    }
    let wall = started.elapsed();
    stop.notify_one();
    let rss_peak = sampler.await.unwrap_or(0.0);
    let server_after = probe.sample().await.ok().flatten();
    let own_after = proc_sample("/proc/self").ok();
    aggregate(
        &cfg,
        results,
        wall,
        server_before.zip(server_after),
        rss_peak,
        probe_error,
        own_before.zip(own_after),
    )
}

fn aggregate(
    cfg: &StepConfig,
    results: Vec<StreamResult>,
    wall: Duration,
    server: Option<(crate::server::Sample, crate::server::Sample)>,
    rss_peak: f64,
    probe_error: Option<String>,
    own: Option<(crate::server::Sample, crate::server::Sample)>,
) -> StepReport {
    let mut h = new_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut expected, mut matched, mut unexpected, mut rejected) = (0, 0, 0, 0);
    let (mut sent_ms, mut processed_ms, mut behind) = (0u64, 0u64, 0usize);
    let mut max_lag = Duration::ZERO;
    let mut max_summary = Duration::ZERO;
    let mut incomplete = 0usize;
    for r in &results {
        if r.rejected {
            rejected += 1;
            continue;
        }
        if let Some(e) = &r.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
        expected += r.expected;
        matched += r.matched;
        unexpected += r.unexpected;
        for &us in &r.latency_us {
            let _ = h.record(us);
        }
        sent_ms += r.audio_ms_sent;
        processed_ms += r.audio_ms_processed;
        behind += usize::from(r.behind);
        incomplete += usize::from(r.audio_ms_processed < r.audio_ms_sent);
        max_lag = max_lag.max(r.max_send_lag);
        if let Some(d) = r.summary_delay {
            max_summary = max_summary.max(d);
        }
    }
    let lost = expected - matched;
    let latency = (!h.is_empty()).then(|| LatencyMs {
        count: h.len(),
        p50: h.value_at_quantile(0.50) as f64 / 1000.0,
        p90: h.value_at_quantile(0.90) as f64 / 1000.0,
        p99: h.value_at_quantile(0.99) as f64 / 1000.0,
        max: h.max() as f64 / 1000.0,
        mean: h.mean() / 1000.0,
    });
    let audio_s = processed_ms as f64 / 1000.0;
    let server_usage = server.map(|(a, b)| {
        let cpu = b.cpu_seconds - a.cpu_seconds;
        ServerUsage {
            cpu_seconds: cpu,
            cpu_seconds_per_audio_second: if audio_s > 0.0 { cpu / audio_s } else { 0.0 },
            cpu_cores_avg: cpu / wall.as_secs_f64().max(1e-9),
            rss_bytes_end: b.rss_bytes,
            rss_bytes_peak: rss_peak.max(b.rss_bytes),
        }
    });
    let kept_real_time = behind == 0 && incomplete == 0;
    let mut fail = Vec::new();
    if rejected > 0 {
        fail.push(format!("{rejected} streams rejected"));
    }
    if !errors.is_empty() {
        fail.push(format!("stream errors {errors:?}"));
    }
    if lost > 0 {
        fail.push(format!("{lost} events lost"));
    }
    if let Some(l) = &latency
        && l.p99 > cfg.budget_ms
    {
        fail.push(format!(
            "p99 {:.1} ms over the {} ms budget",
            l.p99, cfg.budget_ms
        ));
    }
    if !kept_real_time {
        fail.push(format!(
            "server fell behind ({behind} streams flagged behind, {incomplete} incomplete)"
        ));
    }
    if expected == 0 && results.iter().any(|r| !r.rejected) {
        fail.push("no events expected: the WAV pool has no keywords the model detects".into());
    }
    StepReport {
        streams: cfg.streams,
        duration_s: cfg.duration_ms as f64 / 1000.0,
        ramp_up_s: cfg.ramp_up_ms as f64 / 1000.0,
        chunk_ms: cfg.chunk_ms,
        rejected,
        errors,
        expected_events: expected,
        received_events: matched,
        lost_events: lost,
        unexpected_events: unexpected,
        latency_ms: latency,
        audio_s_sent: sent_ms as f64 / 1000.0,
        audio_s_processed: audio_s,
        wall_s: wall.as_secs_f64(),
        throughput_audio_s_per_s: audio_s / wall.as_secs_f64().max(1e-9),
        streams_behind: behind,
        kept_real_time,
        max_send_lag_ms: max_lag.as_secs_f64() * 1000.0,
        max_summary_delay_ms: max_summary.as_secs_f64() * 1000.0,
        server: server_usage,
        server_probe_error: probe_error,
        loadtest_cpu_seconds: own.map(|(a, b)| b.cpu_seconds - a.cpu_seconds),
        pass: fail.is_empty(),
        fail_reasons: fail,
    }
}
