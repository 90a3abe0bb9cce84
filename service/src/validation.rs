//! Everything a client sends, checked before it is used: the first message's `StreamConfig` becomes
//! a [`ValidStream`] (or an [`InvalidStream`] naming the value and what is accepted), `Label`s become
//! [`Label`]s, audio chunks are checked against the server's limit and the stream's format, and an
//! error reading the client's messages is told apart from a client that went away.
//!
//! The model's rules (sample rates, channels, keywords, thresholds, hop, decoder ranges, what "0"
//! and the `no_*` flags mean) are `kws-models`' ([`StreamConfig::resolve`], [`PcmFormat::new`]),
//! shared with `kws-client eval --local`; this module adds the wire's and the server's rules (the
//! encoding enum, `client_stream_id`, progress, chunk size) and the `ResolvedConfig` sent back.
//! TGI's `validation.rs` (`ValidGenerateRequest`) has the same shape.

use kws_models::eval::Label;
use kws_models::{DecoderOverrides, Encoding, Manifest, PcmFormat, StreamConfig, WireOverrides};
use kws_proto::v1;
use tonic::Status;

use crate::config::ServerConfig;
use crate::error::ServiceError;

/// Longest accepted `client_stream_id`, in bytes.
pub const MAX_CLIENT_STREAM_ID_BYTES: usize = 128;
/// Longest accepted label span, in ms (a keyword label; longer ones are a client bug).
pub const MAX_LABEL_MS: u64 = 10_000;

/// A stream's config after validation and defaults: what the session runs with.
#[derive(Debug, Clone)]
pub struct ValidStream {
    pub stream: StreamConfig,
    /// Enabled keywords (class indices, ascending) — the order of trace scores.
    pub keywords: Vec<usize>,
    /// The config as sent back in `Ready`.
    pub proto: v1::ResolvedConfig,
    /// Audio ms between progress messages; `None` = no progress messages.
    pub progress_ms: Option<u64>,
    pub trace: bool,
    pub known_negative: bool,
}

/// Why a `StreamConfig` cannot be served. Shown to the client as INVALID_ARGUMENT ("invalid config:
/// ...").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidStream {
    #[error(
        "encoding {0} is not supported: use AUDIO_ENCODING_PCM_S16LE (1) or AUDIO_ENCODING_PCM_F32LE (2)"
    )]
    Encoding(i32),
    /// More channels than the wire's `u16` (smaller counts out of range are the model's error).
    #[error("{0} channels is not supported: use 1..=8 interleaved channels")]
    Channels(u32),
    #[error("client_stream_id is longer than 128 bytes")]
    ClientStreamId,
    /// The model's rules: format, keywords, thresholds, hop, decoder.
    #[error(transparent)]
    Model(#[from] kws_models::ConfigError),
}

impl From<InvalidStream> for ServiceError {
    fn from(e: InvalidStream) -> Self {
        ServiceError::InvalidConfig(e.to_string())
    }
}

