//! Configuration: defaults < TOML file (`--config` / `KWS_CONFIG`) < `KWS_*` environment < CLI flags.
//!
//! Everything is validated before the server starts; an invalid configuration makes the binary exit
//! with status 64 (EX_USAGE) and a message naming the setting. The reference of every setting, with
//! its default, is the README's configuration table (keep the two in sync).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Log line format (`log.format`); defined with the logging it configures.
pub use crate::telemetry::LogFormat;

/// The whole service configuration, as loaded from TOML (every field has a default).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub batcher: BatcherConfig,
    pub verifier: VerifierConfig,
    pub models: ModelsConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub evaluation: EvaluationConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: SocketAddr,
    /// Concurrent Detect streams; beyond it new streams get RESOURCE_EXHAUSTED at once.
    pub max_streams: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Largest audio chunk (bytes of AudioChunk.data); larger gRPC messages are refused.
    pub max_chunk_bytes: usize,
    /// Time allowed between opening a stream and its config message.
    pub first_message_timeout_ms: u64,
    /// Streams that have not sent their config yet, on the whole server; a newer one evicts the
    /// oldest (RESOURCE_EXHAUSTED). They hold none of the `max_streams` slots.
    pub max_streams_awaiting_config: usize,
    /// The same per HTTP/2 connection.
    pub max_streams_awaiting_config_per_connection: usize,
    /// Bytes of features (15 680 per window) queued for scoring, all streams together; beyond it
    /// streams wait to enqueue (they stop reading their clients; nothing is dropped) and new streams
    /// are refused. Size it from the pod's memory (deploy/README.md).
    pub max_queued_bytes: usize,
    /// HTTP/2 receive window of each stream: audio a client may send ahead of what the server has
    /// read. It bounds what a stream that is held back (queue limits, overload) buffers on the
    /// server; the default holds 4 s of 16-kHz s16 audio.
    pub http2_stream_window_bytes: u32,
    /// HTTP/2 receive window of each connection (all its streams together).
    pub http2_connection_window_bytes: u32,
    /// Every this often, free heap memory is given back to the operating system (glibc
    /// `malloc_trim`); 0 = never.
    pub memory_trim_interval_ms: u64,
    /// A stream with no message for this long is ended (DEADLINE_EXCEEDED).
    pub idle_timeout_ms: u64,
    /// Longest stream lifetime (DEADLINE_EXCEEDED after it).
    pub max_stream_lifetime_ms: u64,
    /// On SIGTERM/SIGINT: how long in-flight streams may continue before they are ended with their
    /// summary.
    pub drain_grace_ms: u64,
    /// Responses buffered per stream before the server waits for the client to read.
    pub response_buffer: usize,
    /// A client that reads no response for this long while its buffer is full is ended
    /// (RESOURCE_EXHAUSTED).
    pub slow_reader_timeout_ms: u64,
    /// Unscored audio (received but not yet scored) beyond which a stream is reported `behind`.
    pub behind_threshold_ms: u64,
    /// Default progress message interval (audio ms).
    pub progress_interval_ms: u32,
    /// Windows a stream may have queued for scoring (15 680 bytes each); beyond it the server stops
    /// reading that stream's audio (HTTP/2 flow control slows the client; nothing is dropped), and a
    /// large chunk is scored in parts.
    pub max_inflight_windows: usize,
    /// Optional plaintext listener serving only grpc.health.v1 (for probes when TLS or tokens are on).
    pub health_listen: Option<SocketAddr>,
    /// Connections stop taking new streams after this age (GOAWAY), so client-side load balancing
    /// picks up new pods; 0 = never. Streams already open may run to their lifetime limit.
    pub max_connection_age_ms: u64,
    /// Load shedding: while the scoring queue wait of a model (smoothed over its recent batches), or
    /// the lag of the runtime's threads that read and prepare the audio (smoothed), exceeds this, new streams for that model are refused with RESOURCE_EXHAUSTED, so CPU saturation
    /// makes the excess wait instead of making every admitted stream late. New streams are also
    /// refused while the queued feature bytes exceed 90 % of `max_queued_bytes`, and, while the
    /// wait exceeds a quarter of this, when max(4, active/16) admitted streams have not had their
    /// first window scored yet (a burst would overshoot the capacity). 0 = all three off.
    pub shed_queue_wait_ms: u64,
    /// Load shedding by measured CPU: a new stream is refused when the admitted streams plus it
    /// would need more than this share of `cpu_limit_cores`, at the cost of a stream the process
    /// measures over the last 2 s (per scoring stream and per audio-second); and at most
    /// max(64, streams scoring, measured room) admitted streams may not have scored yet
    /// (`admission::CpuMeter`).
    /// 0 = off; also off with `shed_queue_wait_ms = 0`.
    pub shed_cpu_utilisation: f64,
    /// CPU the pod may use, in cores, for `shed_cpu_utilisation`; 0 = detect: the cgroup's CPU quota
    /// (a pod's `limits.cpu`), else the CPUs the process may run on. Set it to the pod's CPU request
    /// when the pod has no CPU limit.
    pub cpu_limit_cores: f64,
    /// TLS handshakes that take longer are dropped (slow or stuck clients hold no resources).
    pub tls_handshake_timeout_ms: u64,
    /// How long event ids stay resolvable by SubmitFeedback.
    pub event_retention_ms: u64,
    /// Most events remembered for feedback (oldest forgotten first).
    pub event_retention_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 50051).into(),
            metrics_listen: ([0, 0, 0, 0], 9090).into(),
            max_streams: 256,
            max_streams_per_connection: 1024,
            max_chunk_bytes: 1 << 20,
            first_message_timeout_ms: 3_000,
            max_streams_awaiting_config: 128,
            max_streams_awaiting_config_per_connection: 32,
            max_queued_bytes: 128 << 20,
            memory_trim_interval_ms: 10_000,
            http2_stream_window_bytes: 128 << 10,
            http2_connection_window_bytes: 1 << 20,
            idle_timeout_ms: 30_000,
            max_stream_lifetime_ms: 4 * 3600 * 1000,
            drain_grace_ms: 30_000,
            response_buffer: 64,
            slow_reader_timeout_ms: 10_000,
            behind_threshold_ms: 2_000,
            progress_interval_ms: 1_000,
            max_inflight_windows: 64,
            health_listen: None,
            max_connection_age_ms: 30 * 60 * 1000,
            shed_queue_wait_ms: 100,
            shed_cpu_utilisation: 0.8,
            cpu_limit_cores: 0.0,
            tls_handshake_timeout_ms: 10_000,
            event_retention_ms: 24 * 3600 * 1000,
            event_retention_max: 200_000,
        }
    }
}

