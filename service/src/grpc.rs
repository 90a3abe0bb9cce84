//! Thin gRPC handlers: admission (two stages, see `admission`), first-message validation, model
//! lookups, feedback. The stream itself runs in `session`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kws_proto::v1::keyword_spotting_server::KeywordSpotting;
use kws_proto::v1::{self, detect_request};
use tonic::{Request, Response, Status};

use crate::admission::Scope;
use crate::batcher::WINDOW_BYTES;
use crate::error::ServiceError;
use crate::registry::Registry;
use crate::response::ResponseStream;
use crate::session::{self, SessionDeps};
use crate::shutdown::Phase;
use crate::telemetry::names;
use crate::validation;

/// Suggested wait before retrying a refused stream.
const RETRY_AFTER_MS: u64 = 1000;

/// The `kws.v1.KeywordSpotting` service.
#[derive(Debug, Clone)]
pub struct KwsService {
    pub registry: Arc<Registry>,
    pub deps: SessionDeps,
}

/// Where a refused stream is counted.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// `kws_rejected_total{reason}`: refused by admission or load shedding, before any work.
    Rejected,
    /// `kws_streams_total{outcome}`: the stream itself was at fault (bad first message, timeout).
    Streams,
}

fn reject(e: ServiceError, counted: Counted) -> Status {
    match counted {
        Counted::Rejected => metrics::counter!(names::REJECTED, "reason" => e.outcome()).increment(1),
        Counted::Streams => metrics::counter!(names::STREAMS, "outcome" => e.outcome()).increment(1),
    }
    tracing::info!(error = %e, "stream refused");
    e.into()
}

#[tonic::async_trait]
impl KeywordSpotting for KwsService {
    type DetectStream = ResponseStream;

