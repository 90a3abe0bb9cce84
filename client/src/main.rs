//! `kws-client`: stream audio to a kws service and print keyword events; list models; check health;
//! evaluate a model over a labelled corpus.
//!
//! Exit status:
//! - `detect`: 0 = at least one keyword detected, 1 = none detected, 2 = usage or input error (bad
//!   arguments, unreadable/unsupported audio, or the server refused the input with
//!   INVALID_ARGUMENT), 3 = server or RPC error (server down, TLS failure, UNAVAILABLE,
//!   RESOURCE_EXHAUSTED, UNAUTHENTICATED, ...).
//! - `health`: 0 = SERVING, 1 = NOT_SERVING or unknown, 3 = RPC error.
//! - `models`, `eval`: 0 = done, 2 = usage or input error, 3 = server, RPC or runtime error.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kws_client::eval::{self, DecoderOverrides, EvalError};
use kws_client::{
    Audio, AudioFormat, Client, ClientError, ConnectOptions, Encoding, Pacing, SendOptions, ServingStatus,
    TlsOptions, Update,
};
use serde_json::json;

const DETECTED: u8 = 0;
const NOTHING: u8 = 1;
const USAGE: u8 = 2;
const SERVER: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "kws-client",
    version,
    about = "Client of the kws keyword-spotting service"
)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConnArgs {
    /// Server address: host:port, http://host:port or https://host:port.
    #[arg(long, env = "KWS_ADDR", default_value = "127.0.0.1:50051", global = true)]
    addr: String,
    /// Bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, env = "KWS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Use TLS (implied by --ca-cert, --client-cert or an https:// address).
    #[arg(long, global = true)]
    tls: bool,
    /// PEM CA bundle to verify the server with (default: the system's CA store).
    #[arg(long, env = "KWS_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(long, env = "KWS_CLIENT_CERT", global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "KWS_CLIENT_KEY", global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Server name to verify the certificate against (default: the address's host).
    #[arg(long, global = true)]
    tls_domain: Option<String>,
    /// Connection timeout in ms.
    #[arg(long, default_value_t = 5000, global = true)]
    connect_timeout_ms: u64,
}

