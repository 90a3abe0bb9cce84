//! `kws-service`: load the configuration and the models, serve until SIGTERM/SIGINT, drain, exit.
//!
//! Exit status: 0 after a clean drain, 64 for an invalid configuration (including unreadable or
//! invalid TLS files and an unreadable tokens file), 1 if a model or ONNX Runtime cannot be loaded or
//! the listeners cannot bind.

use std::process::ExitCode;

use clap::Parser;
use kws_service::config::{Cli, Config, EX_USAGE};
use kws_service::registry::Registry;
use kws_service::server::{self, Security};
use kws_service::{shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Certificates, keys and tokens are part of the configuration: unreadable ones exit 64 too.
    // They are read here, once, and handed to the server.
    let loaded = Config::load(&cli).and_then(|c| Ok((Security::load(&c)?, c)));
    let (security, config) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kws-service: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if cli.check {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    telemetry::init_tracing(config.log.format, &config.log.filter);
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
    match runtime.block_on(run(config, security)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "kws-service failed");
            eprintln!("kws-service: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, security: Security) -> anyhow::Result<()> {
    telemetry::install_metrics(config.server.metrics_listen)?;
    let (registry, workers) = Registry::load(&config)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
    server::serve_with(config, security, registry, listener, shutdown::signal()).await?;
    // The registry (and with it every batcher handle) is gone: workers finish their queue and exit.
    for w in workers {
        let _ = w.join();
    }
    tracing::info!("stopped");
    Ok(())
}
