//! Test harness: a real server on 127.0.0.1:0 with the shipped models and ONNX Runtime, and a client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kws_models::{Encoding, Manifest, OnnxScorer, PcmFormat, ScorerOptions, Spotter, StreamConfig};
use kws_proto::v1::keyword_spotting_client::KeywordSpottingClient;
use kws_proto::v1::{self, detect_request, detect_response};
use kws_service::config::Config;
use kws_service::registry::Registry;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

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

/// Defaults for tests: both variants of tc-resnet8, small limits, ephemeral ports.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = ([127, 0, 0, 1], 0).into();
    c.server.metrics_listen = ([127, 0, 0, 1], 0).into();
    c.models.dir = repo().join("models");
    c.models.serve = vec!["tc-resnet8:int8".into(), "tc-resnet8:fp32".into()];
    c.models.default = "tc-resnet8:int8".into();
    c.models.ort_library = Some(ort_lib());
    c.batcher.workers = 1;
    c.server.drain_grace_ms = 2_000;
    // Load shedding off: tests that blast audio faster than real time on a slow CI machine must not be
    // shed; `tests/overload.rs` turns it on where it is the subject.
    c.server.shed_queue_wait_ms = 0;
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let (registry, _workers) = Registry::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind(config.server.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(kws_service::server::serve(config, registry, listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            join,
        }
    }

    pub async fn client(&self) -> KeywordSpottingClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        KeywordSpottingClient::new(ch).max_decoding_message_size(16 << 20)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Trigger the drain; returns the join handle to await the server's exit.
    pub fn shutdown(mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join
    }
}

pub fn wav_i16(path: &std::path::Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().sample_rate, 16_000);
    r.samples::<i16>().map(|s| s.unwrap()).collect()
}

pub fn golden_dir() -> PathBuf {
    repo().join("models").join("tc-resnet8").join("golden")
}

pub fn s16_bytes(x: &[i16]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// 16 kHz mono -> `rate` Hz with `channels` identical interleaved channels, s16 (rubato FFT, delay trimmed).
pub fn upsample_s16(x: &[i16], rate: usize, channels: usize) -> Vec<i16> {
    let input: Vec<f32> = x.iter().map(|&v| f32::from(v) / 32768.0).collect();
    let mut r = Fft::<f32>::new(16_000, rate, 1024, 1, FixedSync::Input).unwrap();
    let inp = InterleavedSlice::new(&input, 1, input.len()).unwrap();
    let out = r.process_all(&inp, input.len(), None).unwrap().take_data();
    out.iter()
        .flat_map(|&v| std::iter::repeat_n((v * 32768.0).round().clamp(-32768.0, 32767.0) as i16, channels))
        .collect()
}

pub fn config(encoding: v1::AudioEncoding, rate: u32, channels: u32) -> v1::StreamConfig {
    v1::StreamConfig {
        encoding: encoding as i32,
        sample_rate_hz: rate,
        channels,
        disable_progress: true,
        ..Default::default()
    }
}

pub fn req_config(c: v1::StreamConfig) -> v1::DetectRequest {
    v1::DetectRequest {
        request: Some(detect_request::Request::Config(c)),
    }
}

pub fn req_audio(data: Vec<u8>) -> v1::DetectRequest {
    v1::DetectRequest {
        request: Some(detect_request::Request::Audio(v1::AudioChunk { data })),
    }
}

/// Everything a stream answered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ready: Option<v1::Ready>,
    pub events: Vec<v1::KeywordEvent>,
    pub progress: Vec<v1::Progress>,
    pub traces: Vec<v1::WindowScores>,
    pub summary: Option<v1::Summary>,
    pub status: Option<tonic::Status>,
}