/// Validate a client's config against the model and the server limits.
pub fn validate(
    cfg: &v1::StreamConfig,
    manifest: &Manifest,
    server: &ServerConfig,
) -> Result<ValidStream, InvalidStream> {
    let encoding = match v1::AudioEncoding::try_from(cfg.encoding) {
        Ok(v1::AudioEncoding::PcmS16le) => Encoding::S16Le,
        Ok(v1::AudioEncoding::PcmF32le) => Encoding::F32Le,
        _ => return Err(InvalidStream::Encoding(cfg.encoding)),
    };
    let channels = u16::try_from(cfg.channels).map_err(|_| InvalidStream::Channels(cfg.channels))?;
    let format = PcmFormat::new(encoding, cfg.sample_rate_hz, channels)?;
    let overrides = DecoderOverrides::from(WireOverrides {
        hop_ms: cfg.hop_ms,
        smoothing_ms: cfg.smoothing_ms,
        no_smoothing: cfg.no_smoothing,
        refractory_ms: cfg.refractory_ms,
        no_refractory: cfg.no_refractory,
        first_stage_only: cfg.first_stage_only,
    });
    let stream = StreamConfig::resolve(manifest, format, &cfg.keywords, &cfg.thresholds, overrides)?;
    if cfg.client_stream_id.len() > MAX_CLIENT_STREAM_ID_BYTES {
        return Err(InvalidStream::ClientStreamId);
    }
    let keywords = stream.keywords();
    let progress_ms = (!cfg.disable_progress).then(|| {
        u64::from(if cfg.progress_interval_ms == 0 {
            server.progress_interval_ms
        } else {
            cfg.progress_interval_ms
        })
    });
    let d = &stream.decoder;
    // The thresholds that decide events: the verdict thresholds with a cascade, else the decoder's.
    let deciding: Vec<Option<f32>> = match &stream.cascade {
        Some(c) => d
            .thresholds
            .iter()
            .zip(&c.config.thresholds)
            .map(|(t, v)| t.map(|_| *v))
            .collect(),
        None => d.thresholds.clone(),
    };
    let proto = v1::ResolvedConfig {
        encoding: cfg.encoding,
        sample_rate_hz: cfg.sample_rate_hz,
        channels: cfg.channels,
        keywords: keywords.iter().map(|&i| manifest.keywords[i].clone()).collect(),
        thresholds: keywords
            .iter()
            .filter_map(|&i| Some((manifest.keywords[i].clone(), deciding[i]?)))
            .collect(),
        hop_ms: stream.hop_ms(),
        smoothing_ms: d.smoothing_ms,
        refractory_ms: d.refractory_ms,
        score_trace: cfg.score_trace,
        progress_interval_ms: progress_ms.unwrap_or(0) as u32,
        known_negative: cfg.known_negative,
        client_stream_id: cfg.client_stream_id.clone(),
        max_chunk_bytes: server.max_chunk_bytes as u32,
        cascade: stream.cascade.is_some(),
        first_stage_threshold: stream
            .cascade
            .as_ref()
            .map_or(0.0, |c| c.config.first_stage_threshold),
    };
    Ok(ValidStream {
        stream,
        keywords,
        proto,
        progress_ms,
        trace: cfg.score_trace,
        known_negative: cfg.known_negative,
    })
}

/// Validate a label message against the model.
pub fn label_from_proto(l: &v1::Label, m: &Manifest) -> Result<Label, String> {
    let class = m.keyword_index(&l.keyword).ok_or_else(|| {
        format!(
            "label keyword {:?} is not one of {}",
            l.keyword,
            m.keywords.join(", ")
        )
    })?;
    if l.end_ms < l.start_ms {
        return Err(format!(
            "label end_ms {} is before start_ms {}",
            l.end_ms, l.start_ms
        ));
    }
    if l.end_ms - l.start_ms > MAX_LABEL_MS {
        return Err(format!(
            "label spans {} ms; a keyword label must span at most {MAX_LABEL_MS} ms",
            l.end_ms - l.start_ms
        ));
    }
    Ok(Label {
        class,
        start_ms: l.start_ms,
        end_ms: l.end_ms,
    })
}

/// Validate one audio chunk against the server limit and the stream's format; returns its frames.
pub fn check_chunk(data: &[u8], max_chunk_bytes: usize, format: &PcmFormat) -> Result<usize, ServiceError> {
    if data.is_empty() {
        return Err(ServiceError::InvalidAudio(format!(
            "empty audio chunk: AudioChunk.data must hold at least one frame ({} bytes)",
            format.frame_bytes()
        )));
    }
    if data.len() > max_chunk_bytes {
        return Err(ServiceError::InvalidAudio(format!(
            "chunk of {} bytes exceeds the maximum of {max_chunk_bytes} bytes (ResolvedConfig.max_chunk_bytes): send smaller chunks",
            data.len()
        )));
    }
    format
        .validate(data)
        .map_err(|e| ServiceError::InvalidAudio(e.to_string()))
}