impl ConnArgs {
    fn options(&self) -> ConnectOptions {
        let tls =
            self.tls || self.ca_cert.is_some() || self.client_cert.is_some() || self.tls_domain.is_some();
        ConnectOptions {
            addr: self.addr.clone(),
            tls: tls.then(|| TlsOptions {
                ca_cert: self.ca_cert.clone(),
                client_cert: self.client_cert.clone(),
                client_key: self.client_key.clone(),
                domain: self.tls_domain.clone(),
            }),
            token: self.token.clone(),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            ..ConnectOptions::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream a WAV file (any rate/channels) or raw PCM from stdin (`-`) and print keyword events.
    Detect(DetectArgs),
    /// Describe the served models (all, or one by name).
    Models {
        /// A served model name (`name:variant`); default: list all.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// gRPC health check.
    Health {
        /// Service to check: "" = the server, or `kws.v1.KeywordSpotting`.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Recall / precision / FA per hour over a labelled manifest or a directory of WAVs.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
struct DetectArgs {
    /// WAV file, or `-` for raw PCM on stdin (then --rate is required).
    input: String,
    /// Raw input: sample rate in Hz.
    #[arg(long)]
    rate: Option<u32>,
    /// Raw input: interleaved channels.
    #[arg(long, default_value_t = 1)]
    channels: u16,
    /// Raw input: sample encoding.
    #[arg(long, value_enum, default_value = "s16le")]
    encoding: Encoding,
    /// Send at real-time pace (as a live microphone would) instead of as fast as allowed.
    #[arg(long)]
    realtime: bool,
    /// Audio per chunk in ms.
    #[arg(long, default_value_t = 100)]
    chunk_ms: u32,
    /// Print JSON lines (ready, event, progress with --show-progress, summary) instead of text.
    #[arg(long)]
    json: bool,
    /// Served model (`name:variant`); default: the server's default.
    #[arg(long, default_value = "")]
    model: String,
    /// Keywords to report (comma-separated); default: all.
    #[arg(long, value_delimiter = ',')]
    keywords: Vec<String>,
    /// Threshold override, KEYWORD=VALUE (repeatable). With a model's cascade: its verdict
    /// threshold for that keyword.
    #[arg(long = "threshold", value_parser = parse_threshold)]
    thresholds: Vec<(String, f32)>,
    /// For a model with a verifier: the first stage's events only (no cascade).
    #[arg(long)]
    first_stage_only: bool,
    /// Identifier for the server's logs.
    #[arg(long, default_value = "")]
    client_stream_id: String,
    /// Also print the server's progress messages.
    #[arg(long)]
    show_progress: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_threshold(s: &str) -> Result<(String, f32), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEYWORD=VALUE")?;
    let v: f32 = v.parse().map_err(|e| format!("{v:?}: {e}"))?;
    Ok((k.to_string(), v))
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// JSONL manifest, or a directory of WAVs (negative unless a NAME.json sidecar has labels).
    input: PathBuf,
    /// Run the kws-models pipeline in this process instead of using a server.
    #[arg(long)]
    local: bool,
    /// --local: model directory (with manifest.json).
    #[arg(long, default_value = "models/tc-resnet8")]
    model_dir: PathBuf,
    /// --local: model variant (int8 or fp32).
    #[arg(long, default_value = "int8")]
    variant: String,
    /// --local: ONNX Runtime shared library (default: $KWS_ORT_LIB, $ORT_DYLIB_PATH, beside the binary).
    #[arg(long, env = "KWS_ORT_LIB")]
    ort_lib: Option<PathBuf>,
    /// Server mode: served model (`name:variant`); default: the server's default.
    #[arg(long, default_value = "")]
    model: String,
    /// Threshold grid: START:STOP:STEP or a comma-separated list.
    #[arg(long, default_value = "0.05:0.95:0.05")]
    thresholds: String,
    /// A label's span is widened by this much on both sides when matching events.
    #[arg(long, default_value_t = 500)]
    tolerance_ms: u64,
    /// Decoder overrides (default: the model's); 0 for smoothing/refractory = none.
    #[arg(long)]
    hop_ms: Option<u32>,
    #[arg(long)]
    smoothing_ms: Option<u32>,
    #[arg(long)]
    refractory_ms: Option<u32>,
    /// For a model with a verifier: the first stage's events only (no cascade).
    #[arg(long)]
    first_stage_only: bool,
    /// Server mode: files streamed at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Write the report as JSON here (`-` = stdout instead of the tables).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the DET curve (miss rate vs FA/h, log axes) here as PNG.
    #[arg(long)]
    det: Option<PathBuf>,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kws-client: cannot start the runtime: {e}");
            return ExitCode::from(SERVER);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Detect(a) => detect(&cli.conn, a).await,
            Command::Models { name, json } => models(&cli.conn, name, json).await,
            Command::Health { service } => health(&cli.conn, &service).await,
            Command::Eval(a) => run_eval(&cli.conn, a).await,
        }
    });
    // A read of stdin blocks a runtime thread until input arrives: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}

/// Print an error and return its exit status.
/// When to tell the user that the server is behind. Paced in real time, falling behind means the
/// server is overloaded: say so each time it happens (not at every progress message). Unpaced, a file
/// is sent faster than real time and is always "behind": say it once, as information.
#[derive(Debug)]
struct BehindNotice {
    realtime: bool,
    behind: bool,
    told: bool,
}

impl BehindNotice {
    fn new(realtime: bool) -> Self {
        Self {
            realtime,
            behind: false,
            told: false,
        }
    }

    /// The note to print for a progress message with this `behind` flag, if any.
    fn update(&mut self, behind: bool) -> Option<&'static str> {
        let started = behind && !self.behind;
        self.behind = behind;
        match (self.realtime, started, self.told) {
            (true, true, _) => Some("the server is behind (overloaded: events come late, none is lost)"),
            (false, true, false) => {
                self.told = true;
                Some(
                    "the server is behind the audio sent (expected when a file is sent faster than real time; --realtime paces it)",
                )
            }
            _ => None,
        }
    }
}

fn fail(e: &ClientError) -> u8 {
    eprintln!("kws-client: {e}");
    if e.is_input_error() { USAGE } else { SERVER }
}

fn bar(total: u64, unit: &'static str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.enable_steady_tick(Duration::from_millis(200));
    let template = format!("{{spinner}} [{{bar:32}}] {{pos}}/{{len}} {unit} {{msg}} ({{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

async fn detect(conn: &ConnArgs, a: DetectArgs) -> u8 {
    // Input first: a bad file is a usage error whatever the server's state.
    let (format, audio) = if a.input == "-" {
        let Some(rate) = a.rate else {
            eprintln!(
                "kws-client: reading raw PCM from stdin needs --rate (and --channels, --encoding if not 1, s16le)"
            );
            return USAGE;
        };
        let f = AudioFormat {
            encoding: a.encoding,
            sample_rate_hz: rate,
            channels: a.channels,
        };
        if let Err(e) = kws_models::pcm::check_layout(rate, a.channels) {
            eprintln!("kws-client: --rate / --channels: {e}");
            return USAGE;
        }
        (f, None)
    } else {
        match Audio::from_wav(a.input.as_ref()) {
            Ok(audio) => (audio.format, Some(audio)),
            Err(e) => return fail(&e.into()),
        }
    };
    let mut client = match Client::connect(&conn.options()).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut config = format.stream_config();
    config.model = a.model.clone();
    config.keywords = a.keywords.clone();
    config.thresholds = a.thresholds.iter().cloned().collect();
    config.client_stream_id = a.client_stream_id.clone();
    config.first_stage_only = a.first_stage_only;
    let stream = match client.open(config).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let ready = stream.ready;
    let model = ready.model.clone().unwrap_or_default();
    let out = std::io::stdout();
    if a.json {
        let line = json!({"type": "ready", "stream_id": ready.stream_id, "model": model.name,
            "version": model.version, "variant": model.variant,
            "keywords": ready.config.as_ref().map(|c| c.keywords.clone()).unwrap_or_default()});
        let _ = writeln!(out.lock(), "{line}");
    } else {
        eprintln!(
            "stream {} on {} ({} {}), {}",
            ready.stream_id,
            model.name,
            model.variant,
            model.version,
            if a.realtime {
                "real-time pace"
            } else {
                "as fast as allowed"
            }
        );
    }
    let pacing = if a.realtime {
        Pacing::RealTime
    } else {
        Pacing::Unpaced
    };
    let opts = SendOptions {
        format,
        chunk_ms: a.chunk_ms,
        pacing,
    };
    let total_ms = audio.as_ref().map_or(0, Audio::duration_ms);
    // A bar for files long enough to wait for (and only on a terminal: indicatif hides it otherwise).
    let pb = bar(
        total_ms / 1000,
        "s",
        a.no_progress || audio.is_none() || total_ms < 10_000 && !a.realtime,
    );
    let pb_send = pb.clone();
    let sink = stream.sink;
    let rate = u64::from(format.sample_rate_hz);
    let sender = tokio::spawn(async move {
        let mut progress = move |frames: u64| pb_send.set_position(frames / rate);
        let send = async {
            match audio {
                Some(audio) => sink.send_pcm(&audio.data, &opts, &mut progress).await,
                None => sink.send_reader(tokio::io::stdin(), &opts, &mut progress).await,
            }
        };
        // Ctrl-C stops sending: the stream half-closes, the server scores what it has and sends
        // the summary, and the exit status still tells whether a keyword was detected.
        tokio::select! {
            r = send => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("kws-client: interrupted: finishing the stream");
                Ok(kws_client::SendStats::default())
            }
        }
    });
    let mut responses = stream.responses;
    let mut behind_notice = BehindNotice::new(a.realtime);
    let started = Instant::now();
    let mut events = 0u64;
    let mut status: Option<ClientError> = None;
    loop {
        match responses.next().await {
            Ok(Some(Update::Event(e))) => {
                events += 1;
                let line = if a.json {
                    json!({"type": "event", "event_id": e.event_id, "keyword": e.keyword, "score": e.score,
                        "verifier_score": e.verifier_score, "start_ms": e.start_ms, "end_ms": e.end_ms,
                        "received_ms": started.elapsed().as_millis() as u64})
                    .to_string()
                } else {
                    format!(
                        "{:>8.2} s  {:<8} score {:.3}{}  window {:.2}-{:.2} s  {}",
                        e.end_ms as f64 / 1000.0,
                        e.keyword,
                        e.score,
                        e.verifier_score
                            .map_or(String::new(), |v| format!("  verifier {v:.3}")),
                        e.start_ms as f64 / 1000.0,
                        e.end_ms as f64 / 1000.0,
                        e.event_id
                    )
                };
                pb.suspend(|| {
                    let mut o = out.lock();
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                });
            }
            Ok(Some(Update::Progress(p))) => {
                if let Some(note) = behind_notice.update(p.behind) {
                    pb.suspend(|| {
                        eprintln!(
                            "kws-client: {note}: {} ms received, {} ms processed",
                            p.audio_ms_received, p.audio_ms_processed
                        );
                    });
                }
                if a.show_progress {
                    let line = if a.json {
                        json!({"type": "progress", "audio_ms_received": p.audio_ms_received,
                            "audio_ms_processed": p.audio_ms_processed, "behind": p.behind})
                        .to_string()
                    } else {
                        format!(
                            "progress: {} ms received, {} ms processed{}",
                            p.audio_ms_received,
                            p.audio_ms_processed,
                            if p.behind { " (behind)" } else { "" }
                        )
                    };
                    pb.suspend(|| {
                        let _ = writeln!(out.lock(), "{line}");
                    });
                }
            }
            Ok(Some(Update::Trace(_))) => {}
            Ok(Some(Update::Summary(s))) => {
                pb.finish_and_clear();
                if a.json {
                    let line = json!({"type": "summary", "audio_ms_received": s.audio_ms_received,
                        "audio_ms_processed": s.audio_ms_processed, "events": s.events,
                        "windows_scored": s.windows_scored});
                    let _ = writeln!(out.lock(), "{line}");
                } else {
                    eprintln!(
                        "{} event(s) in {:.2} s of audio ({:.2} s processed, {} windows)",
                        s.events,
                        s.audio_ms_received as f64 / 1000.0,
                        s.audio_ms_processed as f64 / 1000.0,
                        s.windows_scored
                    );
                }
            }
            Ok(None) => break,
            Err(e) => {
                status = Some(e);
                break;
            }
        }
    }
    pb.finish_and_clear();
    let sent = sender.await;
    if let Some(e) = status {
        return fail(&e);
    }
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return fail(&e),
        Err(e) => {
            eprintln!("kws-client: sender failed: {e}");
            return SERVER;
        }
    }
    if events > 0 { DETECTED } else { NOTHING }
}

async fn models(conn: &ConnArgs, name: Option<String>, json_out: bool) -> u8 {
    let mut client = match Client::connect(&conn.options()).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let (models, default) = match name {
        Some(n) => match client.model_info(&n).await {
            Ok(m) => (vec![m], String::new()),
            Err(e) => return fail(&e),
        },
        None => match client.list_models().await {
            Ok(l) => (l.models, l.default_model),
            Err(e) => return fail(&e),
        },
    };
    if json_out {
        let list: Vec<_> = models
            .iter()
            .map(|m| {
                let mut thresholds: Vec<_> = m.thresholds.iter().collect();
                thresholds.sort_by(|a, b| a.0.cmp(b.0));
                json!({"name": m.name, "version": m.version, "variant": m.variant, "arch": m.arch,
                    "classes": m.classes, "keywords": m.keywords,
                    "thresholds": thresholds.into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "window_ms": m.window_ms, "default_hop_ms": m.default_hop_ms,
                    "default_smoothing_ms": m.default_smoothing_ms, "default_refractory_ms": m.default_refractory_ms,
                    "params": m.params, "flops": m.flops, "sha256": m.sha256, "is_default": m.is_default,
                    "streaming": m.streaming, "state_bytes_per_stream": m.state_bytes_per_stream,
                    "streaming_hop_ms": m.streaming_hop_ms,
                    "runtime": m.runtime.as_ref().map(|r| json!({"cpu_arch": r.cpu_arch,
                        "cpu_features": r.cpu_features, "int8_kernels": r.int8_kernels})),
                    "verifier": m.verifier.as_ref().map(|v| json!({"head_path": v.head_path,
                        "head_sha256": v.head_sha256, "mel_path": v.mel_path, "mel_sha256": v.mel_sha256,
                        "embedding_path": v.embedding_path, "embedding_sha256": v.embedding_sha256,
                        "candidate_rule": v.candidate_rule,
                        "first_stage_threshold": v.first_stage_threshold,
                        "thresholds": v.thresholds.iter().map(|(k, t)| (k.clone(), json!(t)))
                            .collect::<serde_json::Map<_, _>>(),
                        "embeddings_per_view": v.embeddings_per_view, "centre_offset_ms": v.centre_offset_ms,
                        "view_shifts": v.view_shifts,
                        "reject_gap_ms": v.reject_gap_ms, "licence": v.licence}))})
            })
            .collect();
        println!("{}", json!({"default_model": default, "models": list}));
        return 0;
    }
    for m in &models {
        println!(
            "{}{}  version {}  arch {}  {} params  {:.1} MFLOP/window",
            m.name,
            if m.is_default { " (default)" } else { "" },
            m.version,
            m.arch,
            m.params,
            m.flops as f64 / 1e6
        );
        let thresholds: Vec<String> = m
            .keywords
            .iter()
            .map(|k| {
                format!(
                    "{k}={}",
                    m.thresholds
                        .get(k)
                        .map_or("-".into(), |t| eval::fmt_threshold(f64::from(*t)))
                )
            })
            .collect();
        println!("  keywords: {}", thresholds.join(" "));
        println!(
            "  window {} ms, hop {} ms, smoothing {} ms, refractory {} ms",
            m.window_ms, m.default_hop_ms, m.default_smoothing_ms, m.default_refractory_ms
        );
        if m.streaming {
            println!(
                "  streaming: scored hop by hop ({} ms) from {} bytes of model state per stream",
                m.streaming_hop_ms, m.state_bytes_per_stream
            );
        }
        if let Some(f) = &m.frontend {
            println!(
                "  frontend: {} Hz, {} MFCC from {} mel bands ({}-{} Hz)",
                f.sample_rate_hz, f.num_mfcc, f.num_mel, f.mel_low_hz, f.mel_high_hz
            );
        }
        if let Some(r) = &m.runtime {
            println!(
                "  server CPU: {} ({}), int8 kernels {}",
                r.cpu_arch, r.cpu_features, r.int8_kernels
            );
        }
        if let Some(v) = &m.verifier {
            let verdicts: Vec<String> = m
                .keywords
                .iter()
                .map(|k| {
                    format!(
                        "{k}={}",
                        v.thresholds
                            .get(k)
                            .map_or("-".into(), |t| eval::fmt_threshold(f64::from(*t)))
                    )
                })
                .collect();
            println!(
                "  cascade: candidates when {} >= {}, verifier {} ({} embeddings per view{}), verdicts: {}",
                if v.candidate_rule.is_empty() {
                    "best_keyword"
                } else {
                    &v.candidate_rule
                },
                eval::fmt_threshold(f64::from(v.first_stage_threshold)),
                v.head_path,
                v.embeddings_per_view,
                if v.view_shifts > 0 {
                    format!(", the least of {} views 80 ms apart", 2 * v.view_shifts + 1)
                } else {
                    String::new()
                },
                verdicts.join(" ")
            );
            println!("  verifier licence: {}", v.licence);
        }
    }
    0
}

async fn health(conn: &ConnArgs, service: &str) -> u8 {
    let mut client = match Client::connect(&conn.options()).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match client.health(service).await {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            0
        }
        Ok(s) => {
            println!(
                "{}",
                if s == ServingStatus::NotServing {
                    "NOT_SERVING"
                } else {
                    "UNKNOWN"
                }
            );
            1
        }
        Err(e) => fail(&e),
    }
}

fn eval_fail(e: &EvalError) -> u8 {
    eprintln!("kws-client eval: {e}");
    if e.is_server_error() { SERVER } else { USAGE }
}

async fn run_eval(conn: &ConnArgs, a: EvalArgs) -> u8 {
    let grid = match eval::parse_grid(&a.thresholds) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kws-client eval: --thresholds: {e}");
            return USAGE;
        }
    };
    let items = match eval::load_input(&a.input) {
        Ok(i) => i,
        Err(e) => return eval_fail(&e),
    };
    let overrides = DecoderOverrides {
        hop_ms: a.hop_ms,
        smoothing_ms: a.smoothing_ms,
        refractory_ms: a.refractory_ms,
        first_stage_only: a.first_stage_only,
    };
    let pb = bar(items.len() as u64, "files", a.no_progress);
    let scored = if a.local {
        local_scores(&a, &items, overrides, &pb).await
    } else {
        let client = match Client::connect(&conn.options()).await {
            Ok(c) => c,
            Err(e) => return fail(&e),
        };
        let pbc = pb.clone();
        eval::score_with_server(&client, &a.model, &items, overrides, a.jobs, &move |n| {
            pbc.set_position(n as u64)
        })
        .await
    };
    pb.finish_and_clear();
    let (model, scores) = match scored {
        Ok(s) => s,
        Err(e) => return eval_fail(&e),
    };
    let report = match eval::evaluate(model, &items, &scores, &grid, a.tolerance_ms) {
        Ok(r) => r,
        Err(e) => return eval_fail(&e),
    };
    let json_text = match serde_json::to_string_pretty(&report) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kws-client eval: cannot encode the report: {e}");
            return SERVER;
        }
    };
    match &a.json {
        Some(p) if p.as_os_str() == "-" => println!("{json_text}"),
        Some(p) => {
            if let Err(e) = std::fs::write(p, format!("{json_text}\n")) {
                eprintln!("kws-client eval: cannot write {}: {e}", p.display());
                return USAGE;
            }
            print!("{}", eval::render_text(&report));
        }
        None => print!("{}", eval::render_text(&report)),
    }
    if let Some(p) = &a.det {
        match kws_client::plot::det_png(p, &report) {
            Ok(d) if !d.text => eprintln!(
                "kws-client eval: no font found (set KWS_PLOT_FONT or install fonts-dejavu-core): {} drawn without text",
                p.display()
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("kws-client eval: {e}");
                return USAGE;
            }
        }
    }
    0
}

