//! HTTP-level checks around the gRPC routes: a request whose `content-type` is not
//! `application/grpc[+…]` is answered with HTTP 415 (Unsupported Media Type), as the gRPC over HTTP/2
//! spec asks, instead of being decoded as if it were gRPC; an UNIMPLEMENTED answer (unknown service or
//! method), which tonic sends with an empty message, gets one naming the method and what is served.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{HeaderValue, Request, Response, StatusCode, header};

/// What the server serves, for the UNIMPLEMENTED message.
const SERVED: &str = "kws.v1.KeywordSpotting (Detect, GetModelInfo, ListModels, SubmitFeedback), grpc.health.v1.Health (Check, Watch), grpc.reflection.v1.ServerReflection and grpc.reflection.v1alpha.ServerReflection";

/// Tower layer applying [`GrpcGuard`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcGuardLayer;

impl<S> tower_layer::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> GrpcGuard<S> {
        GrpcGuard { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct GrpcGuard<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for GrpcGuard<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !is_grpc(req.headers().get(header::CONTENT_TYPE)) {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            r.headers_mut()
                .insert(header::ACCEPT, HeaderValue::from_static("application/grpc"));
            return Box::pin(async move { Ok(r) });
        }
        let path = req.uri().path().to_string();
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut r = call.await?;
            let h = r.headers_mut();
            let unimplemented = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"12");
            let no_message = h.get("grpc-message").is_none_or(|m| m.is_empty());
            if unimplemented
                && no_message
                && let Ok(v) = HeaderValue::from_str(&unimplemented_message(&path))
            {
                h.insert("grpc-message", v);
            }
            Ok(r)
        })
    }
}

/// `application/grpc`, optionally followed by `+proto`, `+json`, … or parameters.
fn is_grpc(ct: Option<&HeaderValue>) -> bool {
    ct.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v == "application/grpc" || v.starts_with("application/grpc+") || v.starts_with("application/grpc;")
    })
}

/// The message (percent-encoded, as `grpc-message` requires) for a call of an unknown method.
fn unimplemented_message(path: &str) -> String {
    let text = format!("unknown method {path}: this server serves {SERVED}");
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for ok in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=y",
        ] {
            assert!(is_grpc(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/grpcx", "application/json", ""] {
            assert!(!is_grpc(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_grpc(None));
    }

    #[test]
    fn message_is_percent_encoded() {
        let m = unimplemented_message("/a%b/\u{e9}");
        assert!(
            m.starts_with("unknown method /a%25b/%C3%A9: this server serves kws.v1"),
            "{m}"
        );
    }
}