/// What an error reading the client's messages means: `Some` for a message the server could not
/// accept (too large, undecodable), which the client is told about; `None` when the client or its
/// connection went away (nothing can be sent).
pub fn inbound_error(status: &Status, max_chunk_bytes: usize) -> Option<ServiceError> {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Some(ServiceError::BadMessage(format!(
            "{}: the largest accepted AudioChunk.data is {max_chunk_bytes} bytes (ResolvedConfig.max_chunk_bytes); send smaller chunks",
            status.message()
        ))),
        tonic::Code::Internal if !status.message().starts_with("h2 protocol error") => Some(
            ServiceError::BadMessage(format!("cannot decode the DetectRequest: {}", status.message())),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_errors_that_the_client_must_hear_about() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 5 bytes",
        );
        match inbound_error(&too_large, 1) {
            Some(ServiceError::BadMessage(m)) => {
                assert!(
                    m.contains("found 9 bytes") && m.contains("largest accepted AudioChunk.data is 1 bytes")
                )
            }
            other => panic!("{other:?}"),
        }
        let undecodable = Status::internal("failed to decode Protobuf message: invalid wire type");
        assert!(matches!(
            inbound_error(&undecodable, 1),
            Some(ServiceError::BadMessage(_))
        ));
        // The client or its connection went away: nothing to tell it.
        for gone in [
            Status::cancelled("x"),
            Status::unknown("h2 protocol error: connection reset"),
            Status::internal("h2 protocol error: stream reset"),
        ] {
            assert!(inbound_error(&gone, 1).is_none(), "{gone:?}");
        }
    }

    #[test]
    fn chunk_checks_name_the_limit() {
        let fmt = PcmFormat::native_s16();
        assert_eq!(check_chunk(&[0; 4], 4, &fmt), Ok(2));
        let e = check_chunk(&[0; 6], 4, &fmt).expect_err("too large");
        assert!(e.to_string().contains("exceeds the maximum of 4 bytes"), "{e}");
        let e = check_chunk(&[], 4, &fmt).expect_err("empty");
        assert!(e.to_string().contains("at least one frame (2 bytes)"), "{e}");
    }

    #[test]
    fn typed_refusals_keep_their_messages() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tc-resnet8");
        let m = Manifest::load(&dir).expect("manifest");
        let base = v1::StreamConfig {
            encoding: 1,
            sample_rate_hz: 16_000,
            channels: 1,
            ..Default::default()
        };
        let server = ServerConfig::default();
        let refuse = |c: v1::StreamConfig| {
            ServiceError::from(validate(&c, &m, &server).expect_err("refused")).to_string()
        };
        assert_eq!(
            refuse(v1::StreamConfig {
                encoding: 9,
                ..base.clone()
            }),
            "invalid config: encoding 9 is not supported: use AUDIO_ENCODING_PCM_S16LE (1) or AUDIO_ENCODING_PCM_F32LE (2)"
        );
        assert_eq!(
            refuse(v1::StreamConfig {
                channels: 70_000,
                ..base.clone()
            }),
            "invalid config: 70000 channels is not supported: use 1..=8 interleaved channels"
        );
        assert_eq!(
            refuse(v1::StreamConfig {
                hop_ms: 15,
                ..base.clone()
            }),
            "invalid config: hop_ms 15 must be a multiple of 10 in 10..=980"
        );
        assert_eq!(
            refuse(v1::StreamConfig {
                client_stream_id: "x".repeat(129),
                ..base.clone()
            }),
            "invalid config: client_stream_id is longer than 128 bytes"
        );
        let ok = validate(
            &v1::StreamConfig {
                no_smoothing: true,
                smoothing_ms: 300,
                keywords: vec!["stop".into(), "yes".into()],
                ..base
            },
            &m,
            &server,
        )
        .expect("valid");
        assert_eq!(ok.proto.smoothing_ms, 0, "no_smoothing wins over a value");
        assert_eq!(
            ok.proto.keywords,
            vec!["yes".to_string(), "stop".to_string()],
            "model order"
        );
        assert_eq!(ok.proto.hop_ms, m.window.default_hop_frames * 10);
    }
}
