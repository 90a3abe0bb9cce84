//! kws-client: a typed async client for the kws v1 gRPC API (`proto/kws/v1/kws.proto`), and the
//! library behind the `kws-client` CLI.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kws_client::ClientError> {
//! use kws_client::{Audio, Client, ConnectOptions, Pacing, SendOptions, Update};
//!
//! let mut client = Client::connect(&ConnectOptions::plaintext("127.0.0.1:50051")).await?;
//! let audio = Audio::from_wav("speech.wav".as_ref())?;
//! let stream = client.open(audio.format.stream_config()).await?;
//! let (sink, mut responses) = (stream.sink, stream.responses);
//! let sender = tokio::spawn(async move {
//!     let opts = SendOptions { format: audio.format, chunk_ms: 100, pacing: Pacing::RealTime };
//!     sink.send_pcm(&audio.data, &opts, &mut |_| {}).await // the sink drops here: half-close
//! });
//! while let Some(update) = responses.next().await? {
//!     if let Update::Event(e) = update {
//!         println!("{} at {}..{} ms", e.keyword, e.start_ms, e.end_ms);
//!     }
//! }
//! # let _ = sender.await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`connect`]: address, TLS / mTLS, bearer token ([`ConnectOptions`]).
//! - [`stream`]: one Detect stream ([`AudioSink`], [`Responses`], pacing).
//! - [`audio`]: WAV input of any rate/channels, raw PCM formats.
//! - [`eval`]: `kws-client eval`: manifests, threshold-grid evaluation (server or in-process), reports.
//! - [`plot`]: the DET curve PNG.
//!
//! Units: times are ms of the stream's own audio clock unless a name says otherwise; rates in Hz.

pub mod audio;
pub mod connect;
pub mod error;
pub mod eval;
pub mod plot;
pub mod stream;

use std::time::Duration;

use kws_proto::v1::keyword_spotting_client::KeywordSpottingClient;
use kws_proto::v1::{self, detect_request, detect_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

pub use audio::{Audio, AudioFormat, AudioInputError, Encoding};
pub use connect::{BearerToken, ConnectOptions, TlsOptions};
pub use error::ClientError;
pub use kws_proto::v1 as proto;
pub use stream::{AudioSink, Collected, DetectStream, Pacing, Responses, SendOptions, SendStats, Update};
pub use tonic_health::ServingStatus;

type Authed = InterceptedService<Channel, BearerToken>;

/// A connection to a kws service. Cheap to clone (clones share the HTTP/2 connection).
#[derive(Debug, Clone)]
pub struct Client {
    kws: KeywordSpottingClient<Authed>,
    health: HealthClient<Authed>,
    request_timeout: Duration,
}

impl Client {
    /// Connect now (fails fast if the server is down) with TLS and token as in `opts`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let token = BearerToken::new(opts.token.as_deref())?;
        let channel = connect::connect_channel(opts).await?;
        Ok(Self::from_channel(channel, token, opts.request_timeout))
    }

    /// Use an existing channel (e.g. a lazily connecting one, or one shared with other clients).
    pub fn from_channel(channel: Channel, token: BearerToken, request_timeout: Duration) -> Self {
        Self {
            kws: KeywordSpottingClient::with_interceptor(channel.clone(), token.clone())
                .max_decoding_message_size(16 << 20),
            health: HealthClient::with_interceptor(channel, token),
            request_timeout,
        }
    }

    fn unary<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.request_timeout);
        r
    }

    /// All served models and the default's name.
    pub async fn list_models(&mut self) -> Result<v1::ListModelsResponse, ClientError> {
        let r = self.unary(v1::ListModelsRequest {});
        Ok(self.kws.list_models(r).await?.into_inner())
    }

    /// One model's description; `""` = the default model.
    pub async fn model_info(&mut self, model: &str) -> Result<v1::ModelInfo, ClientError> {
        let r = self.unary(v1::GetModelInfoRequest {
            model: model.to_string(),
        });
        Ok(self.kws.get_model_info(r).await?.into_inner())
    }

    /// gRPC health of `service` (`""` = the server as a whole; `kws.v1.KeywordSpotting` = the API).
    pub async fn health(&mut self, service: &str) -> Result<ServingStatus, ClientError> {
        let r = self.unary(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        });
        let status = self.health.check(r).await?.into_inner().status;
        Ok(match status {
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            _ => ServingStatus::Unknown,
        })
    }

    /// Report a verdict on an event or a missed keyword.
    pub async fn submit_feedback(
        &mut self,
        feedback: v1::submit_feedback_request::Feedback,
    ) -> Result<(), ClientError> {
        let r = self.unary(v1::SubmitFeedbackRequest {
            feedback: Some(feedback),
        });
        self.kws.submit_feedback(r).await?;
        Ok(())
    }

    /// Open a Detect stream with `config` and wait for the server's `Ready` (a bad config fails here
    /// with INVALID_ARGUMENT; a full server with RESOURCE_EXHAUSTED).
    pub async fn open(&mut self, config: v1::StreamConfig) -> Result<DetectStream, ClientError> {
        let (tx, rx) = mpsc::channel(stream::REQUEST_BUFFER);
        tx.send(v1::DetectRequest {
            request: Some(detect_request::Request::Config(config)),
        })
        .await
        .map_err(|_| ClientError::StreamClosed)?;
        let mut inbound = self.kws.detect(ReceiverStream::new(rx)).await?.into_inner();
        let ready = match inbound.message().await? {
            Some(v1::DetectResponse {
                response: Some(detect_response::Response::Ready(r)),
            }) => r,
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected Ready as the first response, got {other:?}"
                )));
            }
            None => return Err(ClientError::Protocol("the stream ended before Ready".into())),
        };
        let max_chunk = ready
            .config
            .as_ref()
            .map(|c| c.max_chunk_bytes as usize)
            .filter(|&m| m > 0)
            .unwrap_or(1 << 20);
        Ok(DetectStream {
            ready,
            sink: AudioSink::new(tx, max_chunk),
            responses: Responses::new(inbound),
        })
    }

    /// Convenience: stream all of `pcm` with `config` (its format must match `opts.format`), send
    /// `labels` first, and collect every response. Sending and receiving run concurrently.
    pub async fn detect_pcm(
        &mut self,
        config: v1::StreamConfig,
        labels: &[v1::Label],
        pcm: std::sync::Arc<Vec<u8>>,
        opts: SendOptions,
    ) -> Result<(v1::Ready, Collected), ClientError> {
        let DetectStream {
            ready,
            sink,
            responses,
        } = self.open(config).await?;
        let labels = labels.to_vec();
        let sender = tokio::spawn(async move {
            for l in &labels {
                sink.send_label(&l.keyword, l.start_ms, l.end_ms).await?;
            }
            sink.send_pcm(&pcm, &opts, &mut |_| {}).await
        });
        let collected = responses.collect().await;
        let sent = sender
            .await
            .map_err(|e| ClientError::Protocol(format!("sender task failed: {e}")))?;
        let collected = collected?;
        // A send error with a clean end of stream cannot happen; report the receive side first.
        sent?;
        Ok((ready, collected))
    }
}
