//! `kws-loadtest`: concurrent real-time streams against a kws service on this machine; event latency,
//! lost events, rejections, server CPU/RSS; `--find-capacity` for the largest stream count within a
//! p99 latency budget. See loadtest/README.md.
//!
//! Exit status: 0 = every step ran (a capacity run: a capacity was found; a fixed run: the step
//! passed), 1 = a fixed step failed its checks or no capacity was found, 2 = usage/input error,
//! 3 = the server could not be reached or calibrated.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use kws_client::{ConnectOptions, TlsOptions};
use kws_loadtest::report::{capacity_png, render_table};
use kws_loadtest::{CapacitySearch, Live, LoadConfig, LoadError, ServerProbe, StepConfig};

#[derive(Debug, Parser)]
#[command(
    name = "kws-loadtest",
    version,
    about = "Open-loop load test of kws-service (loopback only)"
)]
struct Cli {
    /// Server address (loopback only).
    #[arg(long, env = "KWS_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Bearer token.
    #[arg(long, env = "KWS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    tls: bool,
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    #[arg(long)]
    tls_domain: Option<String>,
    /// Concurrent streams (a fixed run).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Audio per stream, seconds.
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,
    /// Streams start evenly over this many seconds.
    #[arg(long, default_value_t = 5.0)]
    ramp_up_s: f64,
    /// Audio per chunk, ms.
    #[arg(long, default_value_t = 20)]
    chunk_ms: u32,
    /// WAVs of the pool (repeatable); streams take them round robin. They must hold keywords.
    #[arg(long = "wav", default_value = "models/tc-resnet8/golden/stream.wav")]
    wavs: Vec<PathBuf>,
    /// Stream sample rates, round robin; repeat one to weight it (16000,16000,16000,48000 = 3:1).
    #[arg(long, value_delimiter = ',', default_value = "16000")]
    rates: Vec<u32>,
    /// Served model; default: the server's default.
    #[arg(long, default_value = "")]
    model: String,
    /// Streams ask for the first stage's events alone (`StreamConfig.first_stage_only`): a model
    /// with a verifier runs without it, to measure the first stage's cost.
    #[arg(long)]
    first_stage_only: bool,
    /// p99 latency budget, ms (pass/fail of a step).
    #[arg(long, default_value_t = 200.0)]
    budget_ms: f64,
    /// An event matches an expected one whose window end is within this many ms (0 = exact).
    #[arg(long, default_value_t = 0)]
    match_tolerance_ms: u64,
    /// Streams sharing one HTTP/2 connection (1 = a connection per stream).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Server CPU/RSS from its Prometheus endpoint, e.g. http://127.0.0.1:9090/metrics.
    #[arg(long, conflicts_with = "server_pid")]
    metrics_url: Option<String>,
    /// Server CPU/RSS from /proc/PID (a server on this machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Search the largest stream count within the budget (steps up x2, then bisects).
    #[arg(long)]
    find_capacity: bool,
    /// Capacity search: first stream count.
    #[arg(long, default_value_t = 16)]
    start_streams: usize,
    /// Capacity search: never more than this many streams.
    #[arg(long, default_value_t = 2048)]
    max_streams: usize,
    /// Capacity search: stop when the bracket is within this fraction of the passing count.
    #[arg(long, default_value_t = 0.05)]
    precision: f64,
    /// Capacity search: most steps.
    #[arg(long, default_value_t = 16)]
    max_steps: usize,
    /// Capacity search: pause between steps, seconds.
    #[arg(long, default_value_t = 3.0)]
    pause_s: f64,
    /// Write the run report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Capacity runs: write the latency/CPU vs streams plot here (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    no_progress: bool,
}

