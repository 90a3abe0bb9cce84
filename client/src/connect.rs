//! Connecting to a kws service: address, TLS (optionally mutual), bearer token.
//!
//! The token travels as `authorization: Bearer <token>` metadata on every call (the service checks
//! it in an interceptor). TLS uses rustls: the server is verified against `ca_cert` if given, else
//! against the system's CA store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ClientError;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port`, `http://host:port` or `https://host:port`. Without a scheme, `https` is used when
    /// `tls` is set, `http` otherwise; an `https://` address turns TLS on.
    pub addr: String,
    /// TLS settings; `None` = plaintext (unless `addr` starts with `https://`).
    pub tls: Option<TlsOptions>,
    /// Bearer token sent with every call; `None` = no `authorization` metadata.
    pub token: Option<String>,
    /// Time allowed to establish the connection (TCP + TLS + HTTP/2).
    pub connect_timeout: Duration,
    /// Per-call deadline for unary calls (`models`, `health`); streams have none.
    pub request_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            addr: "http://127.0.0.1:50051".into(),
            tls: None,
            token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectOptions {
    /// Plaintext connection to `addr` with the default timeouts.
    pub fn plaintext(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ..Self::default()
        }
    }
}

/// TLS settings. All files are PEM.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA bundle that signed the server's certificate; `None` = the system's CA store.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (needs `client_key`).
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Name to verify the server's certificate against; `None` = the host of the address.
    pub domain: Option<String>,
}

/// Adds `authorization: Bearer <token>` to every request (nothing without a token).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// Checks that the token is printable ASCII without spaces (what HTTP/2 metadata can carry).
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let Some(t) = token.filter(|t| !t.is_empty()) else {
            return Ok(Self(None));
        };
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Token(
                "the bearer token must be printable ASCII without spaces".into(),
            ));
        }
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| ClientError::Token("the bearer token is not valid metadata".into()))?;
        Ok(Self(Some(v)))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Tls(format!("cannot read {what} {}: {e}", path.display())))
}

/// The endpoint URI and whether TLS is on, from `opts`.
pub fn endpoint_uri(opts: &ConnectOptions) -> (String, bool) {
    let addr = opts.addr.trim();
    if addr.starts_with("https://") {
        (addr.to_string(), true)
    } else if addr.starts_with("http://") {
        (addr.to_string(), opts.tls.is_some())
    } else if opts.tls.is_some() {
        (format!("https://{addr}"), true)
    } else {
        (format!("http://{addr}"), false)
    }
}

/// The endpoint (URI, timeouts, TLS) for `opts`, not connected yet: `connect()` it, or
/// `connect_lazy()` it for channels that connect on first use.
pub fn endpoint(opts: &ConnectOptions) -> Result<Endpoint, ClientError> {
    let (uri, tls) = endpoint_uri(opts);
    let uri = if tls && uri.starts_with("http://") {
        uri.replacen("http://", "https://", 1)
    } else {
        uri
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Address(format!("{:?}: {e}", opts.addr)))?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if tls {
        let t = opts.tls.clone().unwrap_or_default();
        let mut cfg = ClientTlsConfig::new();
        cfg = match &t.ca_cert {
            Some(ca) => cfg.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?)),
            None => cfg.with_native_roots(),
        };
        match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => {
                cfg = cfg.identity(Identity::from_pem(
                    read(c, "client certificate")?,
                    read(k, "client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate and its key must be given together".into(),
                ));
            }
        }
        if let Some(d) = &t.domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| ClientError::Tls(format!("{e}")))?;
    }
    Ok(endpoint)
}

/// Open a channel (connects now, so an unreachable server fails here, within `connect_timeout`).
pub async fn connect_channel(opts: &ConnectOptions) -> Result<Channel, ClientError> {
    let endpoint = endpoint(opts)?;
    let addr = endpoint.uri().to_string();
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        addr,
        reason: crate::error::source_chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let mut o = ConnectOptions::plaintext("127.0.0.1:1");
        assert_eq!(endpoint_uri(&o), ("http://127.0.0.1:1".into(), false));
        o.tls = Some(TlsOptions::default());
        assert_eq!(endpoint_uri(&o), ("https://127.0.0.1:1".into(), true));
        let o = ConnectOptions::plaintext("https://kws:443");
        assert_eq!(endpoint_uri(&o), ("https://kws:443".into(), true));
    }

    #[test]
    fn bearer_token_metadata() {
        let mut b = BearerToken::new(Some("s3cr3t")).expect("token");
        let r = b.call(tonic::Request::new(())).expect("intercept");
        assert_eq!(
            r.metadata().get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer s3cr3t")
        );
        assert!(BearerToken::new(Some("has space")).is_err());
        let mut none = BearerToken::new(None).expect("no token");
        assert!(
            none.call(tonic::Request::new(()))
                .expect("intercept")
                .metadata()
                .is_empty()
        );
    }
}