/// The `*_ms` settings as durations: the fields stay integers (they are the TOML keys); code reads
/// these.
impl ServerConfig {
    pub fn first_message_timeout(&self) -> Duration {
        Duration::from_millis(self.first_message_timeout_ms)
    }

    /// `None`: never trim.
    pub fn memory_trim_interval(&self) -> Option<Duration> {
        nonzero_ms(self.memory_trim_interval_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn max_stream_lifetime(&self) -> Duration {
        Duration::from_millis(self.max_stream_lifetime_ms)
    }

    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }

    pub fn slow_reader_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_reader_timeout_ms)
    }

    /// `None`: connections never age out.
    pub fn max_connection_age(&self) -> Option<Duration> {
        nonzero_ms(self.max_connection_age_ms)
    }

    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }

    pub fn event_retention(&self) -> Duration {
        Duration::from_millis(self.event_retention_ms)
    }
}

fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatcherConfig {
    /// Most windows per ONNX Runtime call.
    pub max_batch: usize,
    /// Longest a window waits for others to join its batch.
    pub max_delay_us: u64,
    /// Inference worker threads per served model.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    /// Scoring jobs queued per model before streams wait to enqueue.
    pub queue_capacity: usize,
}

impl BatcherConfig {
    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(self.max_delay_us)
    }
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_delay_us: 5_000,
            workers: 2,
            intra_threads: 1,
            queue_capacity: 1024,
        }
    }
}

