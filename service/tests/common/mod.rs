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

/// The offline kws-models result for the same audio and model defaults: (keyword, start, end, score).
pub fn offline_events(variant: &str, format: PcmFormat, pcm: &[u8]) -> Vec<(String, u64, u64, f32)> {
    let manifest = Manifest::load(repo().join("models").join("tc-resnet8")).unwrap();
    let options = ScorerOptions {
        library: Some(ort_lib()),
        ..ScorerOptions::default()
    };
    let mut scorer = OnnxScorer::new(&manifest, variant, &options).unwrap();
    let mut spotter = Spotter::new(
        StreamConfig::from_manifest(&manifest, format),
        manifest.num_classes(),
    )
    .unwrap();
    spotter
        .process_pcm(&mut scorer, pcm)
        .unwrap()
        .into_iter()
        .map(|e| (manifest.keywords[e.class].clone(), e.start_ms, e.end_ms, e.score))
        .collect()
}

pub fn native() -> PcmFormat {
    PcmFormat::new(Encoding::S16Le, 16_000, 1).unwrap()
}
