//! TLS (rustls, via tonic's `tls-ring`) for the gRPC listener, with optional client-certificate
//! verification (mTLS).
//!
//! TLS is on when `tls.cert` and `tls.key` are set (PEM certificate chain and PEM private key).
//! With `tls.client_ca` (a PEM CA bundle) every client must present a certificate signed by it;
//! connections without one fail the handshake. The files are read once at start-up (restart to
//! rotate certificates); the handshake must finish within `server.tls_handshake_timeout_ms`.
//! Health and reflection are served on the same listener, so with TLS on probes speak TLS too.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ConfigError, TlsConfig};

fn read_pem(setting: &str, path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError(format!("cannot read {setting} {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN") {
        return Err(ConfigError(format!(
            "{setting} {} is not PEM: expected a -----BEGIN {what}----- block",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The server's TLS settings, or `None` when TLS is off. Fails with a message naming the setting if
/// a file cannot be read or is not PEM.
fn server_config(
    cfg: &TlsConfig,
    handshake_timeout: Duration,
) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let cert = read_pem("tls.cert", cert, "CERTIFICATE")?;
    let key = read_pem("tls.key", key, "PRIVATE KEY")?;
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(handshake_timeout);
    if let Some(ca) = &cfg.client_ca {
        let ca = read_pem("tls.client_ca", ca, "CERTIFICATE")?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(tls))
}

/// Read the files once and check that they build a TLS acceptor, so that a bad certificate or key
/// is reported at start-up as a configuration error (exit 64) rather than when serving. `None` when
/// TLS is off.
pub fn load(cfg: &TlsConfig, handshake_timeout: Duration) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let Some(tls) = server_config(cfg, handshake_timeout)? else {
        return Ok(None);
    };
    tonic::transport::Server::builder()
        .tls_config(tls.clone())
        .map_err(|e| {
            ConfigError(format!(
                "tls.cert / tls.key / tls.client_ca cannot be used: {}",
                error_chain(&e)
            ))
        })?;
    Ok(Some(tls))
}

/// An error and its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