/// The second stage of models whose manifest has a `verifier` section (others ignore it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// Verifier worker threads per served model (each with its own three ONNX Runtime sessions).
    pub workers: usize,
    /// Most candidate clips per verifier call (a worker takes what is queued, up to this; it never
    /// waits for more: candidates are rare and each waits for its verdict). Default 1: measured on
    /// x86-64 (models/README.md, "Second-stage verifier"), batching clips costs 20-30 % more CPU per
    /// candidate, so under a burst, clips one by one are both cheaper and sooner; raise it where a
    /// measurement on the target hardware shows batches pay.
    pub max_batch: usize,
    /// Candidate clips queued per model before streams wait to enqueue (~92 KB each).
    pub queue_capacity: usize,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            max_batch: 1,
            queue_capacity: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Directory holding one sub-directory per model (`<dir>/<name>/manifest.json`).
    pub dir: PathBuf,
    /// Served models as `name:variant` (variant `int8` or `fp32`). Each gets its own workers. A
    /// model whose manifest has a `streaming` section is scored on its streaming graph (of the
    /// variant, else fp32); `name:variant:windowed` serves it on its windowed graph instead (e.g.
    /// beside the streaming one, for capacity comparisons). See [`ModelSpec`].
    pub serve: Vec<String>,
    /// Model used when a stream names none (`name:variant` or a name among `serve`).
    pub default: String,
    /// ONNX Runtime shared library; empty = `$KWS_ORT_LIB`, `$ORT_DYLIB_PATH`, or beside the binary.
    pub ort_library: Option<PathBuf>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models"),
            serve: vec!["tc-resnet8:int8".into()],
            default: "tc-resnet8:int8".into(),
            ort_library: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives (`RUST_LOG` wins if set).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; TLS is on when `cert` and `key` are set.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of accepted bearer tokens, one per line (`#` comments); reloaded on SIGHUP and on change.
    pub tokens_file: Option<PathBuf>,
    /// Name of an environment variable holding comma-separated accepted tokens.
    pub tokens_env: Option<String>,
    /// How often `tokens_file` is checked for changes (mtime, size, inode); 0 = only on SIGHUP.
    pub watch_interval_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            tokens_env: None,
            watch_interval_ms: 2_000,
        }
    }
}

impl AuthConfig {
    /// How often the tokens file is checked for changes; zero = only on SIGHUP.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(self.watch_interval_ms)
    }

    /// True when bearer tokens are required (a tokens file or variable is configured).
    pub fn enabled(&self) -> bool {
        self.tokens_file.is_some() || self.tokens_env.is_some()
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Label matching tolerance: a label's span is widened by this on both sides.
    pub tolerance_ms: u64,
    /// Threshold grid evaluated on labelled/negative streams (each in (0, 1), ascending).
    pub thresholds: Vec<f32>,
    /// Grid events kept per stream (16 bytes each; every stream keeps them, since labels may come
    /// after the audio); beyond it only the first part of a stream is evaluated.
    pub max_grid_events: usize,
}

/// The default evaluation grid: 0.05 … 0.95 in steps of 0.05, then the streaming region where the
/// manifests' operating points lie since models 1.2.0 (0.97 … 0.9995), so every default threshold is
/// a grid point (deploy/generate.py mirrors this list).
pub fn default_grid() -> Vec<f32> {
    let mut grid: Vec<f32> = (1..20).map(|i| i as f32 * 0.05).collect();
    grid.extend([0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9995]);
    grid
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            tolerance_ms: 500,
            thresholds: default_grid(),
            max_grid_events: crate::eval::MAX_GRID_EVENTS,
        }
    }
}

/// Command line; every flag also reads a `KWS_*` environment variable.
#[derive(Debug, Parser, Default)]
#[command(name = "kws-service", version, about = "Streaming keyword spotting over gRPC")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "KWS_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "KWS_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "KWS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext grpc.health.v1-only listener.
    #[arg(long, env = "KWS_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    #[arg(long, env = "KWS_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    #[arg(long, env = "KWS_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Comma-separated `name:variant` list.
    #[arg(long, env = "KWS_SERVE", value_delimiter = ',')]
    pub serve: Option<Vec<String>>,
    #[arg(long, env = "KWS_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    #[arg(long, env = "KWS_ORT_LIB")]
    pub ort_library: Option<PathBuf>,
    #[arg(long, env = "KWS_WORKERS")]
    pub workers: Option<usize>,
    #[arg(long, env = "KWS_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    #[arg(long, env = "KWS_MAX_BATCH")]
    pub max_batch: Option<usize>,
    #[arg(long, env = "KWS_MAX_DELAY_US")]
    pub max_delay_us: Option<u64>,
    #[arg(long, env = "KWS_DRAIN_GRACE_MS")]
    pub drain_grace_ms: Option<u64>,
    #[arg(long, env = "KWS_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "KWS_LOG")]
    pub log_filter: Option<String>,
    #[arg(long, env = "KWS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "KWS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, env = "KWS_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    #[arg(long, env = "KWS_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Name of an environment variable holding comma-separated bearer tokens.
    #[arg(long, env = "KWS_TOKENS_ENV")]
    pub tokens_env: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