/// Send `requests` (as fast as allowed) and collect the answers until the stream ends.
pub async fn run_stream(
    client: &mut KeywordSpottingClient<Channel>,
    requests: Vec<v1::DetectRequest>,
) -> Outcome {
    let mut out = Outcome::default();
    let response = match client.detect(tokio_stream::iter(requests)).await {
        Ok(r) => r,
        Err(status) => {
            out.status = Some(status);
            return out;
        }
    };
    let mut inbound = response.into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), inbound.message())
            .await
            .expect("stream stalled")
        {
            Ok(Some(m)) => match m.response {
                Some(detect_response::Response::Ready(r)) => out.ready = Some(r),
                Some(detect_response::Response::Event(e)) => out.events.push(e),
                Some(detect_response::Response::Progress(p)) => out.progress.push(p),
                Some(detect_response::Response::Trace(t)) => out.traces.extend(t.windows),
                Some(detect_response::Response::Summary(s)) => out.summary = Some(s),
                None => {}
            },
            Ok(None) => break,
            Err(status) => {
                out.status = Some(status);
                break;
            }
        }
    }
    out
}

/// Split `bytes` into chunks of random sizes (whole frames of `frame` bytes), deterministic in `seed`.
pub fn random_chunks(bytes: &[u8], frame: usize, seed: u64, max_frames: usize) -> Vec<Vec<u8>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let frames = 1 + (state >> 33) as usize % max_frames;
        let end = (i + frames * frame).min(bytes.len());
        out.push(bytes[i..end].to_vec());
        i = end;
    }
    out
}

/// The offline kws-models result for the same audio and model defaults (the cascade, when the
/// manifest has a verifier): (keyword, start, end, score).
pub fn offline_events(variant: &str, format: PcmFormat, pcm: &[u8]) -> Vec<(String, u64, u64, f32)> {
    let manifest = Manifest::load(repo().join("models").join("tc-resnet8")).unwrap();
    let options = ScorerOptions {
        library: Some(ort_lib()),
        ..ScorerOptions::default()
    };
    let mut scorer = OnnxScorer::new(&manifest, variant, &options).unwrap();
    // The shipped manifest's cascade when it has one (as the server runs it by default).
    let mut verifier = manifest
        .verifier
        .as_ref()
        .map(|_| kws_models::Verifier::from_manifest(&manifest, &options).unwrap());
    let mut spotter = Spotter::new(
        StreamConfig::from_manifest(&manifest, format),
        manifest.num_classes(),
    )
    .unwrap();
    spotter
        .process_pcm_with(
            &mut scorer,
            verifier.as_mut().map(|v| v as &mut dyn kws_models::ClipScorer),
            pcm,
        )
        .unwrap()
        .into_iter()
        .map(|e| (manifest.keywords[e.class].clone(), e.start_ms, e.end_ms, e.score))
        .collect()
}

pub fn native() -> PcmFormat {
    PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap()
}

/// The golden 5.5-s stream (16 kHz mono s16).
pub fn golden_stream() -> Vec<i16> {
    wav_i16(&golden_dir().join("stream.wav"))
}

/// Events as comparable tuples.
pub fn tuples(events: &[v1::KeywordEvent]) -> Vec<(String, u64, u64, f32)> {
    events
        .iter()
        .map(|e| (e.keyword.clone(), e.start_ms, e.end_ms, e.score))
        .collect()
}

/// Like [`run_stream`], with `authorization: Bearer <token>` when a token is given.
pub async fn run_stream_with_token(
    client: &mut KeywordSpottingClient<Channel>,
    requests: Vec<v1::DetectRequest>,
    token: Option<&str>,
) -> Outcome {
    let mut req = tonic::Request::new(tokio_stream::iter(requests));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    collect(client.detect(req).await).await
}

/// Collect the answers of an opened Detect call until the stream ends.
pub async fn collect(
    response: Result<tonic::Response<tonic::Streaming<v1::DetectResponse>>, tonic::Status>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) => {
            out.status = Some(status);
            return out;
        }
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(60), inbound.message())
            .await
            .expect("stream stalled")
        {
            Ok(Some(m)) => match m.response {
                Some(detect_response::Response::Ready(r)) => out.ready = Some(r),
                Some(detect_response::Response::Event(e)) => out.events.push(e),
                Some(detect_response::Response::Progress(p)) => out.progress.push(p),
                Some(detect_response::Response::Trace(t)) => out.traces.extend(t.windows),
                Some(detect_response::Response::Summary(s)) => out.summary = Some(s),
                None => {}
            },
            Ok(None) => break,
            Err(status) => {
                out.status = Some(status);
                break;
            }
        }
    }
    out
}

