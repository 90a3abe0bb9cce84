//! TLS, mTLS and bearer tokens over real gRPC. Certificates are generated at test time (rcgen); no
//! key is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use kws_proto::v1::keyword_spotting_client::KeywordSpottingClient;
use kws_proto::v1::{self, AudioEncoding};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    other_ca_pem: String,
}

struct Leaf {
    cert: String,
    key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> Leaf {
    let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A CA with a server certificate for `localhost` and a client certificate; another CA with a
/// client certificate the server must not trust.
fn pki() -> (Pki, Leaf, Leaf) {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = ca("kws test CA");
    let ca2 = ca("untrusted CA");
    let server = leaf(&ca1, &["localhost"]);
    let client = leaf(&ca1, &["client-a"]);
    let stranger = leaf(&ca2, &["client-b"]);
    write(dir.path(), "server.pem", &server.cert);
    write(dir.path(), "server.key", &server.key);
    write(dir.path(), "ca.pem", &ca1.pem());
    (
        Pki {
            dir,
            ca_pem: ca1.pem(),
            other_ca_pem: ca2.pem(),
        },
        client,
        stranger,
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn detect_golden(channel: Channel, token: Option<&str>) -> Outcome {
    let pcm = s16_bytes(&golden_stream());
    let mut reqs = vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))];
    reqs.extend(pcm.chunks(3200).map(|c| req_audio(c.to_vec())));
    run_stream_with_token(&mut KeywordSpottingClient::new(channel), reqs, token).await
}

fn golden_offline() -> Vec<(String, u64, u64, f32)> {
    offline_events("int8", native(), &s16_bytes(&golden_stream()))
}

async fn health_status(channel: Channel) -> Result<i32, tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kws.v1.KeywordSpotting".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_detect_and_health_and_refuses_plaintext() {
    let (pki, _, _) = pki();
    let mut c = test_config();
    c.tls.cert = Some(pki.dir.path().join("server.pem"));
    c.tls.key = Some(pki.dir.path().join("server.key"));
    let server = TestServer::start(c).await;

    let ch = tls_channel(server.addr, &pki.ca_pem, None)
        .await
        .expect("TLS connect");
    let out = detect_golden(ch.clone(), None).await;
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(tuples(&out.events), golden_offline());
    assert_eq!(health_status(ch).await.unwrap(), 1, "SERVING over TLS");