/// Exit status for an invalid configuration (sysexits.h `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// A configuration problem, reported with exit status [`EX_USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Defaults, then the TOML file, then the CLI/environment overrides; validated.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut c = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        c.apply(cli);
        c.validate()?;
        Ok(c)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    fn apply(&mut self, cli: &Cli) {
        let s = &mut self.server;
        set(&mut s.listen, cli.listen);
        set(&mut s.metrics_listen, cli.metrics_listen);
        if cli.health_listen.is_some() {
            s.health_listen = cli.health_listen;
        }
        set(&mut s.max_streams, cli.max_streams);
        set(&mut s.drain_grace_ms, cli.drain_grace_ms);
        let m = &mut self.models;
        set(&mut m.dir, cli.models_dir.clone());
        set(&mut m.serve, cli.serve.clone());
        set(&mut m.default, cli.default_model.clone());
        if cli.ort_library.is_some() {
            m.ort_library = cli.ort_library.clone();
        }
        let b = &mut self.batcher;
        set(&mut b.workers, cli.workers);
        set(&mut b.intra_threads, cli.intra_threads);
        set(&mut b.max_batch, cli.max_batch);
        set(&mut b.max_delay_us, cli.max_delay_us);
        set(&mut self.log.format, cli.log_format);
        set(&mut self.log.filter, cli.log_filter.clone());
        if cli.tls_cert.is_some() {
            self.tls.cert = cli.tls_cert.clone();
        }
        if cli.tls_key.is_some() {
            self.tls.key = cli.tls_key.clone();
        }
        if cli.tls_client_ca.is_some() {
            self.tls.client_ca = cli.tls_client_ca.clone();
        }
        if cli.tokens_file.is_some() {
            self.auth.tokens_file = cli.tokens_file.clone();
        }
        if cli.tokens_env.is_some() {
            self.auth.tokens_env = cli.tokens_env.clone();
        }
    }

    /// Range checks that do not need the models (those are checked when they load).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let positive = [
            ("server.max_streams", s.max_streams as u64),
            (
                "server.max_streams_per_connection",
                u64::from(s.max_streams_per_connection),
            ),
            ("server.max_chunk_bytes", s.max_chunk_bytes as u64),
            ("server.first_message_timeout_ms", s.first_message_timeout_ms),
            ("server.idle_timeout_ms", s.idle_timeout_ms),
            ("server.max_stream_lifetime_ms", s.max_stream_lifetime_ms),
            ("server.response_buffer", s.response_buffer as u64),
            ("server.slow_reader_timeout_ms", s.slow_reader_timeout_ms),
            ("server.tls_handshake_timeout_ms", s.tls_handshake_timeout_ms),
            ("server.progress_interval_ms", u64::from(s.progress_interval_ms)),
            ("server.max_inflight_windows", s.max_inflight_windows as u64),
            ("server.event_retention_max", s.event_retention_max as u64),
            (
                "server.max_streams_awaiting_config",
                s.max_streams_awaiting_config as u64,
            ),
            (
                "server.max_streams_awaiting_config_per_connection",
                s.max_streams_awaiting_config_per_connection as u64,
            ),
            ("batcher.max_batch", self.batcher.max_batch as u64),
            ("batcher.workers", self.batcher.workers as u64),
            ("batcher.intra_threads", self.batcher.intra_threads as u64),
            ("batcher.queue_capacity", self.batcher.queue_capacity as u64),
            ("verifier.workers", self.verifier.workers as u64),
            ("verifier.max_batch", self.verifier.max_batch as u64),
            ("verifier.queue_capacity", self.verifier.queue_capacity as u64),
            (
                "evaluation.max_grid_events",
                self.evaluation.max_grid_events as u64,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(bad(format!("{name} must be > 0")));
            }
        }
        let window = crate::batcher::WINDOW_BYTES;
        let job = self.batcher.max_batch.max(s.max_inflight_windows) * window;
        if s.max_queued_bytes < job || s.max_queued_bytes / window > u32::MAX as usize {
            return Err(bad(format!(
                "server.max_queued_bytes must be at least {job} (max(batcher.max_batch, server.max_inflight_windows) windows of {window} bytes) and below 64 TiB"
            )));
        }
        for (name, v) in [
            ("server.http2_stream_window_bytes", s.http2_stream_window_bytes),
            (
                "server.http2_connection_window_bytes",
                s.http2_connection_window_bytes,
            ),
        ] {
            if !(65_535..=(1 << 31) - 1).contains(&v) {
                return Err(bad(format!("{name} must be in 65535..=2147483647")));
            }
        }
        if s.max_chunk_bytes > 64 << 20 {
            return Err(bad("server.max_chunk_bytes must be <= 64 MiB"));
        }
        if !(0.0..=1.0).contains(&s.shed_cpu_utilisation) {
            return Err(bad("server.shed_cpu_utilisation must be in [0, 1] (0 = off)"));
        }
        if !(0.0..=4096.0).contains(&s.cpu_limit_cores) {
            return Err(bad(
                "server.cpu_limit_cores must be in [0, 4096] cores (0 = detect from the cgroup quota)",
            ));
        }
        if self.batcher.max_batch > 4096 {
            return Err(bad("batcher.max_batch must be <= 4096"));
        }
        if self.verifier.max_batch > 256
            || self.verifier.workers > 64
            || self.verifier.queue_capacity > 65_536
        {
            return Err(bad(
                "verifier.max_batch must be <= 256, verifier.workers <= 64 and verifier.queue_capacity <= 65536",
            ));
        }
        if self.batcher.max_delay_us > 1_000_000 {
            return Err(bad("batcher.max_delay_us must be <= 1000000 (1 s)"));
        }
        if self.models.serve.is_empty() {
            return Err(bad("models.serve must name at least one model (name:variant)"));
        }
        for spec in &self.models.serve {
            parse_model_spec(spec)?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(bad("tls.cert and tls.key must be set together"));
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            return Err(bad("tls.client_ca (mTLS) needs tls.cert and tls.key"));
        }
        if let Some(var) = &self.auth.tokens_env
            && (var.is_empty() || var.contains('='))
        {
            return Err(bad(
                "auth.tokens_env must be the name of an environment variable (e.g. KWS_TOKENS)",
            ));
        }
        let grid = &self.evaluation.thresholds;
        if grid.is_empty() || grid.len() > 100 {
            return Err(bad("evaluation.thresholds must have 1..=100 values"));
        }
        if grid.iter().any(|t| !(*t > 0.0 && *t < 1.0)) || grid.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("evaluation.thresholds must be ascending values in (0, 1)"));
        }
        Ok(())
    }
}

