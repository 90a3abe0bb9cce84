//! The `kws-client` binary against a real server (127.0.0.1:0, shipped model, ONNX Runtime): events
//! and exit codes of `detect`, input and connection errors, `models`, `health`, the bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

/// (keyword, start_ms, end_ms) of the int8 model's default events on the golden stream.
fn golden_stream_events() -> Vec<(String, u64, u64)> {
    golden_default_events()
        .iter()
        .map(|e| {
            (
                e["keyword"].as_str().unwrap().to_string(),
                e["start_ms"].as_u64().unwrap(),
                e["end_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn events_of(lines: &[Value]) -> Vec<(String, u64, u64)> {
    lines
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|e| {
            (
                e["keyword"].as_str().unwrap().to_string(),
                e["start_ms"].as_u64().unwrap(),
                e["end_ms"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_golden_stream_prints_json_events_and_exits_0() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let wav = path_arg(&golden("stream.wav"));
    let out = kws_client(args(&["--addr", &addr, "detect", &wav, "--json"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["type"], "ready");
    assert_eq!(lines[0]["model"], "tc-resnet8:int8");
    let want = golden_stream_events();
    assert!(!want.is_empty());
    assert_eq!(events_of(&lines), want);
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["audio_ms_received"], 5500);
    assert_eq!(summary["audio_ms_processed"], 5500);
    assert_eq!(summary["events"], want.len() as u64);
    for e in lines.iter().filter(|l| l["type"] == "event") {
        assert!(
            e["event_id"]
                .as_str()
                .unwrap()
                .starts_with(lines[0]["stream_id"].as_str().unwrap())
        );
        let s = e["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
    }

    // Human-readable output carries the same events.
    let out = kws_client(args(&["--addr", &addr, "detect", &wav]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    for (k, _, end) in &want {
        let t = format!("{:.2} s  {k}", *end as f64 / 1000.0);
        assert!(text.contains(&t), "{t:?} not in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_exits_1_and_other_encodings_give_the_same_events() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();

    let silent = dir.path().join("silent.wav");
    write_wav_i16(&silent, 16_000, 1, &vec![0; 32_000]);
    let out = kws_client(
        args(&["--addr", &addr, "detect", &path_arg(&silent), "--json"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(events_of(&json_lines(&out)).is_empty());

    let want = golden_stream_events();
    let samples = read_wav_i16(&golden("stream.wav"));
    // Raw s16le on stdin, in odd-sized chunks.
    let raw: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let out = kws_client(
        args(&[
            "--addr",
            &addr,
            "detect",
            "-",
            "--rate",
            "16000",
            "--chunk-ms",
            "37",
            "--json",
        ]),
        Some(raw),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(events_of(&json_lines(&out)), want);

    // A 24-bit WAV goes out as f32le: the same samples exactly, so the same events.
    let wav24 = dir.path().join("stream24.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav24, spec).unwrap();
    for &s in &samples {
        w.write_sample(i32::from(s) << 8).unwrap();
    }
    w.finalize().unwrap();
    let out = kws_client(
        args(&["--addr", &addr, "detect", &path_arg(&wav24), "--json"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(events_of(&json_lines(&out)), want);

    // Stdin ending inside a frame is an input error.
    let out = kws_client(
        args(&["--addr", &addr, "detect", "-", "--rate", "16000"]),
        Some(vec![0u8; 3201]),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("inside a frame"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_pacing_is_not_faster_than_the_audio() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let wav = path_arg(&golden("00-yes.wav"));
    let t0 = std::time::Instant::now();
    let out = kws_client(
        args(&[
            "--addr",
            &addr,
            "detect",
            &wav,
            "--realtime",
            "--chunk-ms",
            "100",
            "--json",
        ]),
        None,
    )
    .await;
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "stderr: {}",
        stderr(&out)
    );
    // 1 s of audio in 100 ms chunks, each sent when its last sample would have been captured.
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_errors_exit_2_with_a_reason() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.wav");
    let out = kws_client(args(&["--addr", &addr, "detect", &path_arg(&missing)]), None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("missing.wav"), "{}", stderr(&out));

    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "not a wav file at all").unwrap();
    let out = kws_client(args(&["--addr", &addr, "detect", &path_arg(&text)]), None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read WAV"), "{}", stderr(&out));

    let out = kws_client(args(&["--addr", &addr, "detect", "-"]), Some(vec![])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--rate"), "{}", stderr(&out));

    // The server refuses the config: INVALID_ARGUMENT is an input error too, with its message.
    let wav = path_arg(&golden("00-yes.wav"));
    let out = kws_client(
        args(&["--addr", &addr, "detect", &wav, "--keywords", "hello"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("InvalidArgument"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown keyword \"hello\""),
        "{}",
        stderr(&out)
    );

    // clap's own usage errors.
    let out = kws_client(args(&["detect"]), None).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_exits_3() {
    let dead = dead_addr().to_string();
    let wav = path_arg(&golden("00-yes.wav"));
    for cmd in [vec!["detect", wav.as_str()], vec!["models"], vec!["health"]] {
        let mut a = args(&["--addr", &dead, "--connect-timeout-ms", "2000"]);
        a.extend(args(&cmd));
        let out = kws_client(a, None).await;
        assert_eq!(out.status.code(), Some(3), "{cmd:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_health() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let out = kws_client(args(&["--addr", &addr, "models", "--json"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["default_model"], "tc-resnet8:int8");
    assert_eq!(v["models"].as_array().unwrap().len(), 2);
    assert_eq!(v["models"][0]["keywords"].as_array().unwrap().len(), 10);

    let out = kws_client(args(&["--addr", &addr, "models", "tc-resnet8:fp32"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("tc-resnet8:fp32"));
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/tc-resnet8/manifest.json")).unwrap(),
    )
    .unwrap();
    let yes = kws_client::eval::fmt_threshold(manifest["thresholds"]["yes"].as_f64().unwrap());
    assert!(stdout(&out).contains(&format!("yes={yes}")), "{}", stdout(&out));
    // The cascade line names the shipped verdict's views (manifest `verifier.view_shifts`).
    let shifts = manifest["verifier"]["view_shifts"].as_u64().unwrap_or(0);
    let views = if shifts > 0 {
        format!(", the least of {} views 80 ms apart)", 2 * shifts + 1)
    } else {
        "(9 embeddings per view)".to_string()
    };
    assert!(stdout(&out).contains(&views), "{views:?} in {}", stdout(&out));

    let out = kws_client(args(&["--addr", &addr, "models", "nope"]), None).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "NOT_FOUND is the caller's mistake: {}",
        stderr(&out)
    );

    let out = kws_client(args(&["--addr", &addr, "health"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "SERVING");
    let out = kws_client(
        args(&["--addr", &addr, "health", "--service", "kws.v1.KeywordSpotting"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

/// The token reaches the server as `authorization: Bearer <token>` (a health server that checks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_from_flag_or_env() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let check =
        |req: tonic::Request<()>| match req.metadata().get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer s3cret") => Ok(req),
            _ => Err(tonic::Status::unauthenticated("missing or invalid bearer token")),
        };
    let svc = tonic::service::interceptor::InterceptedService::new(health, check);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let out = kws_client(args(&["--addr", &addr, "--token", "s3cret", "health"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let out = kws_client(args(&["--addr", &addr, "health"]), None).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("Unauthenticated"), "{}", stderr(&out));
    assert!(stderr(&out).contains("KWS_TOKEN"), "{}", stderr(&out));
    // From the environment.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kws-client"))
            .args(["--addr", &addr, "health"])
            .env("KWS_TOKEN", "s3cret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}
