//! One Detect stream: an [`AudioSink`] to send audio and labels, and [`Responses`] to receive
//! events, progress, score traces and the summary. The two halves are independent so a caller can
//! send from one task and receive in another (the protocol is fully bidirectional: events arrive
//! while audio is still being sent).

use std::time::{Duration, Instant};

use kws_proto::v1::{self, detect_request, detect_response};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::audio::AudioFormat;
use crate::error::ClientError;

/// Requests buffered between the sink and the transport: small, so that a paced sender notices
/// HTTP/2 flow control quickly instead of queueing audio in memory.
pub(crate) const REQUEST_BUFFER: usize = 8;

/// How fast audio is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// As fast as the server accepts it (HTTP/2 flow control is the only brake).
    Unpaced,
    /// Real time: a chunk is sent when its last sample would have been captured by a microphone,
    /// i.e. chunk `i` at `start + (i + 1) * chunk duration`.
    RealTime,
}

/// How to cut and pace audio.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    /// Layout of the bytes being sent (must match the stream's config).
    pub format: AudioFormat,
    /// Audio per chunk in ms (clamped to the server's `max_chunk_bytes`).
    pub chunk_ms: u32,
    pub pacing: Pacing,
}

/// What a send call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Frames sent (samples per channel).
    pub frames: u64,
    /// Chunks (AudioChunk messages) sent.
    pub chunks: u64,
    /// Largest delay of a paced chunk behind its schedule (zero when unpaced).
    pub max_lag: Duration,
}

/// The sending half of a Detect stream. Dropping it (or [`finish`](Self::finish)) half-closes the
/// stream: the server then scores the rest and sends the summary.
#[derive(Debug, Clone)]
pub struct AudioSink {
    tx: mpsc::Sender<v1::DetectRequest>,
    max_chunk_bytes: usize,
}

impl AudioSink {
    pub(crate) fn new(tx: mpsc::Sender<v1::DetectRequest>, max_chunk_bytes: usize) -> Self {
        Self {
            tx,
            max_chunk_bytes: max_chunk_bytes.max(1),
        }
    }

    /// Largest audio chunk the server accepts, in bytes (from `Ready.config`).
    pub fn max_chunk_bytes(&self) -> usize {
        self.max_chunk_bytes
    }

    async fn send(&self, request: detect_request::Request) -> Result<(), ClientError> {
        self.tx
            .send(v1::DetectRequest {
                request: Some(request),
            })
            .await
            .map_err(|_| ClientError::StreamClosed)
    }

    /// Send one chunk of raw PCM as is (whole frames, at most [`max_chunk_bytes`](Self::max_chunk_bytes)).
    /// Waits while the transport's buffer is full.
    pub async fn send_audio(&self, data: Vec<u8>) -> Result<(), ClientError> {
        self.send(detect_request::Request::Audio(v1::AudioChunk { data }))
            .await
    }

    /// Send a ground-truth label: `keyword` spoken from `start_ms` to `end_ms` of this stream's clock.
    pub async fn send_label(&self, keyword: &str, start_ms: u64, end_ms: u64) -> Result<(), ClientError> {
        self.send(detect_request::Request::Label(v1::Label {
            keyword: keyword.to_string(),
            start_ms,
            end_ms,
        }))
        .await
    }

    /// Chunk length in frames for `opts`, within the server's limit.
    pub fn chunk_frames(&self, opts: &SendOptions) -> usize {
        let max_frames = (self.max_chunk_bytes / opts.format.frame_bytes()).max(1);
        opts.format.frames_in_ms(opts.chunk_ms.max(1)).min(max_frames)
    }