fn set<T>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

/// One `models.serve` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    /// `fp32` or `int8`.
    pub variant: String,
    /// `name:variant:windowed`: a streamable model (manifest `streaming` section) served on its
    /// windowed graph. Without it such a model is served streaming; for other models it changes
    /// nothing.
    pub windowed: bool,
}

/// `name:variant` or `name:variant:windowed`; the variant must be `fp32` or `int8`.
pub fn parse_model_spec(spec: &str) -> Result<ModelSpec, ConfigError> {
    let (name, rest) = spec.split_once(':').ok_or_else(|| {
        bad(format!(
            "model {spec:?} must be written name:variant (e.g. tc-resnet8:int8)"
        ))
    })?;
    let (variant, windowed) = match rest.split_once(':') {
        Some((v, "windowed")) => (v, true),
        Some(_) => {
            return Err(bad(format!(
                "model {spec:?}: the only suffix after name:variant is \":windowed\""
            )));
        }
        None => (rest, false),
    };
    if name.is_empty() || !["fp32", "int8"].contains(&variant) {
        return Err(bad(format!(
            "model {spec:?}: name must be non-empty and variant fp32 or int8"
        )));
    }
    Ok(ModelSpec {
        name: name.to_string(),
        variant: variant.to_string(),
        windowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults valid");
    }

    #[test]
    fn toml_overrides_and_unknown_keys() {
        let c: Config =
            toml::from_str("[server]\nmax_streams = 7\n[batcher]\nmax_batch = 8\n").expect("parse");
        assert_eq!((c.server.max_streams, c.batcher.max_batch), (7, 8));
        assert_eq!(c.server.idle_timeout_ms, ServerConfig::default().idle_timeout_ms);
        assert!(toml::from_str::<Config>("[server]\nmax_stream = 7\n").is_err());
    }

    #[test]
    fn cli_wins_over_file() {
        let mut c: Config = toml::from_str("[server]\nmax_streams = 7\n").expect("parse");
        c.apply(&Cli {
            max_streams: Some(9),
            serve: Some(vec!["m:fp32".into()]),
            ..Cli::default()
        });
        assert_eq!(c.server.max_streams, 9);
        assert_eq!(c.models.serve, vec!["m:fp32".to_string()]);
    }

    #[test]
    fn cpu_shedding_settings_are_checked() {
        let c: Config =
            toml::from_str("[server]\nshed_cpu_utilisation = 0.9\ncpu_limit_cores = 0.5\n").expect("parse");
        assert_eq!(
            (c.server.shed_cpu_utilisation, c.server.cpu_limit_cores),
            (0.9, 0.5)
        );
        c.validate().expect("valid");
        for (u, l, name) in [
            (1.5, 0.0, "server.shed_cpu_utilisation"),
            (f64::NAN, 0.0, "server.shed_cpu_utilisation"),
            (0.8, -1.0, "server.cpu_limit_cores"),
        ] {
            let mut c = Config::default();
            c.server.shed_cpu_utilisation = u;
            c.server.cpu_limit_cores = l;
            let e = c.validate().expect_err(name).to_string();
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn model_specs_and_the_windowed_suffix() {
        let spec = |s| parse_model_spec(s).map(|m| (m.name, m.variant, m.windowed));
        assert_eq!(spec("a:int8").expect("plain"), ("a".into(), "int8".into(), false));
        assert_eq!(
            spec("a-stream:fp32:windowed").expect("windowed"),
            ("a-stream".into(), "fp32".into(), true)
        );
        assert!(
            spec("a:fp32:stream")
                .expect_err("suffix")
                .to_string()
                .contains(":windowed")
        );
        assert!(spec("a:fp16").is_err());
        assert!(spec("a").is_err());
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        c.batcher.workers = 0;
        assert!(
            c.validate()
                .expect_err("0 workers")
                .to_string()
                .contains("batcher.workers")
        );
        type Edit = fn(&mut Config);
        let cases: [(Edit, &str); 4] = [
            (|c| c.verifier.workers = 0, "verifier.workers"),
            (|c| c.verifier.max_batch = 0, "verifier.max_batch"),
            (|c| c.verifier.max_batch = 257, "verifier.max_batch"),
            (|c| c.verifier.queue_capacity = 0, "verifier.queue_capacity"),
        ];
        for (f, name) in cases {
            let mut c = Config::default();
            f(&mut c);
            assert!(c.validate().expect_err(name).to_string().contains(name), "{name}");
        }
        let c: Config = toml::from_str("[verifier]\nworkers = 2\nmax_batch = 4\n").expect("parse");
        assert_eq!(
            (
                c.verifier.workers,
                c.verifier.max_batch,
                c.verifier.queue_capacity
            ),
            (2, 4, 256)
        );
        let mut c = Config::default();
        c.models.serve = vec!["tc-resnet8".into()];
        assert!(
            c.validate()
                .expect_err("no variant")
                .to_string()
                .contains("name:variant")
        );
        let mut c = Config::default();
        c.evaluation.thresholds = vec![0.5, 0.4];
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.tls.cert = Some("c.pem".into());
        assert!(
            c.validate()
                .expect_err("cert without key")
                .to_string()
                .contains("tls.key")
        );
    }
}
