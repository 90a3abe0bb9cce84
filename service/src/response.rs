//! The response side of a Detect stream: [`ResponseStream`], which tonic polls, and
//! [`Responses`], the session's end of it.
//!
//! Responses queue in a bounded buffer (`server.response_buffer`); a send waits up to
//! `server.slow_reader_timeout_ms` for room, then the stream is a slow reader. Its terminal status
//! cannot queue behind the full buffer, so it goes through a priority slot that the stream yields
//! first. The stream also tells the session when tonic has taken the summary: tonic reports a
//! cancelled call as a plain end of input, and only a taken summary proves the call is alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use kws_proto::v1::{self, detect_response};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::Stream;
use tonic::Status;

use crate::error::ServiceError;

type Item = Result<v1::DetectResponse, Status>;

/// The response stream handed to tonic: in-band messages, plus a priority slot for the terminal
/// status of a client that does not read (its buffer is full, so the status cannot queue behind).
#[derive(Debug)]
pub struct ResponseStream {
    rx: mpsc::Receiver<Item>,
    abort: Option<oneshot::Receiver<Status>>,
    /// Notified when tonic takes the summary: the session then knows the call was not reset.
    summary_taken: Arc<Notify>,
}

impl Stream for ResponseStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(abort) = self.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.abort = None;
                    self.rx.close();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.abort = None,
                Poll::Pending => {}
            }
        }
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(v1::DetectResponse {
            response: Some(detect_response::Response::Summary(_)),
        }))) = &item
        {
            self.summary_taken.notify_one();
        }
        item
    }
}

/// Why a response could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The buffer stayed full for the whole slow-reader timeout.
    SlowReader,
    /// The client is gone (the response side was dropped).
    Gone,
}

/// The session's end of a response stream.
#[derive(Debug)]
pub struct Responses {
    tx: mpsc::Sender<Item>,
    abort: Option<oneshot::Sender<Status>>,
    summary_taken: Arc<Notify>,
    slow_reader_timeout: Duration,
}

/// A response stream with room for `buffer` messages whose sends wait up to `slow_reader_timeout`.
pub fn channel(buffer: usize, slow_reader_timeout: Duration) -> (Responses, ResponseStream) {
    let (tx, rx) = mpsc::channel(buffer);
    let (abort_tx, abort_rx) = oneshot::channel();
    let summary_taken = Arc::new(Notify::new());
    (
        Responses {
            tx,
            abort: Some(abort_tx),
            summary_taken: summary_taken.clone(),
            slow_reader_timeout,
        },
        ResponseStream {
            rx,
            abort: Some(abort_rx),
            summary_taken,
        },
    )
}

impl Responses {
    /// Send one response, waiting up to the slow-reader timeout for room in the buffer.
    pub async fn send(&self, msg: v1::DetectResponse) -> Result<(), SendError> {
        match self.tx.send_timeout(Ok(msg), self.slow_reader_timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(SendError::SlowReader),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(SendError::Gone),
        }
    }

    /// End the stream with `e`: through the priority slot for a slow reader (its buffer is full),
    /// else after the responses already queued. Best effort: a client that is gone hears nothing.
    pub async fn fail(&mut self, e: ServiceError) {
        match e {
            ServiceError::SlowReader(_) => {
                if let Some(a) = self.abort.take() {
                    let _ = a.send(e.into());
                }
            }
            e => {
                let _ = self.tx.send(Err(e.into())).await;
            }
        }
    }

    /// Resolves when the client is gone (it reset the stream or its connection died).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// After the summary was queued: whether the call is alive. tonic turns a client's
    /// RST_STREAM(CANCEL) into a plain end of input, so a cancelled call looks like a half-close
    /// until its response side is dropped: wait until the summary is taken (alive) or the response
    /// side is gone (cancelled). A client that does not read finds the summary in its buffer later
    /// (alive after the slow-reader timeout).
    pub async fn summary_delivered(&self) -> bool {
        tokio::select! {
            biased;
            _ = self.summary_taken.notified() => true,
            _ = self.tx.closed() => false,
            _ = tokio::time::sleep(self.slow_reader_timeout) => true,
        }
    }

    /// A sender for a last word from outside the session (its panic watcher): `try_send` only, so
    /// it never waits on a client that does not read.
    pub fn last_word(&self) -> mpsc::Sender<Item> {
        self.tx.clone()
    }
}
