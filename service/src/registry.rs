//! The served models: manifests, their batchers (with one ONNX Runtime session per worker), and
//! their public description.
//!
//! A model whose manifest has a `streaming` section is served on its streaming graph (workers of
//! `OnnxStreamScorer`, streams of `Spotter::new_streaming`), unless its `models.serve` entry ends
//! in `:windowed`. The streaming graph of the configured variant is used if the manifest lists one
//! (`streaming.files`), else fp32 with a warning; `variant` (and `ModelInfo.variant`,
//! `Ready.model.variant`) is the variant actually scored, while the served name stays the
//! configured one so that clients and `models.default` keep finding it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use kws_models::frontend::MS_PER_FRAME;
use kws_models::frontend::WINDOW_VALUES;
use kws_models::{
    ClipScorer, Manifest, OnnxScorer, OnnxStreamScorer, Scorer, ScorerOptions, StateLayout, StreamScorer,
    StreamingSpec, Verifier,
};
use kws_proto::v1;

use crate::batcher::{Batcher, BatcherSettings};
use crate::config::{Config, parse_model_spec};
use crate::telemetry::names;
use crate::verify::{VerifierPool, VerifierSettings};

/// One model as served: `name` is what clients put in `StreamConfig.model` (`tc-resnet8:int8`).
#[derive(Debug)]
pub struct ServedModel {
    pub name: String,
    /// The variant scored (for a streaming model without a streaming graph of the configured
    /// variant: fp32).
    pub variant: String,
    /// Served on its streaming graph: the per-stream state layout (streams are
    /// `Spotter::new_streaming` and their jobs `Job::hop`). `None`: windowed.
    pub streaming: Option<StateLayout>,
    pub manifest: Manifest,
    pub batcher: Batcher,
    /// The verifier of a model whose manifest has one (streams run the cascade unless they opt out).
    pub verifier: Option<VerifierPool>,
    pub info: v1::ModelInfo,
}

/// All served models and the default.
#[derive(Debug)]
pub struct Registry {
    models: BTreeMap<String, Arc<ServedModel>>,
    default: String,
}

/// A model could not be loaded; the message names it and says why.
#[derive(Debug, thiserror::Error)]
#[error("model {spec}: {reason}")]
pub struct LoadError {
    pub spec: String,
    pub reason: String,
}

