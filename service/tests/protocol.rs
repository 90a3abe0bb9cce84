//! The HTTP/2 and gRPC surface around the kws service, over real connections: unknown methods get
//! UNIMPLEMENTED with a message, non-gRPC content types get HTTP 415, server reflection answers in
//! both versions (v1 and v1alpha), and the service's own log lines carry no colour codes when stderr
//! is not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// POST `path` with `content-type` and an empty gRPC body; returns (HTTP status, grpc-status,
/// grpc-message) from the response headers or trailers.
async fn raw_call(addr: SocketAddr, path: &str, content_type: &str) -> (u16, String, String) {
    let (client, _conn) = h2_connect(addr).await;
    let mut client = client.ready().await.unwrap();
    let req = grpc_request(addr, path, content_type);
    let (response, mut send) = client.send_request(req, false).unwrap();
    // An empty GetModelInfoRequest (default model name). The server may answer (415) and close the
    // stream from the headers alone before the body goes out: then sending fails, and the answer
    // below is what the test checks.
    let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("response headers")
        .unwrap();
    let code = response.status().as_u16();
    let field = |h: &http::HeaderMap, k: &str| {
        percent_decode(
            &h.get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
        )
    };
    let (s, m) = (
        field(response.headers(), "grpc-status"),
        field(response.headers(), "grpc-message"),
    );
    if !s.is_empty() || code != 200 {
        return (code, s, m);
    }
    let mut body = response.into_body();
    while let Some(d) = body.data().await {
        let _ = body.flow_control().release_capacity(d.unwrap().len());
    }
    let t = body.trailers().await.unwrap().unwrap_or_default();
    (code, field(&t, "grpc-status"), field(&t, "grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_and_services_are_unimplemented_with_a_message() {
    let server = TestServer::start(test_config()).await;
    for path in ["/kws.v1.KeywordSpotting/Nope", "/no.such.Service/Call"] {
        let (http, status, message) = raw_call(server.addr, path, "application/grpc").await;
        assert_eq!((http, status.as_str()), (200, "12"), "{path}: {message}");
        assert!(
            message.starts_with(&format!(
                "unknown method {path}: this server serves kws.v1.KeywordSpotting"
            )),
            "{message}"
        );
        assert!(
            message.contains("grpc.reflection.v1alpha.ServerReflection"),
            "{message}"
        );
    }
    // A known method still answers normally.
    let (http, status, message) = raw_call(
        server.addr,
        "/kws.v1.KeywordSpotting/GetModelInfo",
        "application/grpc+proto",
    )
    .await;
    assert_eq!((http, status.as_str()), (200, "0"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_grpc_get_http_415() {
    let server = TestServer::start(test_config()).await;
    for ct in ["text/plain", "application/json", "application/grpcx"] {
        let (http, status, _) = raw_call(server.addr, "/kws.v1.KeywordSpotting/GetModelInfo", ct).await;
        assert_eq!((http, status.as_str()), (415, ""), "{ct}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = TestServer::start(test_config()).await;
    let ch = server.channel().await;

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(ch.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1alpha served")
        .into_inner();
    let r = answers.message().await.unwrap().expect("a response");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
        r.message_response
    else {
        panic!("{r:?}")
    };
    let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"kws.v1.KeywordSpotting".to_string()), "{names:?}");

    let mut v1c = v1::server_reflection_client::ServerReflectionClient::new(ch);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1c
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("v1 served")
        .into_inner();
    let r = answers.message().await.unwrap().expect("a response");
    assert!(
        matches!(
            r.message_response,
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(_))
        ),
        "{r:?}"
    );
}

#[test]
fn log_lines_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    // A models directory without models: the binary starts its logging, fails to load and logs an
    // ERROR line to stderr, which is a pipe here.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kws-service"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--models-dir")
        .arg(dir.path())
        .arg("--ort-library")
        .arg(ort_lib())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(" ERROR "),
        "grep ' ERROR ' finds the error line: {err}"
    );
    assert!(!err.contains('\u{1b}'), "no ANSI escape codes: {err:?}");
}
