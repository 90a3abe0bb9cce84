//! Wiring: health, reflection, the kws service behind the bearer-token interceptor, TLS, limits,
//! drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kws_proto::v1::keyword_spotting_server::KeywordSpottingServer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admission::{AwaitingBudget, CpuMeter};
use crate::auth::{self, Auth, AuthInterceptor};
use crate::batcher::WINDOW_BYTES;
use crate::config::{Config, ConfigError};
use crate::eval::EvalSettings;
use crate::feedback::EventStore;
use crate::grpc::KwsService;
use crate::guard::GrpcGuardLayer;
use crate::registry::Registry;
use crate::session::SessionDeps;
use crate::shutdown::{Phase, drain};
use crate::telemetry::names;

/// TLS settings and bearer tokens, read and checked once (unreadable or unusable files are
/// configuration errors: exit 64 before anything starts).
#[derive(Debug, Clone)]
pub struct Security {
    tls: Option<tonic::transport::ServerTlsConfig>,
    auth: Option<Arc<Auth>>,
}

impl Security {
    pub fn load(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            tls: crate::tls::load(&config.tls, config.server.tls_handshake_timeout())?,
            auth: Auth::from_config(&config.auth)?,
        })
    }
}

/// Serve on `listener` until `shutdown` resolves, then drain (see [`crate::shutdown`]) and return.
/// Reads the TLS files and tokens itself; see [`serve_with`].
pub async fn serve(
    config: Config,
    registry: Registry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let security = Security::load(&config)?;
    serve_with(config, security, registry, listener, shutdown).await
}

