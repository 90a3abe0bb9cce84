//! Client errors: connection set-up, RPC statuses, audio input.

use std::fmt::Write as _;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address cannot be parsed as a URI.
    #[error("invalid server address {0}")]
    Address(String),
    /// A TLS file could not be read, or the TLS settings are inconsistent.
    #[error("TLS: {0}")]
    Tls(String),
    /// The bearer token cannot be sent as metadata.
    #[error("token: {0}")]
    Token(String),
    /// No connection could be established (server down, wrong port, TLS handshake failed).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server answered with an error status.
    #[error("{}", describe_status(.0))]
    Status(#[from] tonic::Status),
    /// The server broke the protocol (e.g. the first response was not `Ready`).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The stream ended on the server side while audio was still being sent; the receiving side
    /// has the status that ended it.
    #[error("the stream was closed by the server")]
    StreamClosed,
    /// Bad input audio (unreadable WAV, unsupported sample format, read error).
    #[error("{0}")]
    Audio(#[from] crate::audio::AudioInputError),
}

impl ClientError {
    /// True for errors caused by what the caller supplied (bad audio, address, token or TLS files, or a
    /// status INVALID_ARGUMENT / NOT_FOUND from the server), as opposed to server or transport
    /// failures (a failed TLS handshake is a connection error).
    pub fn is_input_error(&self) -> bool {
        match self {
            ClientError::Audio(_) | ClientError::Address(_) | ClientError::Token(_) | ClientError::Tls(_) => {
                true
            }
            ClientError::Status(s) => {
                matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound)
            }
            ClientError::Connect { .. } | ClientError::Protocol(_) | ClientError::StreamClosed => false,
        }
    }
}

/// One line describing a status: code, message, and the hints a user can act on.
pub fn describe_status(s: &tonic::Status) -> String {
    let mut out = format!("server returned {:?}", s.code());
    if !s.message().is_empty() {
        let _ = write!(out, ": {}", s.message());
    }
    if let Some(ms) = s
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
    {
        let _ = write!(out, " (retry after {ms} ms)");
    }
    match s.code() {
        tonic::Code::Unavailable if s.message().contains("tcp connect") || s.message().is_empty() => {
            out.push_str(" — is the server running and reachable?");
        }
        tonic::Code::Unauthenticated => out.push_str(" — pass a valid token with --token or KWS_TOKEN"),
        tonic::Code::Cancelled | tonic::Code::Unknown
            if std::error::Error::source(s)
                .is_some_and(|e| source_chain(e).contains("connection closed")) =>
        {
            out.push_str(
                " — the server closed the connection (if it requires mutual TLS, pass --client-cert and --client-key)",
            );
        }
        _ => {}
    }
    if let Some(src) = std::error::Error::source(s) {
        let _ = write!(out, " [{}]", source_chain(src));
    }
    out
}

/// `e: cause: cause ...` — transport errors hide the useful part (connection refused, certificate
/// unknown) several levels down.
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            let _ = write!(s, ": {m}");
        }
        cur = c.source();
    }
    s
}
