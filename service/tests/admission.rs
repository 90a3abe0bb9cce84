//! Streams that never send their config cannot lock configured streams out: they wait in a budget of
//! their own (per connection and per server, the oldest evicted first) and hold none of the
//! `max_streams` slots. Real gRPC on 127.0.0.1: a raw HTTP/2 client opens streams of HEADERS only
//! (as a flood would), on one connection or on many, while normal clients keep being admitted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use kws_proto::v1::{self, AudioEncoding};
use tokio::sync::mpsc;
use tonic::Code;

/// (call index, grpc-status — or "200 OK (streaming)" when the response headers carry none —,
/// grpc-message), sent as the answers come.
type Answers = mpsc::UnboundedSender<(usize, String, String)>;

/// A raw HTTP/2 connection with Detect calls that sent their headers and nothing else.
struct IdleCalls {
    sends: Vec<h2::SendStream<bytes::Bytes>>,
    _conn: tokio::task::JoinHandle<()>,
}

async fn open_idle(addr: SocketAddr, n: usize, tx: &Answers) -> IdleCalls {
    let (mut client, conn) = h2_connect(addr).await;
    let mut sends = Vec::new();
    for i in 0..n {
        client = client.ready().await.unwrap();
        let req = grpc_request(addr, "/kws.v1.KeywordSpotting/Detect", "application/grpc");
        let (response, send) = client.send_request(req, false).unwrap();
        sends.push(send);
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(r) = response.await else { return };
            let h = r.headers();
            let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
            let answer = match get("grpc-status") {
                Some(s) => (i, s, percent_decode(&get("grpc-message").unwrap_or_default())),
                None => (i, format!("{} (streaming)", r.status()), String::new()),
            };
            let _ = tx.send(answer);
        });
    }
    IdleCalls { sends, _conn: conn }
}

/// The next `n` answers (calls that ended, or started streaming).
async fn next_answers(
    rx: &mut mpsc::UnboundedReceiver<(usize, String, String)>,
    n: usize,
) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let a = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("answers")
            .expect("answer");
        out.push(a);
    }
    out
}

fn base() -> v1::StreamConfig {
    config(AudioEncoding::PcmS16le, 16_000, 1)
}

fn limits(max_streams: usize, total: usize, per_connection: usize) -> kws_service::config::Config {
    let mut c = test_config();
    c.server.max_streams = max_streams;
    c.server.max_streams_awaiting_config = total;
    c.server.max_streams_awaiting_config_per_connection = per_connection;
    // Long enough that only the budget, never the timeout, ends an idle stream during the test.
    c.server.first_message_timeout_ms = 120_000;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_of_idle_streams_evicts_only_itself() {
    let server = TestServer::start(limits(12, 64, 8)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut idle = open_idle(server.addr, 40, &tx).await;
    // 32 of the 40 are evicted by newer ones on the same connection, with a message that says why.
    let evicted = next_answers(&mut rx, 32).await;
    for (_, status, message) in &evicted {
        assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {message}");
        assert!(
            message.contains("8 streams on this connection were waiting for their config message"),
            "{message}"
        );
    }
    // Configured streams on other connections run as usual: the idle ones hold no stream slot.
    let healthy = Healthy::start(&server, 4, 1, Duration::from_millis(20)).await;
    healthy.check().await;
    // The 8 survivors are still waiting; once they send their config they take 8 of the 12 slots.
    let gone: std::collections::HashSet<usize> = evicted.iter().map(|a| a.0).collect();
    let survivors: Vec<usize> = (0..40).filter(|i| !gone.contains(i)).collect();
    assert_eq!(survivors.len(), 8);
    for &i in &survivors {
        idle.sends[i]
            .send_data(grpc_frame(&req_config(base())), false)
            .unwrap();
    }
    let started = next_answers(&mut rx, 8).await;
    for (i, status, message) in &started {
        assert!(survivors.contains(i));
        assert_eq!(status, "200 OK (streaming)", "{message}");
    }
    // 8 configured streams of 12 slots: 4 more are admitted, the 5th is refused at capacity.
    let mut admitted = Vec::new();
    for _ in 0..4 {
        let mut s = OpenStream::open(&server, Some(req_config(base())))
            .await
            .expect("admitted");
        assert!(matches!(s.next().await, Ok(Some(_))), "Ready");
        admitted.push(s);
    }
    let Err(st) = OpenStream::open(&server, Some(req_config(base()))).await else {
        panic!("admitted beyond max_streams")
    };
    assert_eq!(st.code(), Code::ResourceExhausted);
    assert!(
        st.message()
            .contains("server at capacity (12 concurrent streams)"),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_on_many_connections_cannot_keep_new_streams_out() {
    let server = TestServer::start(limits(8, 16, 8)).await;
    // 10 connections x 4 idle streams = 40 waiting streams against a server budget of 16.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut floods = Vec::new();
    for _ in 0..10 {
        floods.push(open_idle(server.addr, 4, &tx).await);
    }
    for (_, status, message) in next_answers(&mut rx, 24).await {
        assert_eq!(status, "8", "{message}");
        assert!(
            message.contains("16 streams on this server were waiting"),
            "{message}"
        );
    }
    // While the flood goes on, clients that send their config at once are admitted (each evicts the
    // oldest idle stream instead of being refused) and their audio is scored exactly.
    let addr = server.addr;
    let flood = tokio::spawn(async move {
        let mut more = Vec::new();
        for _ in 0..8 {
            more.push(open_idle(addr, 4, &tx).await);
        }
        more
    });
    let healthy = Healthy::start(&server, 8, 1, Duration::from_millis(20)).await;
    healthy.check().await;
    let _more = flood.await.unwrap();
    drop(floods);
}
