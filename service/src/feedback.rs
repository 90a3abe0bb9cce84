//! Recently sent events and streams, so reviewers' feedback can be resolved and counted.
//!
//! Event ids stay resolvable for `event_retention_ms` (default 24 h) or until `event_retention_max`
//! newer events have been sent (default 200 000; an entry holds the id twice, model and keyword:
//! a few hundred bytes with map overhead, an estimate, so well under 100 MB), whichever comes first;
//! stream ids likewise. Older ids answer NOT_FOUND.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kws_proto::v1;

use crate::error::ServiceError;
use crate::telemetry::names;

/// Longest accepted feedback note (it is logged).
pub const MAX_NOTE_BYTES: usize = 1024;

#[derive(Debug, Clone)]
struct EventRecord {
    model: String,
    keyword: String,
}

#[derive(Debug, Default)]
struct Inner {
    events: HashMap<String, EventRecord>,
    event_order: VecDeque<(Instant, String)>,
    streams: HashMap<String, String>,
    stream_order: VecDeque<(Instant, String)>,
}

/// Bounded, time-limited index of events and streams.
#[derive(Debug)]
pub struct EventStore {
    inner: Mutex<Inner>,
    retention: Duration,
    max: usize,
}

impl EventStore {
    pub fn new(retention: Duration, max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            retention,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent maps: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expire(inner: &mut Inner, now: Instant, retention: Duration, max: usize) {
        while let Some((t, _)) = inner.event_order.front() {
            if now.duration_since(*t) <= retention && inner.event_order.len() <= max {
                break;
            }
            if let Some((_, id)) = inner.event_order.pop_front() {
                inner.events.remove(&id);
            }
        }
        while let Some((t, _)) = inner.stream_order.front() {
            if now.duration_since(*t) <= retention && inner.stream_order.len() <= max {
                break;
            }
            if let Some((_, id)) = inner.stream_order.pop_front() {
                inner.streams.remove(&id);
            }
        }
    }

    /// Remember a stream (for missed-keyword reports).
    pub fn insert_stream(&self, stream_id: &str, model: &str) {
        let now = Instant::now();
        let mut g = self.lock();
        g.streams.insert(stream_id.to_string(), model.to_string());
        g.stream_order.push_back((now, stream_id.to_string()));
        Self::expire(&mut g, now, self.retention, self.max);
    }

    /// Remember an event that was sent.
    pub fn insert(&self, event_id: &str, model: &str, keyword: &str) {
        let now = Instant::now();
        let mut g = self.lock();
        g.events.insert(
            event_id.to_string(),
            EventRecord {
                model: model.to_string(),
                keyword: keyword.to_string(),
            },
        );
        g.event_order.push_back((now, event_id.to_string()));
        Self::expire(&mut g, now, self.retention, self.max);
    }

    /// Resolve and count one piece of feedback.
    pub fn submit(
        &self,
        req: &v1::SubmitFeedbackRequest,
        keywords_of: impl Fn(&str) -> Vec<String>,
    ) -> Result<(), ServiceError> {
        let note = match &req.feedback {
            Some(v1::submit_feedback_request::Feedback::Verdict(v)) => v.note.len(),
            Some(v1::submit_feedback_request::Feedback::Missed(m)) => m.note.len(),
            None => 0,
        };
        if note > MAX_NOTE_BYTES {
            return Err(ServiceError::InvalidConfig(format!(
                "feedback note of {note} bytes is longer than {MAX_NOTE_BYTES} bytes"
            )));
        }
        let now = Instant::now();
        let mut g = self.lock();
        Self::expire(&mut g, now, self.retention, self.max);
        match &req.feedback {
            Some(v1::submit_feedback_request::Feedback::Verdict(v)) => {
                let verdict = match v1::Verdict::try_from(v.verdict) {
                    Ok(v1::Verdict::Correct) => "correct",
                    Ok(v1::Verdict::FalseAlarm) => "false_alarm",
                    _ => {
                        return Err(ServiceError::InvalidConfig(
                            "verdict must be VERDICT_CORRECT (1) or VERDICT_FALSE_ALARM (2)".into(),
                        ));
                    }
                };
                let rec = g.events.get(&v.event_id).ok_or_else(|| {
                    ServiceError::NotFound(format!(
                        "event {:?} is unknown or expired (ids are kept {} s)",
                        v.event_id,
                        self.retention.as_secs()
                    ))
                })?;
                metrics::counter!(names::FEEDBACK, "model" => rec.model.clone(), "keyword" => rec.keyword.clone(),
                    "verdict" => verdict)
                .increment(1);
                tracing::info!(event_id = %v.event_id, verdict, note = %v.note, "feedback");
                Ok(())
            }
            Some(v1::submit_feedback_request::Feedback::Missed(m)) => {
                let model = g.streams.get(&m.stream_id).cloned().ok_or_else(|| {
                    ServiceError::NotFound(format!("stream {:?} is unknown or expired", m.stream_id))
                })?;
                if !keywords_of(&model).contains(&m.keyword) {
                    return Err(ServiceError::InvalidConfig(format!(
                        "keyword {:?} is not a keyword of model {model}",
                        m.keyword
                    )));
                }
                if m.end_ms < m.start_ms {
                    return Err(ServiceError::InvalidConfig(
                        "missed keyword: end_ms is before start_ms".into(),
                    ));
                }
                metrics::counter!(names::FEEDBACK, "model" => model, "keyword" => m.keyword.clone(),
                    "verdict" => "missed")
                .increment(1);
                tracing::info!(stream_id = %m.stream_id, keyword = %m.keyword, start_ms = m.start_ms, "missed keyword reported");
                Ok(())
            }
            None => Err(ServiceError::InvalidConfig(
                "feedback must set verdict or missed".into(),
            )),
        }
    }

    /// Events currently resolvable.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(id: &str) -> v1::SubmitFeedbackRequest {
        v1::SubmitFeedbackRequest {
            feedback: Some(v1::submit_feedback_request::Feedback::Verdict(v1::EventVerdict {
                event_id: id.into(),
                verdict: v1::Verdict::FalseAlarm as i32,
                note: String::new(),
            })),
        }
    }

    #[test]
    fn resolves_then_forgets_by_count() {
        let s = EventStore::new(Duration::from_secs(3600), 2);
        s.insert("a-1", "m", "yes");
        assert!(s.submit(&verdict("a-1"), |_| vec![]).is_ok());
        assert!(matches!(
            s.submit(&verdict("nope"), |_| vec![]),
            Err(ServiceError::NotFound(_))
        ));
        s.insert("a-2", "m", "no");
        s.insert("a-3", "m", "no");
        assert!(
            matches!(
                s.submit(&verdict("a-1"), |_| vec![]),
                Err(ServiceError::NotFound(_))
            ),
            "evicted"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn forgets_by_age() {
        let s = EventStore::new(Duration::from_millis(0), 10);
        s.insert("a-1", "m", "yes");
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(
            s.submit(&verdict("a-1"), |_| vec![]),
            Err(ServiceError::NotFound(_))
        ));
    }
}
