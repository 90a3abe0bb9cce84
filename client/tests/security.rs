//! `kws-client` against a real server with TLS, mutual TLS and bearer tokens. Certificates are
//! generated at test time (rcgen); no key is committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// Writes `NAME.pem` and `NAME.key` for a leaf signed by `issuer`.
fn leaf(dir: &Path, name: &str, issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) {
    let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = ca("kws test CA");
    std::fs::write(d.join("ca.pem"), ca1.pem()).unwrap();
    leaf(d, "server", &ca1, &["localhost"]);
    leaf(d, "client", &ca1, &["client-a"]);
    std::fs::write(d.join("tokens"), "# accepted tokens\ns3cret\n").unwrap();

    let mut c = test_config();
    c.tls.cert = Some(d.join("server.pem"));
    c.tls.key = Some(d.join("server.key"));
    c.tls.client_ca = Some(d.join("ca.pem"));
    c.auth.tokens_file = Some(d.join("tokens"));
    let server = TestServer::start_with(c).await;
    let addr = server.addr.to_string();
    let p = |n: &str| path_arg(&d.join(n));
    let tls = [
        "--addr",
        &addr,
        "--ca-cert",
        &p("ca.pem"),
        "--client-cert",
        &p("client.pem"),
        "--client-key",
        &p("client.key"),
        "--tls-domain",
        "localhost",
    ];
    let wav = path_arg(&golden("stream.wav"));
    let with = |extra: &[&str]| {
        let mut a = args(&tls);
        a.extend(args(extra));
        a
    };

    let out = kws_client(with(&["--token", "s3cret", "detect", &wav, "--json"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let events = json_lines(&out).iter().filter(|l| l["type"] == "event").count();
    assert_eq!(events, golden_default_events().len());

    // Wrong token: UNAUTHENTICATED, an RPC error.
    let out = kws_client(with(&["--token", "nope", "detect", &wav]), None).await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("Unauthenticated"), "{}", stderr(&out));

    // No client certificate: the handshake (or the first call) fails.
    let out = kws_client(
        args(&[
            "--addr",
            &addr,
            "--ca-cert",
            &p("ca.pem"),
            "--tls-domain",
            "localhost",
            "--token",
            "s3cret",
            "detect",
            &wav,
        ]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));

    // Plaintext to a TLS server.
    let out = kws_client(
        args(&[
            "--addr",
            &addr,
            "--token",
            "s3cret",
            "--connect-timeout-ms",
            "2000",
            "models",
        ]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));

    // A CA file that does not exist is reported by name.
    let out = kws_client(
        args(&["--addr", &addr, "--ca-cert", "/nonexistent/ca.pem", "models"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/ca.pem"), "{}", stderr(&out));
}