#[cfg(feature = "local")]
async fn local_scores(
    a: &EvalArgs,
    items: &[eval::EvalItem],
    overrides: DecoderOverrides,
    pb: &ProgressBar,
) -> Result<(eval::ModelId, Vec<eval::FileScores>), EvalError> {
    let (dir, variant, lib) = (a.model_dir.clone(), a.variant.clone(), a.ort_lib.clone());
    let items: Arc<Vec<eval::EvalItem>> = Arc::new(items.to_vec());
    let pb = pb.clone();
    tokio::task::spawn_blocking(move || {
        let mut model = eval::local::LocalModel::load(&dir, &variant, lib.as_deref())?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(model.score(item, overrides)?);
            pb.set_position(i as u64 + 1);
        }
        Ok((model.id(), out))
    })
    .await
    .map_err(|e| EvalError::Local(e.to_string()))?
}

#[cfg(not(feature = "local"))]
async fn local_scores(
    _: &EvalArgs,
    _: &[eval::EvalItem],
    _: DecoderOverrides,
    _: &ProgressBar,
) -> Result<(eval::ModelId, Vec<eval::FileScores>), EvalError> {
    let _ = Arc::new(());
    Err(EvalError::Input(
        "--local needs kws-client built with the `local` feature".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::BehindNotice;

    #[test]
    fn behind_is_told_once_unpaced_and_per_episode_in_real_time() {
        let mut unpaced = BehindNotice::new(false);
        let told: Vec<bool> = [false, true, true, true, false, true, true]
            .iter()
            .map(|&b| unpaced.update(b).is_some())
            .collect();
        assert_eq!(told, [false, true, false, false, false, false, false]);
        let mut paced = BehindNotice::new(true);
        let told: Vec<bool> = [true, true, true, false, false, true, true]
            .iter()
            .map(|&b| paced.update(b).is_some())
            .collect();
        assert_eq!(told, [true, false, false, false, false, true, false]);
    }
}