/// An open Detect stream driven by the test: send with `tx`, read with `rx`.
pub struct OpenStream {
    pub tx: tokio::sync::mpsc::Sender<v1::DetectRequest>,
    pub rx: tonic::Streaming<v1::DetectResponse>,
}

impl OpenStream {
    /// Open a stream on its own connection and send `first` (usually the config); does not wait
    /// for Ready.
    pub async fn open(server: &TestServer, first: Option<v1::DetectRequest>) -> Result<Self, tonic::Status> {
        Self::open_on(server.client().await, first).await
    }

    /// Like [`open`](Self::open) on a connection whose HTTP/2 receive windows are `window` bytes, so
    /// that a client that does not read stops the server's sends quickly.
    pub async fn open_small_window(
        server: &TestServer,
        first: Option<v1::DetectRequest>,
        window: u32,
    ) -> Result<Self, tonic::Status> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .initial_stream_window_size(Some(window))
            .initial_connection_window_size(Some(window))
            .connect()
            .await
            .unwrap();
        Self::open_on(KeywordSpottingClient::new(ch), first).await
    }

    async fn open_on(
        mut client: KeywordSpottingClient<Channel>,
        first: Option<v1::DetectRequest>,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        if let Some(f) = first {
            tx.send(f).await.unwrap();
        }
        let rx = client
            .detect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, rx })
    }

    /// The next message, or the status that ended the stream (`Ok(None)`: ended with OK).
    pub async fn next(&mut self) -> Result<Option<v1::DetectResponse>, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(60), self.rx.message())
            .await
            .expect("stream stalled")
    }

    /// Half-close, then read to the end.
    pub async fn drain(mut self) -> Outcome {
        let (tx, _) = tokio::sync::mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        self.read_to_end().await
    }

    /// Read to the end without half-closing (the server ends the stream).
    pub async fn read_to_end(&mut self) -> Outcome {
        let mut out = Outcome::default();
        loop {
            match self.next().await {
                Ok(Some(m)) => match m.response {
                    Some(detect_response::Response::Ready(r)) => out.ready = Some(r),
                    Some(detect_response::Response::Event(e)) => out.events.push(e),
                    Some(detect_response::Response::Progress(p)) => out.progress.push(p),
                    Some(detect_response::Response::Trace(t)) => out.traces.extend(t.windows),
                    Some(detect_response::Response::Summary(s)) => out.summary = Some(s),
                    None => {}
                },
                Ok(None) => break,
                Err(s) => {
                    out.status = Some(s);
                    break;
                }
            }
        }
        out
    }
}

/// Healthy streams running beside a bad client: each sends the golden stream `reps` times (paced,
/// 100-ms chunks every `pace`), then half-closes; [`Healthy::check`] compares their events with the
/// offline result for the same audio and checks audio in == audio processed.
pub struct Healthy {
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    audio: Vec<u8>,
}

impl Healthy {
    pub async fn start(server: &TestServer, streams: usize, reps: usize, pace: Duration) -> Self {
        let one = s16_bytes(&golden_stream());
        let audio: Vec<u8> = one.iter().copied().cycle().take(one.len() * reps).collect();
        let mut tasks = Vec::new();
        for _ in 0..streams {
            let s = OpenStream::open(
                server,
                Some(req_config(config(v1::AudioEncoding::PcmS16le, 16_000, 1))),
            )
            .await
            .expect("healthy stream admitted");
            let audio = audio.clone();
            tasks.push(tokio::spawn(async move {
                for c in audio.chunks(3200) {
                    s.tx.send(req_audio(c.to_vec())).await.unwrap();
                    tokio::time::sleep(pace).await;
                }
                s.drain().await
            }));
        }
        Self { tasks, audio }
    }