impl Registry {
    /// Load every `models.serve` entry: manifest, sha256, ONNX Runtime sessions, and workers.
    pub fn load(config: &Config) -> Result<(Self, Vec<JoinHandle<()>>), LoadError> {
        // Which entry is the default is known from the names alone, so each model's info is
        // complete before it is shared.
        let served: std::collections::BTreeSet<&String> = config.models.serve.iter().collect();
        let default = resolve_default(&config.models.default, served.iter().copied());
        let mut models = BTreeMap::new();
        let mut handles = Vec::new();
        for spec in &config.models.serve {
            let fail = |reason: String| {
                metrics::counter!(names::MODEL_LOAD_FAILURES, "model" => spec.clone()).increment(1);
                LoadError {
                    spec: spec.clone(),
                    reason,
                }
            };
            let parsed = parse_model_spec(spec).map_err(|e| fail(e.to_string()))?;
            let manifest =
                Manifest::load(config.models.dir.join(&parsed.name)).map_err(|e| fail(e.to_string()))?;
            let options = ScorerOptions {
                intra_threads: config.batcher.intra_threads,
                optimize: true,
                library: config.models.ort_library.clone(),
            };
            let settings = BatcherSettings {
                max_batch: config.batcher.max_batch,
                max_delay: config.batcher.max_delay(),
                queue_capacity: config.batcher.queue_capacity,
            };
            // The largest batch a worker forms (`max_batch` is a cap, see `batcher`). Each worker
            // scores that batch once now: ONNX Runtime's memory arena keeps what its largest run
            // needed, so it reaches its final size at start-up instead of in steps whenever a load
            // spike first forms a bigger batch (seen as RSS steps in the soak).
            let largest = config.batcher.max_batch;
            let classes = manifest.num_classes();
            let stream_variant = streaming_variant(&manifest, &parsed.variant, parsed.windowed);
            let (variant, streaming, (batcher, h)) = match stream_variant {
                None => {
                    let mut scorers: Vec<Box<dyn Scorer>> = Vec::new();
                    for _ in 0..config.batcher.workers {
                        let mut s = OnnxScorer::new(&manifest, &parsed.variant, &options)
                            .map_err(|e| fail(e.to_string()))?;
                        let mut probs = vec![0.0; largest * classes];
                        s.score(&vec![0.0; largest * WINDOW_VALUES], &mut probs)
                            .map_err(|e| fail(format!("warm-up batch of {largest} windows: {e}")))?;
                        scorers.push(Box::new(s));
                    }
                    let b = Batcher::start(spec, scorers, settings).map_err(|e| fail(e.to_string()))?;
                    (parsed.variant.clone(), None, b)
                }
                Some(variant) => {
                    if variant != parsed.variant {
                        tracing::warn!(model = %spec, configured = %parsed.variant, served = %variant,
                            "the model has no streaming graph of the configured variant: serving its fp32 streaming graph");
                    }
                    // `streaming_variant` returned Some: the manifest has the section.
                    let Some(layout) = manifest.streaming.as_ref().map(StreamingSpec::layout) else {
                        return Err(fail("no streaming section".into()));
                    };
                    let mut scorers: Vec<Box<dyn StreamScorer>> = Vec::new();
                    for _ in 0..config.batcher.workers {
                        let mut s = OnnxStreamScorer::new(&manifest, &variant, &options)
                            .map_err(|e| fail(e.to_string()))?;
                        // Warm up the batcher's own call, each stream's state in its own buffer.
                        let mut probs = vec![0.0; largest * classes];
                        let mut states = vec![vec![0.0; layout.len]; largest];
                        let mut views: Vec<&mut [f32]> = states.iter_mut().map(Vec::as_mut_slice).collect();
                        s.score_each(
                            &vec![0.0; largest * layout.frame_values()],
                            &mut views,
                            &mut probs,
                        )
                        .map_err(|e| fail(format!("warm-up batch of {largest} hops: {e}")))?;
                        scorers.push(Box::new(s));
                    }
                    let b =
                        Batcher::start_streaming(spec, scorers, settings).map_err(|e| fail(e.to_string()))?;
                    (variant, Some(layout), b)
                }
            };
            handles.extend(h);
            let verifier = match &manifest.verifier {
                None => None,
                Some(_) => {
                    let (pool, h) = load_verifier(spec, &manifest, config, &options)
                        .map_err(|e| fail(format!("verifier: {e}")))?;
                    handles.extend(h);
                    crate::telemetry::register_verifier(spec, &manifest.keywords);
                    Some(pool)
                }
            };
            let mut info = model_info(spec, &variant, &manifest);
            info.is_default = Some(spec) == default.as_ref();
            set_streaming(&mut info, streaming.as_ref(), &manifest, &variant);
            metrics::gauge!(names::MODEL_LOADED, "model" => spec.clone(), "variant" => variant.clone(),
                "version" => manifest.version.clone())
            .set(1.0);
            tracing::info!(model = %spec, version = %manifest.version, variant = %variant,
                workers = config.batcher.workers, streaming = streaming.is_some(), "model loaded");
            models.insert(
                spec.clone(),
                Arc::new(ServedModel {
                    name: spec.clone(),
                    variant,
                    streaming,
                    manifest,
                    batcher,
                    verifier,
                    info,
                }),
            );
        }
        let default = default.ok_or_else(|| LoadError {
            spec: config.models.default.clone(),
            reason: format!(
                "the default model is not served (served: {})",
                models.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        Ok((Self { models, default }, handles))
    }

    /// The model a stream asked for: empty = default; `name:variant`, or a bare name when exactly one
    /// variant of it is served.
    pub fn get(&self, requested: &str) -> Option<&Arc<ServedModel>> {
        if requested.is_empty() {
            return self.models.get(&self.default);
        }
        resolve_default(requested, self.models.keys()).and_then(|k| self.models.get(&k))
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ServedModel>> {
        self.models.values()
    }

    /// Served names, for error messages.
    pub fn names(&self) -> String {
        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Start the verifier workers of `manifest` (one `Verifier` each, warmed up on a full batch of
/// silent clips so that ONNX Runtime's arena reaches its size at start-up).
fn load_verifier(
    spec: &str,
    manifest: &Manifest,
    config: &Config,
    options: &ScorerOptions,
) -> Result<(VerifierPool, Vec<JoinHandle<()>>), String> {
    let files = manifest
        .verifier
        .as_ref()
        .ok_or("no verifier section")?
        .read_verified(manifest.dir())
        .map_err(|e| e.to_string())?;
    let (view, shifts) = manifest
        .verifier
        .as_ref()
        .map_or((0, 0), |v| (v.embeddings_per_view, v.view_shifts));
    let settings = VerifierSettings {
        max_batch: config.verifier.max_batch,
        queue_capacity: config.verifier.queue_capacity,
    };
    let mut scorers: Vec<Box<dyn ClipScorer + Send>> = Vec::new();
    let silence = vec![0.0f32; kws_models::verifier::clip_samples(view + 2 * shifts)];
    for _ in 0..config.verifier.workers {
        let mut v = Verifier::new(&files, view, shifts, manifest.num_classes(), options)
            .map_err(|e| e.to_string())?;
        let clips = vec![kws_models::verifier::Clip::from(silence.as_slice()); settings.max_batch];
        v.score_clips(&clips)
            .map_err(|e| format!("warm-up batch of {} clips: {e}", settings.max_batch))?;
        scorers.push(Box::new(v));
    }
    tracing::info!(model = %spec, workers = config.verifier.workers, max_batch = settings.max_batch,
        "verifier loaded");
    VerifierPool::start(spec, scorers, settings).map_err(|e| e.to_string())
}

/// The variant of the streaming graph to serve for `manifest` configured as `variant`: `None` for a
/// windowed model (no `streaming` section, or `windowed` asked); the configured variant if the
/// manifest has its streaming graph, else fp32 (the caller warns).
pub fn streaming_variant(manifest: &Manifest, variant: &str, windowed: bool) -> Option<String> {
    let spec = manifest.streaming.as_ref().filter(|_| !windowed)?;
    Some(spec.served_variant(variant).to_string())
}

/// Mark `info` as served streaming with `layout` (or windowed): the streaming graph's sha256
/// replaces the windowed one's.
pub fn set_streaming(info: &mut v1::ModelInfo, layout: Option<&StateLayout>, m: &Manifest, variant: &str) {
    info.streaming = layout.is_some();
    info.state_bytes_per_stream = layout.map_or(0, |l| l.state_bytes() as u64);
    info.streaming_hop_ms = layout.map_or(0, |l| l.hop_frames as u32 * MS_PER_FRAME);
    if let (Some(_), Some(s)) = (layout, &m.streaming) {
        info.sha256 = s.files.get(variant).map(|f| f.sha256.clone()).unwrap_or_default();
    }
}

/// The served name `requested` stands for: itself, or the one served `name:variant` of a bare name.
fn resolve_default<'a>(requested: &str, served: impl Iterator<Item = &'a String> + Clone) -> Option<String> {
    if served.clone().any(|k| k == requested) {
        return Some(requested.to_string());
    }
    let mut matching = served.filter(|k| k.split(':').next() == Some(requested));
    match (matching.next(), matching.next()) {
        (Some(k), None) => Some(k.clone()),
        _ => None,
    }
}

/// The public description of a served model.
pub fn model_info(name: &str, variant: &str, m: &Manifest) -> v1::ModelInfo {
    let f = &m.frontend;
    v1::ModelInfo {
        name: name.to_string(),
        version: m.version.clone(),
        variant: variant.to_string(),
        arch: m.arch.clone(),
        classes: m.classes.clone(),
        keywords: m.keywords.clone(),
        thresholds: m.keywords.iter().cloned().zip(m.default_thresholds()).collect(),
        frontend: Some(v1::Frontend {
            sample_rate_hz: f.sample_rate,
            frame_length: f.frame_length as u32,
            hop_length: f.hop_length as u32,
            fft_size: f.fft_size as u32,
            num_mel: f.num_mel as u32,
            mel_low_hz: f.mel_low_hz as f32,
            mel_high_hz: f.mel_high_hz as f32,
            num_mfcc: f.num_mfcc as u32,
            description: format!(
                "MFCC: {} ms frames every {} ms, periodic Hann, {}-point FFT power, {} HTK-mel bands {}-{} Hz, ln(x + {}), orthonormal DCT-II, {} coefficients; {} frames per window",
                f.frame_length * 1000 / f.sample_rate as usize,
                f.hop_length * 1000 / f.sample_rate as usize,
                f.fft_size,
                f.num_mel,
                f.mel_low_hz,
                f.mel_high_hz,
                f.log_offset,
                f.num_mfcc,
                f.window_frames
            ),
        }),
        window_ms: (m.window.samples * 1000 / f.sample_rate as usize) as u32,
        default_hop_ms: m.window.default_hop_frames * MS_PER_FRAME,
        default_smoothing_ms: m.decoder.smoothing_ms,
        default_refractory_ms: m.decoder.refractory_ms,
        params: m.params,
        flops: m.flops,
        sha256: m.files.get(variant).map(|f| f.sha256.clone()).unwrap_or_default(),
        is_default: false,
        runtime: Some(runtime_info()),
        verifier: m.verifier.as_ref().map(|v| {
            let [mel, embedding, head] = v.paths(Path::new(""));
            let path = |p: PathBuf| p.to_string_lossy().into_owned();
            v1::Verifier {
                head_path: path(head),
                head_sha256: v.head.sha256.clone(),
                mel_path: path(mel),
                mel_sha256: v.features.mel.sha256.clone(),
                embedding_path: path(embedding),
                embedding_sha256: v.features.embedding.sha256.clone(),
                first_stage_threshold: v.first_stage_threshold,
                candidate_rule: v.candidate_rule.as_str().to_owned(),
                thresholds: m
                    .keywords
                    .iter()
                    .cloned()
                    .zip(v.thresholds_for(&m.keywords))
                    .collect(),
                embeddings_per_view: v.embeddings_per_view as u32,
                centre_offset_ms: v.centre_offset_ms,
                view_shifts: v.view_shifts as u32,
                reject_gap_ms: v.reject_gap_ms,
                licence: v.licence.clone(),
            }
        }),
        // Windowed until `set_streaming` says otherwise (the registry knows how it is served).
        streaming: false,
        state_bytes_per_stream: 0,
        streaming_hop_ms: 0,
    }
}

/// The CPU this process scores on, as reported in `ModelInfo.runtime`.
pub fn runtime_info() -> v1::Runtime {
    let cpu = kws_models::cpu::detect();
    v1::Runtime {
        cpu_arch: cpu.arch.to_string(),
        cpu_features: cpu.features_string(),
        int8_kernels: cpu.int8_kernels.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_model_is_served_streaming_unless_windowed_and_falls_back_to_fp32() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let mut m = Manifest::load(dir.join("tc-resnet8-stream")).expect("manifest");
        assert_eq!(streaming_variant(&m, "fp32", false).as_deref(), Some("fp32"));
        assert_eq!(streaming_variant(&m, "fp32", true), None, ":windowed");
        // Without an int8 streaming graph (as tc-resnet8-stream 2.0.0 first shipped): fp32.
        if let Some(s) = m.streaming.as_mut() {
            s.files.remove("int8");
        }
        assert_eq!(streaming_variant(&m, "int8", false).as_deref(), Some("fp32"));
        // With one (added later, e.g. by `kws_train.streaming int8`): picked up as it is.
        if let Some(s) = m.streaming.as_mut() {
            let fp32 = s.files["fp32"].clone();
            s.files.insert("int8".into(), fp32);
        }
        assert_eq!(streaming_variant(&m, "int8", false).as_deref(), Some("int8"));
        let windowed = Manifest::load(dir.join("tc-resnet8")).expect("manifest");
        assert_eq!(
            streaming_variant(&windowed, "int8", false),
            None,
            "no streaming section"
        );
    }
}