    // A client that does not trust the server's CA cannot connect.
    let wrong_ca = match tls_channel(server.addr, &pki.other_ca_pem, None).await {
        Err(_) => None,
        Ok(ch) => Some(health_status(ch).await),
    };
    assert!(matches!(wrong_ca, None | Some(Err(_))), "{wrong_ca:?}");
    // Plaintext HTTP/2 to the TLS port fails.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = tokio::time::timeout(Duration::from_secs(10), health_status(ch)).await;
        assert!(
            matches!(r, Ok(Err(_)) | Err(_)),
            "plaintext must not be served: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_signed_by_the_configured_ca() {
    let (pki, client, stranger) = pki();
    let mut c = test_config();
    c.tls.cert = Some(pki.dir.path().join("server.pem"));
    c.tls.key = Some(pki.dir.path().join("server.key"));
    c.tls.client_ca = Some(pki.dir.path().join("ca.pem"));
    let server = TestServer::start(c).await;

    let ok = tls_channel(server.addr, &pki.ca_pem, Some(&client))
        .await
        .expect("mTLS connect");
    let out = detect_golden(ok, None).await;
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(tuples(&out.events), golden_offline());

    for (name, id) in [
        ("no client certificate", None),
        ("certificate of another CA", Some(&stranger)),
    ] {
        let r = match tls_channel(server.addr, &pki.ca_pem, id).await {
            Err(e) => Err(format!("connect: {e}")),
            Ok(ch) => health_status(ch).await.map_err(|s| format!("{s:?}")),
        };
        assert!(r.is_err(), "{name}: must be refused, got {r:?}");
    }
}

fn token_config(dir: &Path, tokens: &str, watch_ms: u64) -> kws_service::config::Config {
    let file = write(dir, "tokens", tokens);
    let mut c = test_config();
    c.auth.tokens_file = Some(file);
    c.auth.watch_interval_ms = watch_ms;
    c
}

async fn list_models(ch: Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(v1::ListModelsRequest {});
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    KeywordSpottingClient::new(ch).list_models(req).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_the_api_but_not_health_or_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(token_config(dir.path(), "# test tokens\nalpha\n  beta  \n", 0)).await;
    let ch = server.channel().await;

    for (token, want) in [
        (
            None,
            "missing bearer token: send the metadata `authorization: Bearer <token>`",
        ),
        (Some("wrong"), "invalid bearer token"),
        (Some("alph"), "invalid bearer token"),
    ] {
        let out = detect_golden(ch.clone(), token).await;
        let st = out.status.expect("refused");
        assert_eq!(st.code(), Code::Unauthenticated, "{token:?}: {st:?}");
        assert!(st.message().contains(want), "{token:?}: {st:?}");
        let st = list_models(ch.clone(), token).await.expect_err("refused");
        assert_eq!(st.code(), Code::Unauthenticated);
    }
    // A wrong scheme.
    let mut req = tonic::Request::new(v1::ListModelsRequest {});
    req.metadata_mut()
        .insert("authorization", "Basic alpha".parse().unwrap());
    let st = KeywordSpottingClient::new(ch.clone())
        .list_models(req)
        .await
        .expect_err("refused");
    assert_eq!(st.code(), Code::Unauthenticated);
    assert!(st.message().contains("must be `Bearer <token>`"), "{st:?}");

    for token in ["alpha", "beta"] {
        let out = detect_golden(ch.clone(), Some(token)).await;
        assert!(out.status.is_none(), "{token}: {:?}", out.status);
        assert_eq!(tuples(&out.events), golden_offline());
        list_models(ch.clone(), Some(token)).await.expect("allowed");
    }
    // Probes and tooling need no token.
    assert_eq!(health_status(ch.clone()).await.unwrap(), 1);
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(ch.clone());
    let mut answers = refl
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            assert!(
                l.service.iter().any(|s| s.name == "kws.v1.KeywordSpotting"),
                "{l:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Poll until `token` is accepted (or refused, when `accepted` is false).
async fn wait_until(ch: &Channel, token: &str, accepted: bool, within: Duration) {
    let t0 = Instant::now();
    loop {
        if list_models(ch.clone(), Some(token)).await.is_ok() == accepted {
            return;
        }
        assert!(t0.elapsed() < within, "{token}: still accepted = {}", !accepted);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reload_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(token_config(dir.path(), "alpha\n", 100)).await;
    let ch = server.channel().await;
    list_models(ch.clone(), Some("alpha")).await.expect("alpha");
    // Replace the file the way a k8s secret update does: a new file renamed over the old one.
    write(dir.path(), "tokens.new", "gamma\n");
    std::fs::rename(dir.path().join("tokens.new"), dir.path().join("tokens")).unwrap();
    wait_until(&ch, "gamma", true, Duration::from_secs(5)).await;
    wait_until(&ch, "alpha", false, Duration::from_secs(1)).await;
    // A file that disappears keeps the last good tokens.
    std::fs::remove_file(dir.path().join("tokens")).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    list_models(ch.clone(), Some("gamma"))
        .await
        .expect("kept after a failed reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    // No polling: only SIGHUP reloads.
    let server = TestServer::start(token_config(dir.path(), "alpha\n", 0)).await;
    let ch = server.channel().await;
    list_models(ch.clone(), Some("alpha")).await.expect("alpha");
    write(dir.path(), "tokens", "delta\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    list_models(ch.clone(), Some("alpha"))
        .await
        .expect("not reloaded without SIGHUP");
    // The shell's builtin `kill` (no procps needed).
    let st = std::process::Command::new("sh")
        .args(["-c", "kill -HUP \"$0\"", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until(&ch, "delta", true, Duration::from_secs(5)).await;
    wait_until(&ch, "alpha", false, Duration::from_secs(1)).await;
}

#[test]
fn unreadable_certificates_or_tokens_exit_64() {
    let bin = env!("CARGO_BIN_EXE_kws-service");
    for (args, want) in [
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            "cannot read tls.cert /nonexistent/cert.pem",
        ),
        (
            vec!["--tokens-file", "/nonexistent/tokens"],
            "cannot read auth.tokens_file /nonexistent/tokens",
        ),
        (
            vec!["--tls-cert", "/etc/hostname"],
            "tls.cert and tls.key must be set together",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .arg("--check")
            .args(&args)
            .env_remove("KWS_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