    async fn detect(
        &self,
        request: Request<tonic::Streaming<v1::DetectRequest>>,
    ) -> Result<Response<Self::DetectStream>, Status> {
        let opened = Instant::now();
        if *self.deps.phase.borrow() != Phase::Running {
            return Err(reject(ServiceError::Draining, Counted::Rejected));
        }
        // Stage 1 (see `admission`): a place among the streams awaiting their config, not a slot.
        let mut awaiting = self.deps.awaiting.enter(request.remote_addr());
        let mut inbound = request.into_inner();
        let wait = self.deps.server.first_message_timeout();
        let mut phase = self.deps.phase.clone();
        let first = tokio::select! {
            m = inbound.message() => m,
            _ = tokio::time::sleep(wait) => {
                return Err(reject(
                    ServiceError::FirstMessageTimeout(wait.as_millis() as u64),
                    Counted::Streams,
                ));
            }
            scope = &mut awaiting.evicted => {
                let (total, per_connection) = self.deps.awaiting.limits();
                let e = match scope {
                    Ok(Scope::Connection) => ServiceError::AwaitingConfigEvicted {
                        scope: "on this connection",
                        limit: per_connection,
                        retry_ms: RETRY_AFTER_MS,
                    },
                    _ => ServiceError::AwaitingConfigEvicted {
                        scope: "on this server",
                        limit: total,
                        retry_ms: RETRY_AFTER_MS,
                    },
                };
                return Err(reject(e, Counted::Rejected));
            }
            _ = phase.wait_for(|p| *p != Phase::Running) => {
                return Err(reject(ServiceError::Draining, Counted::Rejected));
            }
        };
        drop(awaiting);
        let first = match first {
            Err(status) => {
                if let Some(e) = validation::inbound_error(&status, self.deps.server.max_chunk_bytes) {
                    return Err(reject(e, Counted::Streams));
                }
                metrics::counter!(names::STREAMS, "outcome" => "cancelled").increment(1);
                return Err(status);
            }
            Ok(first) => first,
        };
        let config = match first.and_then(|r| r.request) {
            Some(detect_request::Request::Config(c)) => c,
            Some(detect_request::Request::Audio(_)) => {
                return Err(reject(
                    ServiceError::Protocol(
                        "audio before config: the first message must be a StreamConfig".into(),
                    ),
                    Counted::Streams,
                ));
            }
            Some(detect_request::Request::Label(_)) => {
                return Err(reject(
                    ServiceError::Protocol(
                        "label before config: the first message must be a StreamConfig".into(),
                    ),
                    Counted::Streams,
                ));
            }
            None => {
                return Err(reject(
                    ServiceError::Protocol(
                        "no config: the first message must be a DetectRequest with `config` set".into(),
                    ),
                    Counted::Streams,
                ));
            }
        };
        let model = self.registry.get(&config.model).ok_or_else(|| {
            reject(
                ServiceError::UnknownModel {
                    requested: config.model.clone(),
                    served: self.registry.names(),
                },
                Counted::Streams,
            )
        })?;
        let valid = validation::validate(&config, &model.manifest, &self.deps.server)
            .map_err(|e| reject(e.into(), Counted::Streams))?;
        // A streaming graph scores exactly its own hop: another hop_ms is refused before admission.
        if let Some(layout) = &model.streaming
            && valid.stream.hop_frames as usize != layout.hop_frames
        {
            let e = kws_models::ConfigError::StreamingHop {
                got: valid.stream.hop_frames,
                model: layout.hop_frames as u32,
            };
            return Err(reject(
                ServiceError::InvalidConfig(e.to_string()),
                Counted::Streams,
            ));
        }
        // Load shedding: when this model's scoring queue already waits too long, one more stream
        // would make every admitted stream later; refuse it instead.
        let limit_ms = self.deps.server.shed_queue_wait_ms;
        // The later of the model's scoring queue and the runtime (reading audio, frontend).
        let wait = model.batcher.queue_wait().max(self.deps.runtime_lag.current());
        if limit_ms > 0 && wait > Duration::from_millis(limit_ms) {
            return Err(reject(
                ServiceError::Saturated {
                    model: model.name.clone(),
                    wait_ms: wait.as_millis() as u64,
                    limit_ms,
                    retry_ms: RETRY_AFTER_MS,
                },
                Counted::Rejected,
            ));
        }
        // Near saturation (the wait above a quarter of the limit), admit only a few streams whose
        // load has not shown yet: a stream scores its first window after 1 s of audio, so a burst
        // admitted faster than that would overshoot the capacity before the queue wait could tell.
        let warming = self.deps.warming.load(std::sync::atomic::Ordering::Relaxed);
        let active = self.deps.server.max_streams - self.deps.active.available_permits();
        if limit_ms > 0 && wait > Duration::from_millis(limit_ms / 4) && warming >= (active / 16).max(4) {
            return Err(reject(
                ServiceError::Ramping {
                    model: model.name.clone(),
                    wait_ms: wait.as_millis() as u64,
                    warming,
                    retry_ms: RETRY_AFTER_MS,
                },
                Counted::Rejected,
            ));
        }
        // The same when the windows queued by all streams fill 90 % of `max_queued_bytes` (the
        // queue wait cannot grow beyond what that budget holds). `shed_queue_wait_ms = 0` turns both
        // off.
        let total = self.deps.server.max_queued_bytes / WINDOW_BYTES;
        let free = self.deps.queued.available_permits();
        if limit_ms > 0 && free < total / 10 {
            return Err(reject(
                ServiceError::QueueFull {
                    queued_mib: (total.saturating_sub(free) * WINDOW_BYTES) >> 20,
                    limit_mib: self.deps.server.max_queued_bytes >> 20,
                    retry_ms: RETRY_AFTER_MS,
                },
                Counted::Rejected,
            ));
        }
        // The same by measured CPU: would the admitted streams plus this one need more than the
        // allowed share of the pod's CPU limit, at what a stream costs on this node now? And are
        // too many admitted streams still warming up for their cost to show?
        if limit_ms > 0
            && let Err(refusal) = self.deps.cpu.admit(active, warming)
        {
            return Err(reject(
                crate::admission::refusal_error(refusal, RETRY_AFTER_MS),
                Counted::Rejected,
            ));
        }
        // Stage 2: a configured stream takes one of the `max_streams` slots.
        let max = self.deps.server.max_streams;
        let permit = self.deps.active.clone().try_acquire_owned().map_err(|_| {
            reject(
                ServiceError::Overloaded {
                    max,
                    retry_ms: RETRY_AFTER_MS,
                },
                Counted::Rejected,
            )
        })?;
        if *self.deps.phase.borrow() != Phase::Running {
            return Err(reject(ServiceError::Draining, Counted::Rejected));
        }
        let stream = session::start(inbound, model.clone(), valid, self.deps.clone(), permit, opened)
            .map_err(|e| reject(e, Counted::Streams))?;
        Ok(Response::new(stream))
    }

    async fn get_model_info(
        &self,
        request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let name = request.into_inner().model;
        let m = self.registry.get(&name).ok_or_else(|| {
            Status::from(ServiceError::NotFound(format!(
                "model {name:?} is not served; served models: {}",
                self.registry.names()
            )))
        });
        counted("GetModelInfo", m.map(|m| Response::new(m.info.clone())))
    }

    async fn list_models(
        &self,
        _request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        counted(
            "ListModels",
            Ok(Response::new(v1::ListModelsResponse {
                models: self.registry.all().map(|m| m.info.clone()).collect(),
                default_model: self.registry.default_name().to_string(),
            })),
        )
    }

    async fn submit_feedback(
        &self,
        request: Request<v1::SubmitFeedbackRequest>,
    ) -> Result<Response<v1::SubmitFeedbackResponse>, Status> {
        let registry = self.registry.clone();
        let r = self
            .deps
            .events
            .submit(&request.into_inner(), |model| {
                registry
                    .get(model)
                    .map(|m| m.manifest.keywords.clone())
                    .unwrap_or_default()
            })
            .map(|()| Response::new(v1::SubmitFeedbackResponse {}))
            .map_err(Status::from);
        counted("SubmitFeedback", r)
    }
}

/// Count a unary RPC's outcome in `kws_requests_total{method, code}`.
fn counted<T>(method: &'static str, r: Result<T, Status>) -> Result<T, Status> {
    let code = match &r {
        Ok(_) => "ok",
        Err(s) => crate::error::outcome_of(s.code()),
    };
    metrics::counter!(names::REQUESTS, "method" => method, "code" => code).increment(1);
    r
}
