//! The service's errors and their one mapping to gRPC statuses.

use tonic::{Code, Status};

/// Everything a request can fail with. Messages say what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// Bad stream configuration (rates, channels, keywords, thresholds, model, decoder overrides).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Audio that cannot be decoded (partial frame, non-finite float, empty or oversized chunk).
    #[error("invalid audio: {0}")]
    InvalidAudio(String),
    /// Messages in the wrong order or of the wrong kind (config not first, config twice, bad label).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A message that could not be decoded, or larger than the server accepts.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// The model named does not exist.
    #[error("unknown model {requested:?}; served models: {served}")]
    UnknownModel { requested: String, served: String },
    /// Stream limit reached.
    #[error("server at capacity ({max} concurrent streams); retry after {retry_ms} ms")]
    Overloaded { max: usize, retry_ms: u64 },
    /// Load shedding: the model's scoring queue is too slow to take another stream in real time.
    #[error(
        "server saturated: scoring of model {model} waits {wait_ms} ms in queue (limit {limit_ms} ms); retry after {retry_ms} ms"
    )]
    Saturated {
        model: String,
        wait_ms: u64,
        limit_ms: u64,
        retry_ms: u64,
    },
    /// Load shedding near saturation: the queue wait is rising and streams admitted moments ago
    /// have not added their load yet (their first window needs 1 s of audio).
    #[error(
        "server near saturation: scoring of model {model} waits {wait_ms} ms in queue and {warming} streams admitted in the last seconds have not started scoring yet; retry after {retry_ms} ms"
    )]
    Ramping {
        model: String,
        wait_ms: u64,
        warming: usize,
        retry_ms: u64,
    },
    /// Load shedding: the feature bytes queued by all streams are near `max_queued_bytes`.
    #[error(
        "server saturated: {queued_mib} MiB of audio features wait for scoring (limit {limit_mib} MiB); retry after {retry_ms} ms"
    )]
    QueueFull {
        queued_mib: usize,
        limit_mib: usize,
        retry_ms: u64,
    },
    /// Load shedding by measured CPU: the admitted streams plus one more would need more CPU than
    /// the pod may use (`admission::CpuMeter`).
    #[error(
        "server at its CPU limit: {scoring} scoring streams use {used_cores:.2} cores ({cpu_per_audio_s:.4} CPU-s per audio-s); one more stream would need {needed_cores:.2} of the {allowed_cores:.2} cores allowed ({limit_cores:.2}-core limit); retry after {retry_ms} ms"
    )]
    CpuFull {
        scoring: usize,
        used_cores: f64,
        cpu_per_audio_s: f64,
        needed_cores: f64,
        allowed_cores: f64,
        limit_cores: f64,
        retry_ms: u64,
    },
    /// Load shedding: too many admitted streams have not started scoring, so their CPU cost is not
    /// measured yet (`admission::CpuMeter`).
    #[error(
        "server warming up streams: {warming} streams admitted in the last seconds have not started scoring yet (at most {allowed} at once: the streams scoring, those the measured CPU has room for, or 64); retry after {retry_ms} ms"
    )]
    Burst {
        warming: usize,
        allowed: usize,
        retry_ms: u64,
    },
    /// The client does not read its responses.
    #[error("client read no response for {0} ms while its response buffer was full; stream ended")]
    SlowReader(u64),
    /// Shutting down: new streams are refused, running ones end after the grace period.
    #[error("server is shutting down; reconnect to another instance")]
    Draining,
    #[error("no config message within {0} ms of opening the stream")]
    FirstMessageTimeout(u64),
    /// A stream still waiting for its config was evicted by a newer one: the budget of waiting
    /// streams (of its connection or of the server) was full.
    #[error(
        "stream evicted before its config: {limit} streams {scope} were waiting for their config message (the limit) and this one had waited longest; send the StreamConfig as the first message at once; retry after {retry_ms} ms"
    )]
    AwaitingConfigEvicted {
        scope: &'static str,
        limit: usize,
        retry_ms: u64,
    },
    #[error("no message for {0} ms; stream ended as idle")]
    Idle(u64),
    #[error("stream exceeded its maximum lifetime of {0} ms")]
    Lifetime(u64),
    #[error("{0}")]
    NotFound(String),
    /// Missing, malformed or unknown bearer token; the message says which.
    #[error("{0}")]
    Unauthenticated(String),
    /// The model's verifier did not keep up with this stream's candidates (its backlog of windows
    /// waiting for a verdict, or the samples a candidate's clip needs, ran out).
    #[error(
        "the verifier is not keeping up with this stream: {0}; the audio after the last event was not fully verified (send audio closer to real time, or use first_stage_only)"
    )]
    VerifierBehind(String),
    /// The verifier could not score a candidate of this stream.
    #[error("internal error: the verifier could not score a candidate: {0}")]
    VerifierFailed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The gRPC status code of this error: the one mapping (statuses and outcome labels follow it).
    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidConfig(_)
            | ServiceError::InvalidAudio(_)
            | ServiceError::Protocol(_)
            | ServiceError::BadMessage(_)
            | ServiceError::UnknownModel { .. } => Code::InvalidArgument,
            ServiceError::Overloaded { .. }
            | ServiceError::Saturated { .. }
            | ServiceError::AwaitingConfigEvicted { .. }
            | ServiceError::QueueFull { .. }
            | ServiceError::Ramping { .. }
            | ServiceError::CpuFull { .. }
            | ServiceError::Burst { .. }
            | ServiceError::VerifierBehind(_)
            | ServiceError::SlowReader(_) => Code::ResourceExhausted,
            ServiceError::Draining => Code::Unavailable,
            ServiceError::FirstMessageTimeout(_) | ServiceError::Idle(_) | ServiceError::Lifetime(_) => {
                Code::DeadlineExceeded
            }
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::Internal(_) | ServiceError::VerifierFailed(_) => Code::Internal,
        }
    }

    /// How long a client should wait before retrying (gRFC A6 pushback), for refusals that a retry
    /// may overcome.
    fn retry_ms(&self) -> Option<u64> {
        match self {
            ServiceError::Overloaded { retry_ms, .. }
            | ServiceError::Saturated { retry_ms, .. }
            | ServiceError::AwaitingConfigEvicted { retry_ms, .. }
            | ServiceError::QueueFull { retry_ms, .. }
            | ServiceError::Ramping { retry_ms, .. }
            | ServiceError::CpuFull { retry_ms, .. }
            | ServiceError::Burst { retry_ms, .. } => Some(*retry_ms),
            ServiceError::InvalidConfig(_)
            | ServiceError::InvalidAudio(_)
            | ServiceError::Protocol(_)
            | ServiceError::BadMessage(_)
            | ServiceError::UnknownModel { .. }
            | ServiceError::SlowReader(_)
            | ServiceError::Draining
            | ServiceError::FirstMessageTimeout(_)
            | ServiceError::Idle(_)
            | ServiceError::Lifetime(_)
            | ServiceError::NotFound(_)
            | ServiceError::Unauthenticated(_)
            | ServiceError::VerifierBehind(_)
            | ServiceError::VerifierFailed(_)
            | ServiceError::Internal(_) => None,
        }
    }

    /// Bounded label for `kws_streams_total{outcome}` and `kws_rejected_total{reason}`.
    pub fn outcome(&self) -> &'static str {
        outcome_of(self.code())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let mut s = Status::new(e.code(), e.to_string());
        if let Some(retry_ms) = e.retry_ms()
            && let Ok(v) = retry_ms.to_string().parse()
        {
            // gRFC A6 retry pushback: clients with retry policies wait this long.
            s.metadata_mut().insert("grpc-retry-pushback-ms", v);
        }
        s
    }
}