/// [`serve`] with the TLS settings and tokens already loaded (the binary loads them once, with the
/// rest of the configuration).
pub async fn serve_with(
    config: Config,
    security: Security,
    registry: Registry,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = config.server.max_streams;
    let active = Arc::new(Semaphore::new(max));
    metrics::gauge!(names::MAX_STREAMS).set(max as f64);
    metrics::gauge!(names::ACTIVE_STREAMS).set(0.0);
    let queued_windows = config.server.max_queued_bytes / WINDOW_BYTES;
    let queued = Arc::new(Semaphore::new(queued_windows));
    metrics::gauge!(names::MAX_QUEUED_BYTES).set((queued_windows * WINDOW_BYTES) as f64);
    let sampler = tokio::spawn(sample_queued(queued.clone(), queued_windows));
    let _trimmer = match config.server.memory_trim_interval() {
        None => None,
        Some(every) => Some(crate::memory::spawn_trimmer(every)?),
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let deps = SessionDeps {
        server: Arc::new(config.server.clone()),
        phase: phase_rx,
        events: Arc::new(EventStore::new(
            config.server.event_retention(),
            config.server.event_retention_max,
        )),
        evaluation: Arc::new(
            EvalSettings::new(
                config.evaluation.tolerance_ms,
                config.evaluation.thresholds.clone(),
            )
            .with_max_grid_events(config.evaluation.max_grid_events),
        ),
        active: active.clone(),
        awaiting: AwaitingBudget::new(
            config.server.max_streams_awaiting_config,
            config.server.max_streams_awaiting_config_per_connection,
        ),
        queued,
        warming: Default::default(),
        runtime_lag: Default::default(),
        cpu: CpuMeter::new(config.server.cpu_limit_cores, config.server.shed_cpu_utilisation),
    };
    let lag_probe = tokio::spawn(probe_runtime_lag(deps.runtime_lag.clone()));
    let scoring = {
        let (active, warming) = (deps.active.clone(), deps.warming.clone());
        move || {
            let admitted = max.saturating_sub(active.available_permits());
            admitted.saturating_sub(warming.load(std::sync::atomic::Ordering::Relaxed))
        }
    };
    let cpu_sampler = tokio::spawn(crate::admission::sample_cpu(deps.cpu.clone(), scoring));
    let (cpu_limit, cpu_limit_source) = deps.cpu.limit();
    crate::telemetry::register_server();
    let cpu = kws_models::cpu::detect();
    // Logged once at start: the int8 kernel family decides the int8 models' arithmetic, so it is
    // the first thing to compare when two pods score the same audio differently.
    tracing::info!(cpu_arch = cpu.arch, cpu_features = %cpu.features_string(),
        int8_kernels = %cpu.int8_kernels, "ONNX Runtime CPU kernels");
    for m in registry.all() {
        crate::telemetry::register_model(
            &m.name,
            &m.manifest.keywords,
            &m.manifest.default_thresholds(),
            &deps.evaluation.grid_labels,
        );
    }
    let svc = KwsService {
        registry: Arc::new(registry),
        deps,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KeywordSpottingServer<KwsService>>().await;
    // Both reflection versions: grpcurl and tonic speak v1; grpcio-reflection, Postman and older
    // grpcurl/evans only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kws_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Room for the protobuf framing around the largest chunk; beyond it tonic refuses the message
    // before decoding it (the session turns that into INVALID_ARGUMENT with the limit).
    let kws = KeywordSpottingServer::new(svc)
        .max_decoding_message_size(config.server.max_chunk_bytes + 4096)
        .max_encoding_message_size(4 << 20);
    // Only the kws service needs a token: health and reflection stay open for probes.
    let Security { tls, auth } = security;
    let kws = InterceptedService::new(kws, AuthInterceptor::new(auth.clone()));
    let watcher = auth.map(|a| tokio::spawn(auth::watch(a, config.auth.watch_interval())));

    let grace = config.server.drain_grace();
    let on_shutdown = async move {
        shutdown.await;
        let not_serving = async {
            health
                .set_not_serving::<KeywordSpottingServer<KwsService>>()
                .await;
            health.set_service_status("", ServingStatus::NotServing).await;
        };
        drain(&phase_tx, &active, max, grace, not_serving).await;
    };
    tracing::info!(addr = %listener.local_addr()?, max_streams = max, cpu_limit_cores = cpu_limit,
        cpu_limit_source, shed_cpu_utilisation = config.server.shed_cpu_utilisation, tls = tls.is_some(),
        mtls = config.tls.client_ca.is_some(), auth = config.auth.enabled(), "serving");
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Plaintext gRPC health on its own port, for probes that can speak neither TLS nor tokens.
    let health_only = match config.server.health_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (server.health_listen): {e}"))?;
            tracing::info!(addr = %l.local_addr()?, "plaintext health endpoint");
            let svc = health_service.clone();
            Some(tokio::spawn(async move {
                Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(TcpListenerStream::new(l))
                    .await
            }))
        }
        None => None,
    };
    if let Some(age) = config.server.max_connection_age() {
        // Clients reconnect periodically, so client-side balancing sees new pods; streams on an old
        // connection may run to their lifetime limit before it closes.
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(config.server.max_stream_lifetime());
    }
    let served = builder
        .layer(GrpcGuardLayer)
        .tcp_nodelay(true)
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(config.server.max_streams_per_connection)
        // Small receive windows: a stream the server holds back buffers at most this much.
        .initial_stream_window_size(config.server.http2_stream_window_bytes)
        .initial_connection_window_size(config.server.http2_connection_window_bytes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kws)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), on_shutdown)
        .await;
    if let Some(w) = watcher {
        w.abort();
    }
    sampler.abort();
    lag_probe.abort();
    cpu_sampler.abort();
    if let Some(h) = health_only {
        h.abort();
    }
    served?;
    Ok(())
}

/// Export the bytes queued for scoring every 100 ms (sampled, so the per-job path updates no metric).
async fn sample_queued(queued: Arc<Semaphore>, total: usize) {
    let gauge = metrics::gauge!(names::QUEUED_BYTES);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let used = total.saturating_sub(queued.available_permits());
        gauge.set((used * WINDOW_BYTES) as f64);
    }
}

/// Measure how late a timer task wakes up (every 20 ms): when the CPU is short, the runtime's
/// threads (which read the clients' audio and run the frontend) fall behind before the scoring
/// queue does, so admission looks at this lag too.
async fn probe_runtime_lag(lag: Arc<crate::batcher::QueueWait>) {
    let period = Duration::from_millis(20);
    let gauge = metrics::gauge!(names::RUNTIME_LAG);
    for i in 0u64.. {
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(period).await;
        lag.record(t0.elapsed().saturating_sub(period));
        if i % 50 == 0 {
            gauge.set(lag.current().as_secs_f64());
        }
    }
}

/// Largest accepted request header block (metadata), in bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
