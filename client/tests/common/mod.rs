//! Test harness: a real kws-service on 127.0.0.1:0 (in this process) with the shipped tc-resnet8 model
//! and ONNX Runtime, and a way to run the `kws-client` binary against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use kws_service::config::Config;
use kws_service::registry::Registry;
use tokio::sync::oneshot;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$KWS_ORT_LIB`, else the library fetched by `deploy/fetch-onnxruntime.sh`.
pub fn ort_lib() -> PathBuf {
    std::env::var_os("KWS_ORT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo()
                .join(".ort")
                .join(std::env::consts::ARCH)
                .join("libonnxruntime.so")
        })
}

pub fn model_dir() -> PathBuf {
    repo().join("models").join("tc-resnet8")
}

pub fn golden(name: &str) -> PathBuf {
    model_dir().join("golden").join(name)
}

pub fn golden_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(golden("golden.json")).unwrap()).unwrap()
}

/// The int8 model's events on the golden stream as the server emits them by default: the cascade's
/// (`stream.cascade.events_int8`, written by `kws_train.verifier_golden shipped`) when the shipped
/// manifest has a verifier, else the first stage's.
pub fn golden_default_events() -> Vec<serde_json::Value> {
    let g = golden_json();
    let events = match g["stream"].get("cascade") {
        Some(c) => &c["events_int8"],
        None => &g["stream"]["events_int8"],
    };
    events.as_array().unwrap().clone()
}

pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = ([127, 0, 0, 1], 0).into();
    c.server.metrics_listen = ([127, 0, 0, 1], 0).into();
    c.models.dir = repo().join("models");
    c.models.serve = vec!["tc-resnet8:int8".into(), "tc-resnet8:fp32".into()];
    c.models.default = "tc-resnet8:int8".into();
    c.models.ort_library = Some(ort_lib());
    c.batcher.workers = 1;
    c.server.drain_grace_ms = 1_000;
    // The server runs in the test process, so the CPU it measures includes the client's (files sent
    // faster than real time): shedding by CPU would measure the test, not the server.
    c.server.shed_cpu_utilisation = 0.0;
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let (registry, _workers) = Registry::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind(config.server.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        tokio::spawn(kws_service::server::serve(config, registry, listener, async {
            let _ = rx.await;
        }));
        Self { addr, _stop: stop }
    }
}

/// An address where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Run `kws-client ARGS` (off the async runtime), optionally with `stdin` bytes.
pub async fn kws_client(args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_kws-client"))
            .args(&args)
            .env_remove("KWS_TOKEN")
            .env_remove("KWS_ADDR")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(bytes) = stdin {
            let mut s = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = s.write_all(&bytes);
            });
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

pub fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// JSON lines of a `detect --json` run.
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Write `samples` (interleaved) as a WAV.
pub fn write_wav_i16(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

pub fn read_wav_i16(path: &Path) -> Vec<i16> {
    hound::WavReader::open(path)
        .unwrap()
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect()
}
