//! Overload policy over real gRPC: a fixed admission limit (sized below the CPU capacity) refuses the
//! excess at once with RESOURCE_EXHAUSTED and a retry hint while admitted streams stay correct; load
//! shedding refuses new streams while the scoring queue already waits too long; the per-connection
//! stream limit makes the excess wait on that connection; shedding by measured CPU refuses a stream
//! that would not fit in the pod's CPU limit. Deterministic: no timing assertions beyond
//! "refused at once" and generous bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use kws_proto::v1::{self, AudioEncoding, detect_response};
use tonic::Code;

fn base() -> v1::StreamConfig {
    config(AudioEncoding::PcmS16le, 16_000, 1)
}

/// Open a stream and wait for its first answer: Ok(stream) after Ready, or the refusal.
async fn admit(server: &TestServer, cfg: v1::StreamConfig) -> Result<OpenStream, tonic::Status> {
    let mut s = OpenStream::open(server, Some(req_config(cfg))).await?;
    match s.next().await {
        Ok(Some(v1::DetectResponse {
            response: Some(detect_response::Response::Ready(_)),
        })) => Ok(s),
        Ok(other) => panic!("expected Ready, got {other:?}"),
        Err(st) => Err(st),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_streams_are_refused_at_once_and_admitted_ones_stay_correct() {
    let mut c = test_config();
    c.server.max_streams = 3;
    let server = TestServer::start(c).await;
    let t0 = Instant::now();
    let attempts = futures_join_all((0..8).map(|_| {
        admit(
            &server,
            v1::StreamConfig {
                disable_progress: false,
                progress_interval_ms: 500,
                ..base()
            },
        )
    }))
    .await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a {
            Ok(s) => admitted.push(s),
            Err(st) => {
                assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
                assert!(
                    st.message()
                        .contains("server at capacity (3 concurrent streams); retry after 1000 ms"),
                    "{st:?}"
                );
                assert_eq!(st.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (3, 5));
    assert!(t0.elapsed() < Duration::from_secs(5), "refusals are immediate");

    // The admitted streams run at 4x real time and produce exactly the offline events, never behind.
    let pcm = s16_bytes(&golden_stream());
    let want = offline_events("int8", native(), &pcm);
    let mut tasks = Vec::new();
    for s in admitted {
        let pcm = pcm.clone();
        tasks.push(tokio::spawn(async move {
            for c in pcm.chunks(3200) {
                s.tx.send(req_audio(c.to_vec())).await.unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            s.drain().await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.status.is_none(), "{:?}", out.status);
        assert_eq!(tuples(&out.events), want);
        assert!(!out.progress.is_empty());
        assert!(out.progress.iter().all(|p| !p.behind), "{:?}", out.progress);
        let s = out.summary.unwrap();
        assert_eq!(s.audio_ms_processed, s.audio_ms_received);
    }
    // Retrying after the hint succeeds once slots are free.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..3 {
        admit(&server, base()).await.expect("admitted on retry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_are_shed_while_the_scoring_queue_waits_too_long() {
    let mut c = test_config();
    // Every batch waits ~300 ms for company: the queue wait is far above the 50-ms shedding limit.
    c.batcher.max_delay_us = 300_000;
    c.batcher.max_batch = 4096;
    c.server.shed_queue_wait_ms = 50;
    let server = TestServer::start(c).await;
    let pcm = s16_bytes(&golden_stream());
    let want = offline_events("int8", native(), &pcm);
    let load = admit(&server, base())
        .await
        .expect("first stream admitted: the queue is idle");
    for c in pcm.chunks(3200).take(30) {
        load.tx.send(req_audio(c.to_vec())).await.unwrap();
    }
    // Wait until a batch has run (the first window is due after 1 s of audio).
    let t0 = Instant::now();
    let st = loop {
        match admit(&server, base()).await {
            Err(st) => break st,
            Ok(_) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "never shed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message()
            .contains("server saturated: scoring of model tc-resnet8:int8 waits")
            && st
                .message()
                .contains("ms in queue (limit 50 ms); retry after 1000 ms"),
        "{st:?}"
    );
    assert_eq!(st.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
    // The admitted stream is unaffected.
    for c in pcm.chunks(3200).skip(30) {
        load.tx.send(req_audio(c.to_vec())).await.unwrap();
    }
    let out = load.drain().await;
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(tuples(&out.events), want);
    // Once no batch has run for a second, the wait reads as zero and streams are admitted again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    admit(&server, base())
        .await
        .expect("admitted after the load is gone");
}

/// A stream that sends the golden stream again and again, as fast as the server reads it, until
/// stopped; its events must equal the offline result for the audio it sent.
struct Load {
    sender: tokio::task::JoinHandle<usize>,
    reader: tokio::task::JoinHandle<Outcome>,
    early: Vec<v1::KeywordEvent>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Load {
    /// Admit the stream, start sending and return once its audio is being scored.
    async fn start(server: &TestServer) -> Self {
        let cfg = v1::StreamConfig {
            disable_progress: false,
            progress_interval_ms: 500,
            ..base()
        };
        let mut stream = admit(server, cfg).await.expect("the first stream is admitted");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (closed, _) = tokio::sync::mpsc::channel(1);
        let tx = std::mem::replace(&mut stream.tx, closed);
        let flag = stop.clone();
        let sender = tokio::spawn(async move {
            let one = s16_bytes(&golden_stream());
            let mut reps = 0;
            while reps < 40 && !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for c in one.chunks(3200) {
                    tx.send(req_audio(c.to_vec())).await.unwrap();
                }
                reps += 1;
            }
            reps // dropping `tx` half-closes the stream
        });
        let mut early = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(v1::DetectResponse {
                    response: Some(detect_response::Response::Progress(p)),
                })) if p.audio_ms_processed > 0 => break,
                Ok(Some(v1::DetectResponse {
                    response: Some(detect_response::Response::Event(e)),
                })) => early.push(e),
                Ok(Some(_)) => {}
                other => panic!("load stream ended early: {other:?}"),
            }
        }
        let reader = tokio::spawn(async move { stream.read_to_end().await });
        Self {
            sender,
            reader,
            early,
            stop,
        }
    }

    /// Stop sending, read to the end, check the events and the accounting.
    async fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reps = self.sender.await.unwrap();
        let out = self.reader.await.unwrap();
        assert!(out.status.is_none(), "{:?}", out.status);
        let one = s16_bytes(&golden_stream());
        let pcm: Vec<u8> = one.iter().copied().cycle().take(one.len() * reps).collect();
        let mut events = self.early;
        events.extend(out.events);
        assert_eq!(tuples(&events), offline_events("int8", native(), &pcm));
        let s = out.summary.unwrap();
        assert_eq!(s.audio_ms_processed, s.audio_ms_received);
        assert_eq!(s.audio_ms_received, 5_500 * reps as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_are_shed_when_the_measured_cpu_would_exceed_the_pods_limit() {
    // Only the CPU rule can fire: the queue-wait and runtime-lag limit is a minute.
    let cpu_config = |limit_cores: f64| {
        let mut c = test_config();
        c.server.shed_queue_wait_ms = 60_000;
        c.server.shed_cpu_utilisation = 0.8;
        c.server.cpu_limit_cores = limit_cores;
        c
    };
    // A pod allowed 0.008 cores: one stream scoring as fast as it can uses far more, so once the
    // process's CPU is measured the next stream cannot fit, on any machine.
    let server = TestServer::start(cpu_config(0.01)).await;
    let load = Load::start(&server).await;
    let t0 = Instant::now();
    let st = loop {
        match admit(&server, base()).await {
            Err(st) => break st,
            Ok(probe) => {
                drop(probe);
                assert!(t0.elapsed() < Duration::from_secs(20), "never shed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert!(
        st.message().starts_with("server at its CPU limit: ")
            && st.message().contains("scoring streams use")
            && st
                .message()
                .contains("cores allowed (0.01-core limit); retry after 1000 ms"),
        "{st:?}"
    );
    assert_eq!(st.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
    // The admitted stream is unaffected: every event, all audio processed.
    load.finish().await;
    // No stream scoring, nothing to charge: admitted again.
    admit(&server, base())
        .await
        .expect("admitted once the load is gone");

    // The control: the same load on a pod with room (4096 cores) never sheds, for two seconds of
    // measurements after scoring started.
    let server = TestServer::start(cpu_config(4096.0)).await;
    let load = Load::start(&server).await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let probe = admit(&server, base())
            .await
            .expect("admitted: the CPU limit is far away");
        drop(probe);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_per_connection_limit_wait_on_that_connection() {
    let mut c = test_config();
    c.server.max_streams_per_connection = 2;
    let server = TestServer::start(c).await;
    let mut client = server.client().await; // one connection
    let open = |client: &mut kws_proto::v1::keyword_spotting_client::KeywordSpottingClient<
        tonic::transport::Channel,
    >| {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = client.clone();
        let call = tokio::spawn(async move {
            let mut inbound = client
                .detect(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("opened")
                .into_inner();
            let first = inbound.message().await;
            (first, inbound)
        });
        (tx, call)
    };
    let (tx1, call1) = open(&mut client);
    let (tx2, call2) = open(&mut client);
    tx1.send(req_config(base())).await.unwrap();
    tx2.send(req_config(base())).await.unwrap();
    let (r1, in1) = call1.await.unwrap();
    let (r2, _in2) = call2.await.unwrap();
    assert!(
        matches!(r1, Ok(Some(_))) && matches!(r2, Ok(Some(_))),
        "two streams run"
    );
    let (tx3, mut call3) = open(&mut client);
    let _ = tx3.send(req_config(base())).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut call3)
            .await
            .is_err(),
        "the third stream on the connection waits"
    );
    // Another connection is not affected.
    admit(&server, base())
        .await
        .expect("another connection is admitted at once");
    // Ending one stream lets the waiting one start.
    drop(tx1);
    drop(in1);
    let (r3, _in3) = tokio::time::timeout(Duration::from_secs(10), call3)
        .await
        .expect("third stream started")
        .unwrap();
    assert!(matches!(r3, Ok(Some(_))), "{r3:?}");
}

/// `join_all` without the futures crate: poll the futures together, results in order.
async fn futures_join_all<F: std::future::Future>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_queue_limits_hold_large_chunks_back_and_lose_nothing() {
    use kws_service::batcher::WINDOW_BYTES;
    let mut c = test_config();
    // Four windows per stream, eight in the whole process: far below what the chunks below carry
    // (8 s = 400 windows each), so every stream waits on both limits again and again.
    c.server.max_inflight_windows = 4;
    c.batcher.max_batch = 4;
    c.server.max_queued_bytes = 8 * WINDOW_BYTES;
    let server = TestServer::start(c).await;
    let one = s16_bytes(&golden_stream());
    let pcm: Vec<u8> = one.iter().copied().cycle().take(one.len() * 6).collect();
    let want = offline_events("int8", native(), &pcm);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pcm = pcm.clone();
        let s = admit(&server, base()).await.expect("admitted");
        tasks.push(tokio::spawn(async move {
            for c in pcm.chunks(256 << 10) {
                s.tx.send(req_audio(c.to_vec())).await.unwrap();
            }
            s.drain().await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.status.is_none(), "{:?}", out.status);
        assert_eq!(tuples(&out.events), want);
        let s = out.summary.unwrap();
        assert_eq!(s.audio_ms_processed, s.audio_ms_received);
        assert_eq!(s.audio_ms_received, 33_000);
    }
}
