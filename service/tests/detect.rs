//! Detect over real gRPC (127.0.0.1:0) with the shipped tc-resnet8 model and ONNX Runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kws_models::{Encoding, PcmFormat};
use kws_proto::v1::{self, AudioEncoding};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Events as comparable tuples.
fn tuples(events: &[v1::KeywordEvent]) -> Vec<(String, u64, u64, f32)> {
    events
        .iter()
        .map(|e| (e.keyword.clone(), e.start_ms, e.end_ms, e.score))
        .collect()
}

fn stream_pcm() -> Vec<i16> {
    wav_i16(&golden_dir().join("stream.wav"))
}

async fn detect_chunks(
    server: &TestServer,
    mut cfg: v1::StreamConfig,
    model: &str,
    chunks: Vec<Vec<u8>>,
) -> Outcome {
    cfg.model = model.into();
    let mut reqs = vec![req_config(cfg)];
    reqs.extend(chunks.into_iter().map(req_audio));
    run_stream(&mut server.client().await, reqs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_stream_at_16k_in_random_chunks_equals_offline() {
    let server = TestServer::start(test_config()).await;
    let pcm = s16_bytes(&stream_pcm());
    for variant in ["int8", "fp32"] {
        let want = offline_events(variant, native(), &pcm);
        assert!(!want.is_empty(), "the golden stream has keywords");
        for seed in 0..3 {
            let chunks = random_chunks(&pcm, 2, seed, 4000);
            let cfg = config(AudioEncoding::PcmS16le, 16_000, 1);
            let out = detect_chunks(&server, cfg, &format!("tc-resnet8:{variant}"), chunks).await;
            assert!(out.status.is_none(), "{:?}", out.status);
            assert_eq!(tuples(&out.events), want, "{variant} seed {seed}");
            let s = out.summary.expect("summary");
            assert_eq!(s.audio_ms_received, 5500);
            assert_eq!(s.audio_ms_processed, s.audio_ms_received);
            assert_eq!(s.events, want.len() as u64);
            assert_eq!(out.ready.expect("ready").model.expect("model").variant, variant);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_clips_at_16k_equal_offline() {
    let server = TestServer::start(test_config()).await;
    let mut clips: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    clips.sort();
    for clip in clips {
        let samples = wav_i16(&clip);
        let pcm = s16_bytes(&samples);
        let want = offline_events("int8", native(), &pcm);
        let cfg = config(AudioEncoding::PcmS16le, 16_000, 1);
        let out = detect_chunks(&server, cfg, "", random_chunks(&pcm, 2, 7, 800)).await;
        assert_eq!(tuples(&out.events), want, "{}", clip.display());
        assert_eq!(
            out.summary.expect("summary").audio_ms_processed,
            samples.len() as u64 / 16
        );
    }
}

/// 48 kHz s16 stereo through the server vs the 16 kHz offline result: the same keywords, window times
/// within ±40 ms (two hops: resampling shifts scores slightly, which can move a threshold crossing by
/// a window), scores within 0.15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_stream_at_48k_stereo_matches_offline_within_tolerance() {
    let server = TestServer::start(test_config()).await;
    let pcm16 = stream_pcm();
    let want = offline_events("int8", native(), &s16_bytes(&pcm16));
    let pcm48 = s16_bytes(&upsample_s16(&pcm16, 48_000, 2));
    let cfg = config(AudioEncoding::PcmS16le, 48_000, 2);
    let out = detect_chunks(&server, cfg, "", random_chunks(&pcm48, 4, 11, 9600)).await;
    let got = tuples(&out.events);
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert!(g.2.abs_diff(w.2) <= 40, "{g:?} vs {w:?}");
        assert!((g.3 - w.3).abs() <= 0.15, "{g:?} vs {w:?}");
    }
    let s = out.summary.expect("summary");
    assert_eq!(s.audio_ms_processed, s.audio_ms_received);
    // Offline at 48 kHz stereo too: the server must equal the library exactly.
    let fmt = PcmFormat::new(Encoding::S16Le, 48_000, 2).unwrap();
    assert_eq!(got, offline_events("int8", fmt, &pcm48));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_equal_sequential_runs() {
    let mut cfg = test_config();
    cfg.batcher.workers = 2;
    let server = TestServer::start(cfg).await;
    let pcm = s16_bytes(&stream_pcm());
    let n = 64;
    let chunkings: Vec<Vec<Vec<u8>>> = (0..n).map(|i| random_chunks(&pcm, 2, 100 + i, 1600)).collect();
    let mut sequential = Vec::new();
    for chunks in &chunkings {
        let out = detect_chunks(
            &server,
            config(AudioEncoding::PcmS16le, 16_000, 1),
            "",
            chunks.clone(),
        )
        .await;
        sequential.push(tuples(&out.events));
    }
    let mut tasks = Vec::new();
    for chunks in chunkings {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut reqs = vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))];
            reqs.extend(chunks.into_iter().map(req_audio));
            tuples(&run_stream(&mut client, reqs).await.events)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), sequential[i], "stream {i}");
    }
    assert!(sequential.iter().all(|e| !e.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_limit_refuses_at_once_with_retry_hint() {
    let mut cfg = test_config();
    cfg.server.max_streams = 2;
    let server = TestServer::start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(req_config(config(AudioEncoding::PcmS16le, 16_000, 1)))
            .await
            .unwrap();
        let mut client = server.client().await;
        let resp = client.detect(ReceiverStream::new(rx)).await.expect("admitted");
        let mut inbound = resp.into_inner();
        assert!(inbound.message().await.unwrap().is_some(), "ready");
        held.push((tx, inbound));
    }
    let t0 = std::time::Instant::now();
    let out = run_stream(
        &mut server.client().await,
        vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))],
    )
    .await;
    let status = out.status.expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("2 concurrent streams"),
        "{}",
        status.message()
    );
    assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
    assert!(t0.elapsed() < Duration::from_secs(2), "refused at once");
    // A slot frees up when a stream ends.
    let (tx, mut inbound) = held.pop().unwrap();
    drop(tx);
    while inbound.message().await.unwrap().is_some() {}
    let out = run_stream(
        &mut server.client().await,
        vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))],
    )
    .await;
    assert!(out.status.is_none(), "{:?}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_are_invalid_argument_with_a_reason() {
    let server = TestServer::start(test_config()).await;
    let base = || config(AudioEncoding::PcmS16le, 16_000, 1);
    let cases: Vec<(v1::StreamConfig, &str)> = vec![
        (
            v1::StreamConfig {
                encoding: 0,
                ..base()
            },
            "encoding 0 is not supported",
        ),
        (
            v1::StreamConfig {
                encoding: 7,
                ..base()
            },
            "encoding 7 is not supported",
        ),
        (
            v1::StreamConfig {
                sample_rate_hz: 7_999,
                ..base()
            },
            "8000..=192000",
        ),
        (
            v1::StreamConfig {
                channels: 9,
                ..base()
            },
            "1..=8",
        ),
        (
            v1::StreamConfig {
                keywords: vec!["hello".into()],
                ..base()
            },
            "unknown keyword \"hello\"",
        ),
        (
            v1::StreamConfig {
                thresholds: [("yes".to_string(), 1.5)].into(),
                ..base()
            },
            "outside [0, 1]",
        ),
        (
            v1::StreamConfig {
                model: "nope".into(),
                ..base()
            },
            "unknown model",
        ),
        (v1::StreamConfig { hop_ms: 15, ..base() }, "multiple of 10"),
    ];
    for (cfg, want) in cases {
        let out = run_stream(&mut server.client().await, vec![req_config(cfg)]).await;
        let s = out.status.expect("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{want}: {s:?}");
        assert!(s.message().contains(want), "{want:?} not in {:?}", s.message());
    }
    let out = run_stream(&mut server.client().await, vec![req_audio(vec![0, 0])]).await;
    let s = out.status.expect("refused");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("audio before config"), "{}", s.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_info_and_list() {
    let server = TestServer::start(test_config()).await;
    let mut c = server.client().await;
    let list = c
        .list_models(v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.default_model, "tc-resnet8:int8");
    assert_eq!(list.models.len(), 2);
    let info = c
        .get_model_info(v1::GetModelInfoRequest { model: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(info.is_default);
    assert_eq!(
        (info.variant.as_str(), info.classes.len(), info.keywords.len()),
        ("int8", 12, 10)
    );
    assert_eq!(info.params, 65_180);
    assert_eq!(info.frontend.unwrap().num_mfcc, 40);
    // The shipped default's verdict is the least of three shifted views (manifest
    // `verifier.view_shifts`); GetModelInfo reports what the manifest says.
    let shipped = kws_models::Manifest::load(repo().join("models/tc-resnet8")).unwrap();
    let shifts = shipped.verifier.as_ref().expect("verifier").view_shifts;
    let v = info.verifier.as_ref().expect("ModelInfo.verifier");
    assert_eq!(v.view_shifts as usize, shifts);
    assert!(v.view_shifts > 0, "the shipped default uses shifted views");
    assert_eq!(v.embeddings_per_view, 9);
    // The runtime block says which CPU and int8 kernels this server scores with.
    let cpu = kws_models::cpu::detect();
    let rt = info.runtime.expect("ModelInfo.runtime");
    assert_eq!(rt.cpu_arch, std::env::consts::ARCH);
    assert_eq!(rt.int8_kernels, cpu.int8_kernels.as_str());
    assert_eq!(rt.cpu_features, cpu.features_string());
    let e = c
        .get_model_info(v1::GetModelInfoRequest { model: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

async fn health(server: &TestServer) -> i32 {
    let mut h = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_streams_finish_then_closes_the_rest() {
    let mut cfg = test_config();
    cfg.server.drain_grace_ms = 1_500;
    let server = TestServer::start(cfg).await;
    assert_eq!(
        health(&server).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let pcm = s16_bytes(&stream_pcm());

    // Stream A: finishes within the grace period. Stream B: never half-closes.
    let open = |server: &TestServer| {
        let server_addr = server.addr;
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tx.send(req_config(config(AudioEncoding::PcmS16le, 16_000, 1)))
                .await
                .unwrap();
            let ch = tonic::transport::Channel::from_shared(format!("http://{server_addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = kws_proto::v1::keyword_spotting_client::KeywordSpottingClient::new(ch);
            let inbound = client.detect(ReceiverStream::new(rx)).await.unwrap().into_inner();
            (tx, inbound)
        }
    };
    let (tx_a, mut in_a) = open(&server).await;
    let (tx_b, mut in_b) = open(&server).await;
    for c in pcm.chunks(3200).take(20) {
        tx_a.send(req_audio(c.to_vec())).await.unwrap();
        tx_b.send(req_audio(c.to_vec())).await.unwrap();
    }
    let addr = server.addr;
    let join = server.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: health says NOT_SERVING, new streams are UNAVAILABLE.
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let st = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        st,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let mut c = kws_proto::v1::keyword_spotting_client::KeywordSpottingClient::new(ch);
    let refused = run_stream(
        &mut c,
        vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))],
    )
    .await;
    assert_eq!(refused.status.expect("refused").code(), Code::Unavailable);

    // A half-closes during the grace period: summary, then OK.
    for c in pcm.chunks(3200).skip(20) {
        tx_a.send(req_audio(c.to_vec())).await.unwrap();
    }
    drop(tx_a);
    let mut summary_a = None;
    loop {
        match in_a.message().await {
            Ok(Some(m)) => {
                if let Some(v1::detect_response::Response::Summary(s)) = m.response {
                    summary_a = Some(s);
                }
            }
            Ok(None) => break,
            Err(s) => panic!("stream A ended with {s:?}"),
        }
    }
    let s = summary_a.expect("summary A");
    assert_eq!((s.audio_ms_received, s.audio_ms_processed), (5500, 5500));

    // B is closed by the server after the grace period: summary of what it sent, then UNAVAILABLE.
    let mut summary_b = None;
    let status_b = loop {
        match in_b.message().await {
            Ok(Some(m)) => {
                if let Some(v1::detect_response::Response::Summary(s)) = m.response {
                    summary_b = Some(s);
                }
            }
            Ok(None) => panic!("B must end with UNAVAILABLE"),
            Err(s) => break s,
        }
    };
    assert_eq!(status_b.code(), Code::Unavailable);
    let s = summary_b.expect("summary B");
    assert_eq!((s.audio_ms_received, s.audio_ms_processed), (2000, 2000));
    drop(tx_b);
    tokio::time::timeout(Duration::from_secs(15), join)
        .await
        .expect("server exits")
        .unwrap()
        .unwrap();
}
