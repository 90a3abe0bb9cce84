//! `kws-service`: load the configuration and the models, serve until SIGTERM/SIGINT, drain, exit.
//!
//! Exit status: 0 after a clean drain, 64 for an invalid configuration (including unreadable or
//! invalid TLS files and an unreadable tokens file), 1 if a model or ONNX Runtime cannot be loaded or
//! the listeners cannot bind.

use std::process::ExitCode;

use clap::Parser;
use kws_service::config::{Cli, Config};
use kws_service::registry::Registry;
use kws_service::{server, shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kws-service: {e}");
            return ExitCode::from(64);
        }
    };
    // Certificates, keys and tokens are part of the configuration: unreadable ones exit 64 too.
    let security = kws_service::tls::check(
        &config.tls,
        std::time::Duration::from_millis(config.server.tls_handshake_timeout_ms),
    )
    .and_then(|()| kws_service::auth::Auth::from_config(&config.auth).map(|_| ()));
    if let Err(e) = security {
        eprintln!("kws-service: {e}");
        return ExitCode::from(64);
    }
    if cli.check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    telemetry::init_tracing(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kws-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kws-service: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "kws-service failed");
            eprintln!("kws-service: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    telemetry::install_metrics(config.server.metrics_listen)?;
    let (registry, workers) = Registry::load(&config)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    server::serve(config, registry, listener, shutdown::signal()).await?;
    // The registry (and with it every batcher handle) is gone: workers finish their queue and exit.
    for w in workers {
        let _ = w.join();
    }
    tracing::info!("stopped");
    Ok(())
}
