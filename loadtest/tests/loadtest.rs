//! CI-sized load tests against a real in-process server (127.0.0.1:0, shipped model, ONNX Runtime):
//! a few streams for a few seconds must lose no event; rejections are counted; the binary writes its
//! JSON report and capacity plot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kws_client::ConnectOptions;
use kws_loadtest::{Live, LoadConfig, RunReport, ServerProbe, StepConfig, StepReport};
use kws_service::config::Config;
use kws_service::registry::Registry;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stream_wav() -> PathBuf {
    repo().join("models/tc-resnet8/golden/stream.wav")
}

/// Start a server; the returned sender stops it when dropped.
async fn server(max_streams: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut c = Config::default();
    c.server.listen = ([127, 0, 0, 1], 0).into();
    c.server.metrics_listen = ([127, 0, 0, 1], 0).into();
    c.server.max_streams = max_streams;
    c.server.drain_grace_ms = 1_000;
    // In-process server: the CPU it measures includes the load generator's (calibration sends
    // unpaced), so shedding by CPU would measure the test, not the server.
    c.server.shed_cpu_utilisation = 0.0;
    c.models.dir = repo().join("models");
    c.models.serve = vec!["tc-resnet8:int8".into()];
    c.models.default = "tc-resnet8:int8".into();
    c.models.ort_library = Some(
        std::env::var_os("KWS_ORT_LIB")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                repo()
                    .join(".ort")
                    .join(std::env::consts::ARCH)
                    .join("libonnxruntime.so")
            }),
    );
    c.batcher.workers = 1;
    let (registry, _workers) = Registry::load(&c).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind(c.server.listen).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kws_service::server::serve(c, registry, listener, async {
        let _ = rx.await;
    }));
    (addr, stop)
}

fn config(addr: &str, streams: usize, duration_ms: u64, ramp_up_ms: u64, rates: Vec<u32>) -> LoadConfig {
    LoadConfig {
        conn: ConnectOptions::plaintext(addr),
        wavs: vec![stream_wav()],
        rates: rates.clone(),
        step: StepConfig {
            streams,
            duration_ms,
            ramp_up_ms,
            chunk_ms: 20,
            rates,
            wavs: 1,
            model: String::new(),
            first_stage_only: false,
            match_tolerance_ms: 0,
            streams_per_connection: 1,
            budget_ms: 10_000.0, // CI machines are busy: the verdict here is about losses, not speed
        },
        // The server runs in this process: /proc/<own pid> is its CPU and RSS.
        probe: ServerProbe::Pid(std::process::id()),
        capacity: None,
    }
}

async fn run(cfg: LoadConfig) -> RunReport {
    let hook = |live: Arc<Live>, _n: usize| {
        tokio::spawn(async move {
            while Arc::strong_count(&live) > 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut steps = 0;
    let r = kws_loadtest::run(cfg, &hook, &mut |_: &StepReport| steps += 1)
        .await
        .unwrap();
    assert_eq!(steps, r.steps.len());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_real_time_streams_lose_no_event() {
    let (addr, _stop) = server(16).await;
    let r = run(config(&addr, 4, 3_000, 500, vec![16_000, 48_000])).await;
    // The cascade (TC-ResNet8 2.6.0) finds "yes" and "stop" in the golden stream's first 3 s, at
    // both rates.
    assert_eq!(r.expected_per_stream, vec![2, 2]);
    let s = &r.steps[0];
    assert!(s.pass, "{:?}", s.fail_reasons);
    assert_eq!((s.streams, s.rejected), (4, 0));
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.expected_events, 8);
    assert_eq!((s.received_events, s.lost_events, s.unexpected_events), (8, 0, 0));
    assert_eq!(s.audio_s_sent, 12.0);
    assert_eq!(s.audio_s_processed, 12.0);
    assert!(s.kept_real_time);
    let l = s.latency_ms.as_ref().expect("latencies");
    assert_eq!(l.count, 8);
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    // Real-time pacing: 3 s of audio per stream cannot take less than 3 s.
    assert!(s.wall_s >= 3.0, "{}", s.wall_s);
    let u = s.server.as_ref().expect("server usage from /proc");
    assert!(u.cpu_seconds > 0.0 && u.rss_bytes_peak > 0.0, "{u:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_stage_only_streams_get_the_first_stages_events() {
    let (addr, _stop) = server(16).await;
    let mut cfg = config(&addr, 2, 3_000, 500, vec![16_000]);
    cfg.step.first_stage_only = true;
    let r = run(cfg).await;
    // The first stage alone, at its own per-keyword thresholds (2.2.0 = 2.5.0, 300-ms smoothing), finds the
    // golden stream's "yes" and "stop" in its first 3 s, as the cascade does.
    assert!(r.first_stage_only);
    assert_eq!(r.expected_per_stream, vec![2]);
    let s = &r.steps[0];
    assert!(s.pass, "{:?}", s.fail_reasons);
    assert_eq!((s.expected_events, s.received_events, s.lost_events), (4, 4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_streams_are_counted_and_fail_the_step() {
    let (addr, _stop) = server(2).await;
    let r = run(config(&addr, 4, 3_000, 0, vec![16_000])).await;
    let s = &r.steps[0];
    assert_eq!(s.rejected, 2, "{s:?}");
    assert!(!s.pass);
    assert!(
        s.fail_reasons.iter().any(|f| f.contains("2 streams rejected")),
        "{:?}",
        s.fail_reasons
    );
    // The admitted streams still deliver everything (two events each).
    assert_eq!(s.lost_events, 0);
    assert_eq!(s.received_events, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_run_writes_report_and_plot() {
    let (addr, _stop) = server(16).await;
    let dir = tempfile::tempdir().unwrap();
    let (json, png) = (dir.path().join("report.json"), dir.path().join("capacity.png"));
    let pid = std::process::id().to_string();
    let args: Vec<String> = [
        "--addr",
        &addr,
        "--wav",
        &stream_wav().display().to_string(),
        "--find-capacity",
        "--start-streams",
        "2",
        "--max-streams",
        "4",
        "--duration-s",
        "3",
        "--ramp-up-s",
        "0.2",
        "--pause-s",
        "0.2",
        "--budget-ms",
        "10000",
        "--server-pid",
        &pid,
        "--json",
        &json.display().to_string(),
        "--plot",
        &png.display().to_string(),
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kws-loadtest"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("capacity: 4 concurrent real-time streams"),
        "{stdout}"
    );
    let r: RunReport = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r.capacity, Some(4));
    assert_eq!(r.steps.iter().map(|s| s.streams).collect::<Vec<_>>(), vec![2, 4]);
    assert!(r.steps.iter().all(|s| s.lost_events == 0 && s.server.is_some()));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}
