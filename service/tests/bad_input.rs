//! Every kind of broken client, over real gRPC (127.0.0.1:0, shipped model, ONNX Runtime), while
//! healthy streams run beside it: each bad stream must end with the documented status and a message
//! that says what to fix, and the healthy streams must still produce exactly the offline events with
//! audio in == audio processed. The table of cases is `service/RELIABILITY.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use kws_proto::v1::{self, AudioEncoding, detect_request};
use tonic::Code;

fn base() -> v1::StreamConfig {
    config(AudioEncoding::PcmS16le, 16_000, 1)
}

fn req_label(keyword: &str, start_ms: u64, end_ms: u64) -> v1::DetectRequest {
    v1::DetectRequest {
        request: Some(detect_request::Request::Label(v1::Label {
            keyword: keyword.into(),
            start_ms,
            end_ms,
        })),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Run `requests` as one stream and check it ends with `code` and a message containing `want`.
async fn expect_status(
    server: &TestServer,
    name: &str,
    requests: Vec<v1::DetectRequest>,
    code: Code,
    want: &str,
) -> Outcome {
    let out = run_stream(&mut server.client().await, requests).await;
    let s = out
        .status
        .clone()
        .unwrap_or_else(|| panic!("{name}: expected {code:?}, the stream ended OK"));
    assert_eq!(s.code(), code, "{name}: {s:?}");
    assert!(
        s.message().contains(want),
        "{name}: {want:?} not in {:?}",
        s.message()
    );
    out
}

const MAX_CHUNK: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_while_healthy_streams_run() {
    let server = TestServer::start(test_config()).await;
    let healthy = Healthy::start(&server, 3, 3, Duration::from_millis(15)).await;
    let cfg = |c: v1::StreamConfig| vec![req_config(c)];
    let known = "the model's keywords are yes, no, up, down, left, right, on, off, stop, go";
    let unknown_kw = format!("unknown keyword \"hello\" in keywords: {known}");
    let cases: Vec<(&str, Vec<v1::DetectRequest>, &str)> = vec![
        (
            "first message empty",
            vec![v1::DetectRequest { request: None }],
            "no config: the first message must be a DetectRequest with `config` set",
        ),
        (
            "half-close before any message",
            vec![],
            "no config: the first message must be a DetectRequest with `config` set",
        ),
        (
            "audio before config",
            vec![req_audio(vec![0, 0])],
            "audio before config: the first message must be a StreamConfig",
        ),
        (
            "label before config",
            vec![req_label("yes", 0, 500)],
            "label before config",
        ),
        (
            "encoding unspecified",
            cfg(v1::StreamConfig {
                encoding: 0,
                ..base()
            }),
            "encoding 0 is not supported: use AUDIO_ENCODING_PCM_S16LE (1) or AUDIO_ENCODING_PCM_F32LE (2)",
        ),
        (
            "encoding unknown",
            cfg(v1::StreamConfig {
                encoding: 7,
                ..base()
            }),
            "encoding 7 is not supported",
        ),
        (
            "sample rate 0",
            cfg(v1::StreamConfig {
                sample_rate_hz: 0,
                ..base()
            }),
            "sample rate 0 Hz is not supported: use 8000..=192000 Hz",
        ),
        (
            "sample rate 7999",
            cfg(v1::StreamConfig {
                sample_rate_hz: 7_999,
                ..base()
            }),
            "sample rate 7999 Hz is not supported: use 8000..=192000 Hz",
        ),
        (
            "sample rate 192001",
            cfg(v1::StreamConfig {
                sample_rate_hz: 192_001,
                ..base()
            }),
            "sample rate 192001 Hz is not supported",
        ),
        (
            "sample rate absurd",
            cfg(v1::StreamConfig {
                sample_rate_hz: u32::MAX,
                ..base()
            }),
            "sample rate 4294967295 Hz is not supported",
        ),
        (
            "channels 0",
            cfg(v1::StreamConfig {
                channels: 0,
                ..base()
            }),
            "0 channels is not supported: use 1..=8 interleaved channels",
        ),
        (
            "channels 9",
            cfg(v1::StreamConfig {
                channels: 9,
                ..base()
            }),
            "9 channels is not supported",
        ),
        (
            "channels absurd",
            cfg(v1::StreamConfig {
                channels: 70_000,
                ..base()
            }),
            "70000 channels is not supported",
        ),
        (
            "unknown keyword in the subset",
            cfg(v1::StreamConfig {
                keywords: vec!["yes".into(), "hello".into()],
                ..base()
            }),
            &unknown_kw,
        ),
        (
            "keyword listed twice",
            cfg(v1::StreamConfig {
                keywords: vec!["yes".into(), "no".into(), "yes".into()],
                ..base()
            }),
            "keyword \"yes\" is listed twice in keywords: list each keyword at most once",
        ),
        (
            "10 000 keywords (the valid ten repeated)",
            cfg(v1::StreamConfig {
                keywords: known
                    .trim_start_matches("the model's keywords are ")
                    .split(", ")
                    .cycle()
                    .take(10_000)
                    .map(String::from)
                    .collect(),
                ..base()
            }),
            "10000 keywords listed, but the model has only 10: list each keyword at most once",
        ),
        (
            "unknown keyword in thresholds",
            cfg(v1::StreamConfig {
                thresholds: [("hello".to_string(), 0.5)].into(),
                ..base()
            }),
            "unknown keyword \"hello\" in thresholds",
        ),
        (
            "threshold above 1",
            cfg(v1::StreamConfig {
                thresholds: [("yes".to_string(), 1.5)].into(),
                ..base()
            }),
            "threshold 1.5 for \"yes\" is outside [0, 1]",
        ),
        (
            "threshold below 0",
            cfg(v1::StreamConfig {
                thresholds: [("go".to_string(), -0.1)].into(),
                ..base()
            }),
            "threshold -0.1 for \"go\" is outside [0, 1]",
        ),
        (
            "threshold NaN",
            cfg(v1::StreamConfig {
                thresholds: [("no".to_string(), f32::NAN)].into(),
                ..base()
            }),
            "threshold NaN for \"no\" is outside [0, 1]",
        ),
        (
            "unknown model",
            cfg(v1::StreamConfig {
                model: "nope".into(),
                ..base()
            }),
            "unknown model \"nope\"; served models: tc-resnet8:fp32, tc-resnet8:int8",
        ),
        (
            "hop not a multiple of 10",
            cfg(v1::StreamConfig { hop_ms: 15, ..base() }),
            "hop_ms 15 must be a multiple of 10 in 10..=980",
        ),
        (
            "smoothing too long",
            cfg(v1::StreamConfig {
                smoothing_ms: 5_000,
                ..base()
            }),
            "use 0..=1000 ms",
        ),
        (
            "refractory too long",
            cfg(v1::StreamConfig {
                refractory_ms: 20_000,
                ..base()
            }),
            "use 0..=10000 ms",
        ),
        (
            "client_stream_id too long",
            cfg(v1::StreamConfig {
                client_stream_id: "x".repeat(129),
                ..base()
            }),
            "client_stream_id is longer than 128 bytes",
        ),
    ];
    for (name, reqs, want) in cases {
        let out = expect_status(&server, name, reqs, Code::InvalidArgument, want).await;
        assert!(out.ready.is_none(), "{name}: refused before Ready");
    }
    healthy.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_label_errors_while_healthy_streams_run() {
    let mut c = test_config();
    c.server.max_chunk_bytes = MAX_CHUNK;
    let server = TestServer::start(c).await;
    let healthy = Healthy::start(&server, 3, 3, Duration::from_millis(15)).await;
    let one_s = s16_bytes(&golden_stream()[..16_000]);
    let with = |c: v1::StreamConfig, mut rest: Vec<v1::DetectRequest>| {
        let mut v = vec![req_config(c)];
        v.append(&mut rest);
        v
    };
    let f32cfg = || config(AudioEncoding::PcmF32le, 16_000, 1);
    let cases: Vec<(&str, Vec<v1::DetectRequest>, &str)> = vec![
        (
            "config twice",
            with(base(), vec![req_audio(one_s.clone()), req_config(base())]),
            "config sent twice: only the first message may be a config",
        ),
        (
            "empty DetectRequest after config",
            with(base(), vec![v1::DetectRequest { request: None }]),
            "empty DetectRequest: set config, audio or label",
        ),
        (
            "empty chunk",
            with(base(), vec![req_audio(vec![])]),
            "empty audio chunk: AudioChunk.data must hold at least one frame (2 bytes)",
        ),
        (
            "s16 odd length",
            with(base(), vec![req_audio(one_s.clone()), req_audio(vec![1, 2, 3])]),
            "chunk of 3 bytes is not a whole number of frames: s16le with 1 channel(s) needs a multiple of 2 bytes",
        ),
        (
            "s16 stereo partial frame",
            with(
                config(AudioEncoding::PcmS16le, 16_000, 2),
                vec![req_audio(vec![0; 6])],
            ),
            "needs a multiple of 4 bytes",
        ),
        (
            "f32 NaN",
            with(f32cfg(), vec![req_audio(f32_bytes(&[0.0, 0.5, f32::NAN]))]),
            "f32 sample NaN at frame 2, channel 0 is not finite or not normalized",
        ),
        (
            "f32 +Inf",
            with(f32cfg(), vec![req_audio(f32_bytes(&[f32::INFINITY]))]),
            "f32 sample inf at frame 0",
        ),
        (
            "f32 -Inf",
            with(f32cfg(), vec![req_audio(f32_bytes(&[0.1, f32::NEG_INFINITY]))]),
            "f32 sample -inf at frame 1",
        ),
        (
            "f32 integer-scaled",
            with(f32cfg(), vec![req_audio(f32_bytes(&[1000.0]))]),
            "(|x| <= 8; full scale is 1.0)",
        ),
        (
            "chunk just over max_chunk_bytes",
            with(base(), vec![req_audio(vec![0; MAX_CHUNK + 2])]),
            "chunk of 65538 bytes exceeds the maximum of 65536 bytes (ResolvedConfig.max_chunk_bytes): send smaller chunks",
        ),
        (
            "chunk far over the maximum message size",
            with(base(), vec![req_audio(vec![0; 4 * MAX_CHUNK])]),
            "the largest accepted AudioChunk.data is 65536 bytes (ResolvedConfig.max_chunk_bytes); send smaller chunks",
        ),
        (
            "first message over the maximum message size",
            vec![req_audio(vec![0; 4 * MAX_CHUNK])],
            "the largest accepted AudioChunk.data is 65536 bytes",
        ),
        (
            "label end before start",
            with(base(), vec![req_label("yes", 200, 100)]),
            "label end_ms 100 is before start_ms 200",
        ),
        (
            "label of an unknown keyword",
            with(base(), vec![req_label("hello", 0, 500)]),
            "label keyword \"hello\" is not one of yes, no",
        ),
        (
            "label longer than 10 s",
            with(
                base(),
                vec![req_label("yes", 0, 20_000), req_audio(one_s.clone())],
            ),
            "a keyword label must span at most 10000 ms",
        ),
        (
            "label beyond the audio",
            with(
                base(),
                vec![req_label("yes", 500, 3_000), req_audio(one_s.clone())],
            ),
            "label \"yes\" [500, 3000] ms ends after the audio, but the stream has 1000 ms of audio",
        ),
    ];
    for (name, reqs, want) in cases {
        expect_status(&server, name, reqs, Code::InvalidArgument, want).await;
    }
    // Bytes that are not a DetectRequest, in a well-formed gRPC frame: after a valid config, and first.
    let garbage = |m: &[u8]| {
        let mut f = vec![0u8];
        f.extend_from_slice(&(m.len() as u32).to_be_bytes());
        f.extend_from_slice(m);
        bytes::Bytes::from(f)
    };
    for (name, body) in [
        (
            "undecodable message after config",
            vec![
                grpc_frame(&req_config(base())),
                garbage(&[0x12, 0xff, 0xff, 0xff]),
            ],
        ),
        ("undecodable first message", vec![garbage(&[0x0a, 0x05, 0x01])]),
        (
            "truncated frame",
            vec![
                grpc_frame(&req_config(base())),
                bytes::Bytes::from_static(&[0, 0, 0, 1, 0, 7]),
            ],
        ),
    ] {
        let (code, msg) = raw_detect_status(server.addr, body).await;
        assert_eq!(code, "3", "{name}: INVALID_ARGUMENT, got {code} {msg:?}");
        assert!(
            msg.contains("bad message: cannot decode the DetectRequest"),
            "{name}: {msg:?}"
        );
    }
    // The positive control: a label within the audio is accepted and evaluated.
    let out = run_stream(
        &mut server.client().await,
        with(
            base(),
            vec![req_audio(one_s.clone()), req_label("yes", 100, 1_000)],
        ),
    )
    .await;
    assert!(out.status.is_none(), "{:?}", out.status);
    assert_eq!(
        out.summary
            .expect("summary")
            .evaluation
            .expect("evaluated")
            .labels,
        1
    );
    healthy.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_first_message_and_lifetime_limits() {
    let mut c = test_config();
    c.server.idle_timeout_ms = 800;
    c.server.first_message_timeout_ms = 800;
    c.server.max_stream_lifetime_ms = 3_000;
    let server = TestServer::start(c).await;
    let healthy = Healthy::start(&server, 2, 1, Duration::from_millis(10)).await;
    let one_s = s16_bytes(&golden_stream()[..16_000]);

    // Idle: 1 s of audio, then silence on the wire. The summary covers the audio, then DEADLINE_EXCEEDED.
    let idle = async {
        let mut s = OpenStream::open(&server, Some(req_config(base()))).await.unwrap();
        s.tx.send(req_audio(one_s.clone())).await.unwrap();
        let t0 = Instant::now();
        let out = s.read_to_end().await;
        (out, t0.elapsed())
    };
    // Never sends its config.
    let silent = async {
        let t0 = Instant::now();
        let r = OpenStream::open(&server, None).await;
        (r.err(), t0.elapsed())
    };
    // Keeps sending 100 ms every 200 ms (never idle) past the lifetime.
    let long = async {
        let mut s = OpenStream::open(&server, Some(req_config(base()))).await.unwrap();
        let tx = s.tx.clone();
        let chunk = one_s[..3_200].to_vec();
        let feeder = tokio::spawn(async move {
            for _ in 0..40 {
                if tx.send(req_audio(chunk.clone())).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let t0 = Instant::now();
        let out = s.read_to_end().await;
        feeder.abort();
        (out, t0.elapsed())
    };
    let ((idle, idle_t), (silent, silent_t), (long, long_t)) = tokio::join!(idle, silent, long);

    let st = idle.status.expect("idle stream ended");
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert!(
        st.message()
            .contains("no message for 800 ms; stream ended as idle"),
        "{st:?}"
    );
    let sum = idle.summary.expect("idle stream: summary before the status");
    assert_eq!((sum.audio_ms_received, sum.audio_ms_processed), (1000, 1000));
    assert!(idle_t < Duration::from_secs(5), "{idle_t:?}");

    let st = silent.expect("stream without config refused");
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert!(st.message().contains("no config message within 800 ms"), "{st:?}");
    assert!(silent_t < Duration::from_secs(5), "{silent_t:?}");

    let st = long.status.expect("long stream ended");
    assert_eq!(st.code(), Code::DeadlineExceeded, "{st:?}");
    assert!(
        st.message().contains("exceeded its maximum lifetime of 3000 ms"),
        "{st:?}"
    );
    let sum = long.summary.expect("long stream: summary before the status");
    assert!(sum.audio_ms_received >= 1000, "{sum:?}");
    assert_eq!(
        sum.audio_ms_processed, sum.audio_ms_received,
        "everything received was processed"
    );
    assert!(long_t < Duration::from_secs(6), "{long_t:?}");
    healthy.check().await;
}

/// Calls cancelled mid-stream (RST_STREAM(CANCEL), connection kept open) and connections that vanish
/// give their slots back at once; the healthy streams are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancelling_mid_stream_frees_its_slot() {
    let mut c = test_config();
    c.server.max_streams = 5;
    let server = TestServer::start(c).await;
    let healthy = Healthy::start(&server, 2, 10, Duration::from_millis(15)).await;
    let pcm = s16_bytes(&golden_stream());
    let mut reqs = vec![req_config(base())];
    reqs.extend(pcm.chunks(3200).take(10).map(|c| req_audio(c.to_vec())));
    let mut connections = Vec::new();
    for round in 0..3 {
        // Two calls cancelled after 1 s of audio (their connections stay open)...
        for _ in 0..2 {
            connections.push(detect_then_cancel(server.addr, &reqs).await);
        }
        // And one whose whole connection disappears mid-stream (the third slot).
        detect_raw(server.addr, &reqs).await.vanish();
        // The slots come back: three new streams are admitted beside the two healthy ones (and while
        // the healthy ones run, a sixth is refused).
        let t0 = Instant::now();
        loop {
            let mut admitted = Vec::new();
            for _ in 0..3 {
                if let Ok(mut s) = OpenStream::open(&server, Some(req_config(base()))).await
                    && matches!(s.next().await, Ok(Some(_)))
                {
                    admitted.push(s);
                }
            }
            if admitted.len() == 3 {
                if healthy.finished() == 0 {
                    let refused = run_stream(&mut server.client().await, vec![req_config(base())]).await;
                    assert_eq!(
                        refused.status.expect("full").code(),
                        Code::ResourceExhausted,
                        "round {round}"
                    );
                }
                for s in admitted {
                    s.drain().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            drop(admitted);
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "round {round}: slots not released"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    healthy.check().await;
    drop(connections);
}

/// A client that never reads its responses: the server's buffers are bounded, the stream is ended with
/// RESOURCE_EXHAUSTED after `slow_reader_timeout_ms`, its slot comes back, and memory stays flat over
/// rounds of such clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_ended_and_memory_stays_flat() {
    let mut c = test_config();
    c.server.max_streams = 6;
    c.server.response_buffer = 4;
    c.server.slow_reader_timeout_ms = 500;
    let server = TestServer::start(c).await;
    let healthy = Healthy::start(&server, 2, 4, Duration::from_millis(15)).await;
    let pcm = s16_bytes(&golden_stream());
    let chatty = || v1::StreamConfig {
        score_trace: true,
        disable_progress: false,
        progress_interval_ms: 10,
        hop_ms: 10,
        ..base()
    };
    let mut rss = Vec::new();
    for round in 0..6 {
        let mut readers = Vec::new();
        for _ in 0..4 {
            let s = OpenStream::open_small_window(&server, Some(req_config(chatty())), 16 << 10)
                .await
                .unwrap();
            let tx = s.tx.clone();
            let pcm = pcm.clone();
            // Audio keeps coming (until flow control or the end of the stream stops it); nobody reads.
            let feeder = tokio::spawn(async move {
                for _ in 0..100 {
                    for c in pcm.chunks(32_000) {
                        if tx.send(req_audio(c.to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            });
            readers.push((s, feeder));
        }
        // The server gives up on them after ~0.5 s of a full buffer: their slots come back. (Slots
        // free = the 4 readers' + those of healthy streams that have finished.)
        let t0 = Instant::now();
        loop {
            let want = 4 + healthy.finished();
            let mut admitted = Vec::new();
            for _ in 0..want {
                if let Ok(mut s) = OpenStream::open(&server, Some(req_config(base()))).await
                    && matches!(s.next().await, Ok(Some(_)))
                {
                    admitted.push(s);
                }
            }
            if admitted.len() == want && want == 4 + healthy.finished() {
                break;
            }
            drop(admitted);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "round {round}: slow readers not ended"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // When such a client finally reads, it finds the status after what was buffered.
        for (s, feeder) in readers {
            feeder.abort();
            let out = s.drain().await;
            let st = out.status.unwrap_or_else(|| {
                panic!(
                    "ended without a status: ready {} summary {:?} progress {} traces {}",
                    out.ready.is_some(),
                    out.summary,
                    out.progress.len(),
                    out.traces.len()
                )
            });
            assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
            assert!(
                st.message()
                    .contains("client read no response for 500 ms while its response buffer was full"),
                "{st:?}"
            );
        }
        rss.push(rss_bytes());
    }
    // Allocator noise aside, six rounds of 4 never-reading clients must not grow the process.
    let growth = rss[5].saturating_sub(rss[1]);
    assert!(
        growth < 40 << 20,
        "RSS grew by {} MiB over rounds: {rss:?}",
        growth >> 20
    );
    healthy.check().await;
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}