    /// Healthy streams that have ended (their admission slots are free).
    pub fn finished(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    /// Wait for every healthy stream and check its events and accounting.
    pub async fn check(self) {
        let want = offline_events("int8", native(), &self.audio);
        assert!(!want.is_empty());
        let ms = self.audio.len() as u64 / 32;
        for (i, t) in self.tasks.into_iter().enumerate() {
            let out = t.await.unwrap();
            assert!(
                out.status.is_none(),
                "healthy stream {i} ended with {:?}",
                out.status
            );
            assert_eq!(
                tuples(&out.events),
                want,
                "healthy stream {i}: events differ from offline"
            );
            let s = out.summary.expect("healthy stream summary");
            assert_eq!(
                (s.audio_ms_received, s.audio_ms_processed),
                (ms, ms),
                "healthy stream {i}"
            );
        }
    }
}

/// A gRPC message frame: uncompressed flag, big-endian length, protobuf bytes.
pub fn grpc_frame(m: &v1::DetectRequest) -> bytes::Bytes {
    use prost::Message;
    let body = m.encode_to_vec();
    let mut f = Vec::with_capacity(body.len() + 5);
    f.push(0);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f.into()
}

/// A Detect call over a raw HTTP/2 connection, after its first response bytes (Ready).
pub struct RawCall {
    pub client: h2::client::SendRequest<bytes::Bytes>,
    pub send: h2::SendStream<bytes::Bytes>,
    pub conn: tokio::task::JoinHandle<()>,
}

impl RawCall {
    /// Cancel the call with RST_STREAM(CANCEL), as a gRPC client does when its call is cancelled;
    /// the connection stays open.
    pub fn cancel(mut self) -> Self {
        self.send.send_reset(h2::Reason::CANCEL);
        self
    }

    /// Drop the whole connection (the client vanished: no RST_STREAM, no GOAWAY).
    pub fn vanish(self) {
        self.conn.abort();
    }
}

/// A raw HTTP/2 connection (no gRPC client in the way); the task drives it until it is aborted or
/// the peer closes it.
pub async fn h2_connect(
    addr: SocketAddr,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, conn)
}

/// The headers of a gRPC call of `path` with `content_type` (body sent separately).
pub fn grpc_request(addr: SocketAddr, path: &str, content_type: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// Open a Detect call over a raw HTTP/2 connection, send `requests` (not half-closing), and wait for
/// the response headers and the first response bytes.
pub async fn detect_raw(addr: SocketAddr, requests: &[v1::DetectRequest]) -> RawCall {
    let (client, conn) = h2_connect(addr).await;
    let mut client = client.ready().await.unwrap();
    let req = grpc_request(addr, "/kws.v1.KeywordSpotting/Detect", "application/grpc");
    let (response, mut send) = client.send_request(req, false).unwrap();
    for r in requests {
        send.send_data(grpc_frame(r), false).unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("response headers")
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .expect("first response bytes");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    RawCall { client, send, conn }
}

/// [`detect_raw`], then cancel it (RST_STREAM(CANCEL)); keep the result to keep the connection open.
pub async fn detect_then_cancel(addr: SocketAddr, requests: &[v1::DetectRequest]) -> RawCall {
    detect_raw(addr, requests).await.cancel()
}

/// Send raw gRPC frames (or any bytes) as a Detect request body over HTTP/2, half-close, and return
/// the call's `grpc-status` and `grpc-message` (from the trailers, or the headers of a trailers-only
/// response).
pub async fn raw_detect_status(addr: SocketAddr, body: Vec<bytes::Bytes>) -> (String, String) {
    let (client, _conn) = h2_connect(addr).await;
    let mut client = client.ready().await.unwrap();
    let req = grpc_request(addr, "/kws.v1.KeywordSpotting/Detect", "application/grpc");
    let (response, mut send) = client.send_request(req, false).unwrap();
    let n = body.len();
    for (i, b) in body.into_iter().enumerate() {
        send.send_data(b, i + 1 == n).unwrap();
    }
    if n == 0 {
        send.send_data(bytes::Bytes::new(), true).unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("response headers")
        .unwrap();
    let field = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap_or("").to_string());
    if let Some(s) = field(response.headers(), "grpc-status") {
        let m = field(response.headers(), "grpc-message").unwrap_or_default();
        return (s, percent_decode(&m));
    }
    let mut body = response.into_body();
    while let Some(d) = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .expect("body")
    {
        let d = d.unwrap();
        let _ = body.flow_control().release_capacity(d.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    (
        field(&trailers, "grpc-status").expect("grpc-status"),
        percent_decode(&field(&trailers, "grpc-message").unwrap_or_default()),
    )
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