    /// Send all of `pcm` (interleaved, in `opts.format`) in chunks of `opts.chunk_ms`, paced as asked.
    /// `progress` is called with the frames sent so far after each chunk.
    pub async fn send_pcm(
        &self,
        pcm: &[u8],
        opts: &SendOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<SendStats, ClientError> {
        let frame = opts.format.frame_bytes();
        let chunk = self.chunk_frames(opts) * frame;
        let mut pacer = Pacer::new(opts);
        let mut stats = SendStats::default();
        for piece in pcm.chunks(chunk) {
            let frames = (piece.len() / frame) as u64;
            if frames == 0 {
                break; // a trailing partial frame cannot be sent
            }
            pacer.wait(stats.frames + frames, &mut stats).await;
            self.send_audio(piece[..frames as usize * frame].to_vec()).await?;
            stats.frames += frames;
            stats.chunks += 1;
            progress(stats.frames);
        }
        Ok(stats)
    }

    /// Send everything `reader` yields (raw PCM in `opts.format`) until end of input, in chunks of
    /// `opts.chunk_ms`. With real-time pacing a live source (a pipe from a recorder) is naturally
    /// paced by its own reads as well. A trailing partial frame is an error.
    pub async fn send_reader<R: AsyncRead + Unpin>(
        &self,
        mut reader: R,
        opts: &SendOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<SendStats, ClientError> {
        let frame = opts.format.frame_bytes();
        let chunk = self.chunk_frames(opts) * frame;
        let mut pacer = Pacer::new(opts);
        let mut stats = SendStats::default();
        let mut buf = vec![0u8; chunk];
        loop {
            let mut filled = 0;
            while filled < chunk {
                let n = reader
                    .read(&mut buf[filled..])
                    .await
                    .map_err(crate::audio::AudioInputError::Io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled % frame != 0 {
                return Err(ClientError::Audio(crate::audio::AudioInputError::Invalid {
                    path: "<input>".into(),
                    reason: format!(
                        "input ends inside a frame: {filled} bytes is not a multiple of {frame} bytes per frame"
                    ),
                }));
            }
            if filled == 0 {
                break;
            }
            let frames = (filled / frame) as u64;
            pacer.wait(stats.frames + frames, &mut stats).await;
            self.send_audio(buf[..filled].to_vec()).await?;
            stats.frames += frames;
            stats.chunks += 1;
            progress(stats.frames);
            if filled < chunk {
                break;
            }
        }
        Ok(stats)
    }

    /// Send pre-cut chunks as fast as allowed.
    pub async fn send_chunks<I: IntoIterator<Item = Vec<u8>>>(&self, chunks: I) -> Result<u64, ClientError> {
        let mut n = 0;
        for c in chunks {
            self.send_audio(c).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Half-close the stream (same as dropping the sink).
    pub fn finish(self) {}
}

/// Sleeps until audio up to a frame count would have been captured in real time.
struct Pacer {
    start: Instant,
    rate: u64,
    paced: bool,
}

impl Pacer {
    fn new(opts: &SendOptions) -> Self {
        Self {
            start: Instant::now(),
            rate: u64::from(opts.format.sample_rate_hz),
            paced: opts.pacing == Pacing::RealTime,
        }
    }

    async fn wait(&mut self, frames_end: u64, stats: &mut SendStats) {
        if !self.paced {
            return;
        }
        let due = self.start + Duration::from_micros(frames_end * 1_000_000 / self.rate);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else {
            stats.max_lag = stats.max_lag.max(now - due);
        }
    }
}

/// A message from the server after `Ready`.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A keyword was detected.
    Event(v1::KeywordEvent),
    /// Audio received vs processed; `behind` = the server is overloaded.
    Progress(v1::Progress),
    /// Smoothed posteriors of scored windows (when `score_trace` was asked for).
    Trace(v1::ScoreTrace),
    /// The last message of a stream that ended normally.
    Summary(v1::Summary),
}

/// The receiving half of a Detect stream.
#[derive(Debug)]
pub struct Responses {
    inner: tonic::Streaming<v1::DetectResponse>,
}

impl Responses {
    pub(crate) fn new(inner: tonic::Streaming<v1::DetectResponse>) -> Self {
        Self { inner }
    }

    /// The next update; `Ok(None)` when the stream ended normally (after the summary), `Err` with the
    /// server's status when it ended with an error.
    pub async fn next(&mut self) -> Result<Option<Update>, ClientError> {
        loop {
            let Some(msg) = self.inner.message().await? else {
                return Ok(None);
            };
            let update = match msg.response {
                Some(detect_response::Response::Event(e)) => Update::Event(e),
                Some(detect_response::Response::Progress(p)) => Update::Progress(p),
                Some(detect_response::Response::Trace(t)) => Update::Trace(t),
                Some(detect_response::Response::Summary(s)) => Update::Summary(s),
                Some(detect_response::Response::Ready(_)) => {
                    return Err(ClientError::Protocol("a second Ready message".into()));
                }
                None => continue, // a newer server's message kind: ignore
            };
            return Ok(Some(update));
        }
    }

    /// Read until the end of the stream and collect everything.
    pub async fn collect(mut self) -> Result<Collected, ClientError> {
        let mut out = Collected::default();
        while let Some(u) = self.next().await? {
            match u {
                Update::Event(e) => out.events.push(e),
                Update::Progress(p) => out.progress.push(p),
                Update::Trace(t) => out.windows.extend(t.windows),
                Update::Summary(s) => out.summary = Some(s),
            }
        }
        Ok(out)
    }
}

/// Everything a stream answered after `Ready`.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub events: Vec<v1::KeywordEvent>,
    pub progress: Vec<v1::Progress>,
    /// Score-trace windows in order (empty unless `score_trace` was set).
    pub windows: Vec<v1::WindowScores>,
    pub summary: Option<v1::Summary>,
}

/// An open Detect stream: the server's `Ready`, and the two halves.
#[derive(Debug)]
pub struct DetectStream {
    /// Stream id, model and resolved configuration.
    pub ready: v1::Ready,
    pub sink: AudioSink,
    pub responses: Responses,
}