/// The status codes a stream can end with and their `outcome` labels; every other code counts as
/// `internal`. The one list behind [`outcome_of`] and [`OUTCOMES`].
const OUTCOME_CODES: [(Code, &str); 9] = [
    (Code::Ok, "ok"),
    (Code::Cancelled, "cancelled"),
    (Code::InvalidArgument, "invalid_argument"),
    (Code::ResourceExhausted, "resource_exhausted"),
    (Code::DeadlineExceeded, "deadline_exceeded"),
    (Code::Unavailable, "unavailable"),
    (Code::Unauthenticated, "unauthenticated"),
    (Code::NotFound, "not_found"),
    (Code::Internal, "internal"),
];

/// Every `outcome` label value of `kws_streams_total`.
pub const OUTCOMES: [&str; OUTCOME_CODES.len()] = {
    let mut out = [""; OUTCOME_CODES.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = OUTCOME_CODES[i].1;
        i += 1;
    }
    out
};

/// Outcome label of a status the stream ended with (client-side cancellations included).
pub fn outcome_of(code: Code) -> &'static str {
    OUTCOME_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("internal", |(_, o)| *o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let s: Status = ServiceError::Overloaded {
            max: 4,
            retry_ms: 1000,
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok()),
            Some("1000")
        );
        assert_eq!(Status::from(ServiceError::Draining).code(), Code::Unavailable);
        assert_eq!(Status::from(ServiceError::Idle(5)).code(), Code::DeadlineExceeded);
        let s: Status = ServiceError::InvalidAudio("odd".into()).into();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "invalid audio: odd")
        );
    }

    #[test]
    fn outcome_labels_follow_the_status_code() {
        for e in [
            ServiceError::Draining,
            ServiceError::SlowReader(1),
            ServiceError::Idle(1),
            ServiceError::Protocol("x".into()),
            ServiceError::Unauthenticated("x".into()),
            ServiceError::NotFound("x".into()),
            ServiceError::Internal("x".into()),
        ] {
            assert_eq!(e.outcome(), outcome_of(Status::from(e.clone()).code()), "{e:?}");
            assert!(OUTCOMES.contains(&e.outcome()));
        }
        assert_eq!(outcome_of(Code::DataLoss), "internal");
        assert_eq!(OUTCOMES.len(), 9);
    }
}