fn ms(s: f64) -> u64 {
    (s.max(0.0) * 1000.0).round() as u64
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.duration_s <= 0.0 || cli.streams == 0 || cli.chunk_ms == 0 || cli.rates.is_empty() {
        eprintln!("kws-loadtest: --duration-s, --streams, --chunk-ms must be > 0 and --rates non-empty");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kws-loadtest: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let tls = cli.tls || cli.ca_cert.is_some() || cli.client_cert.is_some();
    let conn = ConnectOptions {
        addr: cli.addr.clone(),
        tls: tls.then(|| TlsOptions {
            ca_cert: cli.ca_cert.clone(),
            client_cert: cli.client_cert.clone(),
            client_key: cli.client_key.clone(),
            domain: cli.tls_domain.clone(),
        }),
        token: cli.token.clone(),
        ..ConnectOptions::default()
    };
    let probe = match (&cli.metrics_url, cli.server_pid) {
        (Some(u), _) => ServerProbe::Metrics(u.clone()),
        (None, Some(p)) => ServerProbe::Pid(p),
        (None, None) => ServerProbe::None,
    };
    let cfg = LoadConfig {
        conn,
        wavs: cli.wavs.clone(),
        rates: cli.rates.clone(),
        step: StepConfig {
            streams: cli.streams,
            duration_ms: ms(cli.duration_s),
            ramp_up_ms: ms(cli.ramp_up_s),
            chunk_ms: cli.chunk_ms,
            rates: cli.rates.clone(),
            wavs: cli.wavs.len(),
            model: cli.model.clone(),
            first_stage_only: cli.first_stage_only,
            match_tolerance_ms: cli.match_tolerance_ms,
            streams_per_connection: cli.streams_per_connection,
            budget_ms: cli.budget_ms,
        },
        probe,
        capacity: cli.find_capacity.then(|| CapacitySearch {
            start: cli.start_streams,
            max: cli.max_streams,
            precision: cli.precision,
            max_steps: cli.max_steps,
            pause: Duration::from_secs_f64(cli.pause_s.max(0.0)),
        }),
    };
    let hidden = cli.no_progress;
    let live_hook = move |live: Arc<Live>, n: usize| {
        tokio::spawn(async move {
            let pb = if hidden {
                ProgressBar::hidden()
            } else {
                ProgressBar::new_spinner()
            };
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
                pb.set_style(style);
            }
            loop {
                let p99 = live.p99_ms().map_or_else(|| "-".into(), |v| format!("{v:.1} ms"));
                pb.set_message(format!(
                    "{n} streams: {} active, {} started, {:.0} s audio sent, {} events, p99 {p99}, {} rejected, {} errors",
                    live.active.load(Ordering::Relaxed),
                    live.started.load(Ordering::Relaxed),
                    live.audio_ms_sent.load(Ordering::Relaxed) as f64 / 1000.0,
                    live.events.load(Ordering::Relaxed),
                    live.rejected.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed),
                ));
                pb.tick();
                // The step is over when nothing but this ticker holds the counters.
                if Arc::strong_count(&live) == 1 {
                    pb.finish_and_clear();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut on_step = |s: &kws_loadtest::StepReport| {
        let l = s.latency_ms.as_ref();
        eprintln!(
            "step {} streams: events {}/{} p99 {} ms, rejected {}, errors {}, audio x{:.1} — {}",
            s.streams,
            s.received_events,
            s.expected_events,
            l.map_or_else(|| "-".into(), |l| format!("{:.1}", l.p99)),
            s.rejected,
            s.errors.values().sum::<u64>(),
            s.throughput_audio_s_per_s,
            if s.pass {
                "pass".into()
            } else {
                format!("FAIL: {}", s.fail_reasons.join("; "))
            }
        );
        if let Some(e) = &s.server_probe_error {
            eprintln!("kws-loadtest: server CPU/RSS unavailable: {e}");
        }
    };
    let report = match kws_loadtest::run(cfg, &live_hook, &mut on_step).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kws-loadtest: {e}");
            return ExitCode::from(match e {
                LoadError::Input(_) => 2,
                LoadError::Server(_) => 3,
            });
        }
    };
    print!("{}", render_table(&report));
    if let Some(p) = &cli.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(p, text + "\n") {
            eprintln!("kws-loadtest: cannot write {}: {e}", p.display());
            return ExitCode::from(2);
        }
    }
    if let Some(p) = &cli.plot {
        match capacity_png(p, &report) {
            Ok(d) if !d.text => eprintln!("kws-loadtest: no font found: {} drawn without text", p.display()),
            Ok(_) => {}
            Err(e) => eprintln!("kws-loadtest: {e}"),
        }
    }
    let ok = if report.find_capacity {
        report.capacity.is_some()
    } else {
        report.steps.iter().all(|s| s.pass)
    };
    ExitCode::from(if ok { 0 } else { 1 })
}
