//! `kws-client eval`: recall, precision and false alarms per hour of a model over a labelled corpus,
//! at every threshold of a grid, through a running service or in-process (`--local`).
//!
//! # Inputs
//! - A **manifest**: JSON lines `{"wav": "pos/0001.wav", "negative": false, "labels": [{"keyword":
//!   "yes", "start_ms": 1200, "end_ms": 1650}]}`; `wav` is relative to the manifest's directory
//!   (or absolute). `negative` (default false) marks a file known to hold no keyword: it must have no
//!   labels, and the server is told (`known_negative`). Blank lines and lines starting with `#` are
//!   skipped.
//! - A **directory**: every `*.wav` below it (recursively, sorted) is negative, unless a sidecar
//!   `NAME.json` beside `NAME.wav` holds `{"negative": false, "labels": [...]}` (same fields as a
//!   manifest line, without `wav`).
//!
//! Labels of words that are not keywords of the model (e.g. `_unknown_`) are ignored and counted in
//! the report (`ignored_labels`).
//!
//! # Method
//! Each file is streamed once with `score_trace = true` (its labels sent as `Label` messages, its
//! negative flag as `known_negative`), and the smoothed posteriors of every window are collected.
//! With `--local` the same windows come from `kws_models::Spotter` + `OnnxScorer` in this process,
//! with the same stream configuration. The posteriors are then decoded at each grid threshold with
//! [`kws_models::eval::GridDecoder`] and matched with [`kws_models::eval::match_events`] — the code the
//! service's live evaluation uses — so both sources give identical numbers.
//!
//! Per keyword and threshold: TP, FP, FN; recall = TP / (TP + FN) (labels); precision = TP / (TP +
//! FP); FA/h = FP / hours of all audio evaluated (labelled and negative files); miss rate = 1 −
//! recall. "overall" sums the counts over keywords. The operating points pick, among the thresholds
//! whose FA/h is at most 1 (and 0.1), the one with the highest recall (ties: the lowest threshold).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kws_models::WindowMeta;
use kws_models::eval::{GridDecoder, Label, match_events};
use kws_proto::v1;
use serde::{Deserialize, Serialize};

use crate::Client;
use crate::audio::{Audio, AudioInputError};
use crate::error::ClientError;
use crate::stream::{Pacing, SendOptions};

/// Problems with the evaluation input or a file in it.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    Manifest {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Audio(#[from] AudioInputError),
    #[error("{file}: {source}")]
    Server {
        file: PathBuf,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Local(String),
}

impl EvalError {
    /// True if the server or the runtime failed (as opposed to a problem with the input).
    pub fn is_server_error(&self) -> bool {
        match self {
            EvalError::Server { source, .. } => !source.is_input_error(),
            EvalError::Local(_) => true,
            EvalError::Read { .. }
            | EvalError::Manifest { .. }
            | EvalError::Input(_)
            | EvalError::Audio(_) => false,
        }
    }
}

/// A ground-truth keyword occurrence in a file, ms of the file's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLabel {
    pub keyword: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// One file to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalItem {
    pub wav: PathBuf,
    pub negative: bool,
    pub labels: Vec<FileLabel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestLine {
    wav: PathBuf,
    #[serde(default)]
    negative: bool,
    #[serde(default)]
    labels: Vec<FileLabel>,
    /// Free-form provenance (voice, background, ...) a corpus generator may attach; not interpreted.
    #[serde(default, rename = "meta")]
    _meta: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    #[serde(default)]
    negative: bool,
    #[serde(default)]
    labels: Vec<FileLabel>,
}

fn check_item(item: &EvalItem) -> Result<(), String> {
    if item.negative && !item.labels.is_empty() {
        return Err("a negative file cannot have labels".into());
    }
    for l in &item.labels {
        if l.end_ms < l.start_ms {
            return Err(format!("label {:?} ends before it starts", l.keyword));
        }
    }
    Ok(())
}

/// Read a JSONL manifest (see the module docs).
pub fn load_manifest(path: &Path) -> Result<Vec<EvalItem>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| EvalError::Manifest {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let m: ManifestLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let item = EvalItem {
            wav: base.join(m.wav),
            negative: m.negative,
            labels: m.labels,
        };
        check_item(&item).map_err(bad)?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(EvalError::Input(format!("{} lists no files", path.display())));
    }
    Ok(items)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    let rd = std::fs::read_dir(dir).map_err(|e| EvalError::Read {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    for entry in rd {
        let p = entry
            .map_err(|e| EvalError::Read {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?
            .path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("wav")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Every WAV below `dir`: negative unless a `NAME.json` sidecar says otherwise.
pub fn load_dir(dir: &Path) -> Result<Vec<EvalItem>, EvalError> {
    let mut wavs = Vec::new();
    walk(dir, &mut wavs)?;
    wavs.sort();
    if wavs.is_empty() {
        return Err(EvalError::Input(format!("no .wav files under {}", dir.display())));
    }
    let mut items = Vec::new();
    for wav in wavs {
        let sidecar = wav.with_extension("json");
        let item = if sidecar.is_file() {
            let text = std::fs::read_to_string(&sidecar).map_err(|e| EvalError::Read {
                path: sidecar.clone(),
                reason: e.to_string(),
            })?;
            let s: Sidecar = serde_json::from_str(&text).map_err(|e| EvalError::Manifest {
                path: sidecar.clone(),
                line: e.line(),
                reason: e.to_string(),
            })?;
            EvalItem {
                wav,
                negative: s.negative,
                labels: s.labels,
            }
        } else {
            EvalItem {
                wav,
                negative: true,
                labels: Vec::new(),
            }
        };
        check_item(&item).map_err(|reason| EvalError::Manifest {
            path: sidecar,
            line: 1,
            reason,
        })?;
        items.push(item);
    }
    Ok(items)
}

/// A manifest file or a directory of WAVs.
pub fn load_input(path: &Path) -> Result<Vec<EvalItem>, EvalError> {
    if path.is_dir() {
        load_dir(path)
    } else {
        load_manifest(path)
    }
}

/// Parse a grid: `START:STOP:STEP` (inclusive) or a comma-separated list; ascending values in (0, 1).
pub fn parse_grid(s: &str) -> Result<Vec<f32>, String> {
    let grid: Vec<f32> = if let [a, b, c] = s.split(':').collect::<Vec<_>>()[..] {
        let p = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
        let (start, stop, step) = (p(a)?, p(b)?, p(c)?);
        if step <= 0.0 || stop < start {
            return Err("START:STOP:STEP needs STEP > 0 and STOP >= START".into());
        }
        let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
        if n > 1000 {
            return Err("at most 1000 thresholds".into());
        }
        // Rounded so that 0.05:0.95:0.05 gives the f32 nearest to 0.15, not 0.15000001.
        (0..n)
            .map(|i| ((start + i as f64 * step) * 1e6).round() / 1e6)
            .map(|v| v as f32)
            .collect()
    } else {
        s.split(',')
            .map(|v| v.trim().parse::<f32>().map_err(|e| format!("{v:?}: {e}")))
            .collect::<Result<_, _>>()?
    };
    if grid.is_empty()
        || grid.iter().any(|t| !(*t > 0.0 && *t < 1.0))
        || grid.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(format!(
            "thresholds must be ascending values in (0, 1), got {grid:?}"
        ));
    }
    Ok(grid)
}

/// Decoder overrides (`None` = the model default; `Some(0)` for smoothing/refractory = none):
/// `kws_models`' type, which the server resolves a `StreamConfig` with and `--local` resolves with
/// directly, so both get the same settings.
pub use kws_models::DecoderOverrides;

/// Set the `StreamConfig` fields that carry `o` (the wire convention is `kws_models::WireOverrides`,
/// whose inverse the server applies).
pub fn apply_overrides(o: DecoderOverrides, c: &mut v1::StreamConfig) {
    let w = kws_models::WireOverrides::from(o);
    c.hop_ms = w.hop_ms;
    c.smoothing_ms = w.smoothing_ms;
    c.no_smoothing = w.no_smoothing;
    c.refractory_ms = w.refractory_ms;
    c.no_refractory = w.no_refractory;
    c.first_stage_only = w.first_stage_only;
}

/// The model as the report names it (`name` is the served name, `model:variant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    pub name: String,
    pub version: String,
    pub variant: String,
}

/// One file's smoothed posteriors, whatever produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct FileScores {
    /// Keywords scored, in score order.
    pub keywords: Vec<String>,
    /// Refractory period of the stream's decoder (used for grid decoding).
    pub refractory_ms: u32,
    pub hop_ms: u32,
    pub smoothing_ms: u32,
    /// Every window in order: (start_ms, end_ms, smoothed posterior per keyword).
    pub windows: Vec<(u64, u64, Vec<f32>)>,
    /// Audio processed, in ms (the summary's `audio_ms_processed`).
    pub audio_ms: u64,
    /// The events the stream produced at its own settings, in order: (keyword index in `keywords`,
    /// start_ms, end_ms). With a cascade, the verifier's accepted candidates.
    pub events: Vec<(usize, u64, u64)>,
    /// The stream ran the model's cascade (first stage + verifier).
    pub cascade: bool,
}

/// Known-keyword labels of `item` for the server (others are dropped and counted).
fn known_labels(item: &EvalItem, keywords: &[String]) -> (Vec<v1::Label>, u64) {
    let mut ignored = 0;
    let labels = item
        .labels
        .iter()
        .filter(|l| {
            let known = keywords.contains(&l.keyword);
            ignored += u64::from(!known);
            known
        })
        .map(|l| v1::Label {
            keyword: l.keyword.clone(),
            start_ms: l.start_ms,
            end_ms: l.end_ms,
        })
        .collect();
    (labels, ignored)
}

/// One file's result: the model that scored it and the scores.
type Scored = Result<(ModelId, FileScores), EvalError>;

/// Score every file through the service at `client` (up to `jobs` streams at once). `progress` is
/// called with the number of files done.
pub async fn score_with_server(
    client: &Client,
    model: &str,
    items: &[EvalItem],
    overrides: DecoderOverrides,
    jobs: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<(ModelId, Vec<FileScores>), EvalError> {
    let info = client
        .clone()
        .model_info(model)
        .await
        .map_err(|source| EvalError::Server {
            file: PathBuf::from("<GetModelInfo>"),
            source,
        })?;
    let keywords = Arc::new(info.keywords.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let mut results: Vec<Option<(ModelId, FileScores)>> = vec![None; items.len()];
    let mut done = 0;
    progress(done);
    let mut store = |joined: Result<(usize, Scored), tokio::task::JoinError>| {
        let (i, r) = joined.map_err(|e| EvalError::Local(e.to_string()))?;
        results[i] = Some(r?);
        done += 1;
        progress(done);
        Ok::<(), EvalError>(())
    };
    for (i, item) in items.iter().enumerate() {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EvalError::Local("semaphore closed".into()))?;
        let (item, mut client, keywords, model) =
            (item.clone(), client.clone(), keywords.clone(), model.to_string());
        set.spawn(async move {
            let _permit = permit;
            let r = score_one_remote(&mut client, &model, &item, overrides, &keywords).await;
            (i, r)
        });
        // Reap finished files as we go, so that an error stops the run early.
        while let Some(joined) = set.try_join_next() {
            store(joined)?;
        }
    }
    while let Some(joined) = set.join_next().await {
        store(joined)?;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut model_id = None;
    for r in results {
        let (m, s) = r.ok_or_else(|| EvalError::Local("a file was not scored".into()))?;
        model_id.get_or_insert(m);
        out.push(s);
    }
    let model_id = model_id.ok_or_else(|| EvalError::Input("no files".into()))?;
    Ok((model_id, out))
}

async fn score_one_remote(
    client: &mut Client,
    model: &str,
    item: &EvalItem,
    overrides: DecoderOverrides,
    keywords: &[String],
) -> Result<(ModelId, FileScores), EvalError> {
    let audio = Audio::from_wav(&item.wav)?;
    let mut config = audio.format.stream_config();
    config.model = model.to_string();
    config.score_trace = true;
    config.disable_progress = true;
    config.known_negative = item.negative;
    config.client_stream_id = item
        .wav
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(100).collect())
        .unwrap_or_default();
    apply_overrides(overrides, &mut config);
    let (labels, _) = known_labels(item, keywords);
    let opts = SendOptions {
        format: audio.format,
        chunk_ms: 1000,
        pacing: Pacing::Unpaced,
    };
    let server = |source| EvalError::Server {
        file: item.wav.clone(),
        source,
    };
    let (ready, collected) = client
        .detect_pcm(config, &labels, Arc::new(audio.data), opts)
        .await
        .map_err(server)?;
    let resolved = ready
        .config
        .ok_or_else(|| server(ClientError::Protocol("Ready without config".into())))?;
    let m = ready.model.unwrap_or_default();
    let summary = collected
        .summary
        .ok_or_else(|| server(ClientError::Protocol("stream ended without a summary".into())))?;
    if summary.windows_scored != collected.windows.len() as u64 {
        return Err(server(ClientError::Protocol(format!(
            "{} windows scored but {} traced",
            summary.windows_scored,
            collected.windows.len()
        ))));
    }
    let scores = FileScores {
        keywords: resolved.keywords,
        refractory_ms: resolved.refractory_ms,
        hop_ms: resolved.hop_ms,
        smoothing_ms: resolved.smoothing_ms,
        windows: collected
            .windows
            .into_iter()
            .map(|w| (w.start_ms, w.end_ms, w.scores))
            .collect(),
        audio_ms: summary.audio_ms_processed,
        events: collected
            .events
            .iter()
            .map(|e| {
                let k = keywords.iter().position(|k| *k == e.keyword).ok_or_else(|| {
                    server(ClientError::Protocol(format!(
                        "event for {:?}, not a keyword of the model",
                        e.keyword
                    )))
                })?;
                Ok((k, e.start_ms, e.end_ms))
            })
            .collect::<Result<_, EvalError>>()?,
        cascade: resolved.cascade,
    };
    Ok((
        ModelId {
            name: m.name,
            version: m.version,
            variant: m.variant,
        },
        scores,
    ))
}

/// In-process scoring with the same pipeline the server runs (`--local`).
#[cfg(feature = "local")]
pub mod local {
    use std::path::Path;

    use kws_models::spotter::PROCESS_PIECE_FRAMES;
    use kws_models::{
        ClipScorer, Encoding as MEncoding, FirstStage, Manifest, OnnxScorer, OnnxStreamScorer, PcmFormat,
        ProcessError, ScorerOptions, Spotter, StreamConfig, StreamScorer, Verifier, WindowBatch,
    };

    use super::{DecoderOverrides, EvalError, EvalItem, FileScores, ModelId};
    use crate::audio::{Audio, Encoding};

    /// The first stage as the server would score it: a model with a `streaming` manifest section on
    /// its streaming graph, any other windowed.
    #[derive(Debug)]
    enum LocalScorer {
        Windowed(OnnxScorer),
        Streaming(OnnxStreamScorer),
    }

    /// A loaded model for local scoring.
    #[derive(Debug)]
    pub struct LocalModel {
        manifest: Manifest,
        scorer: LocalScorer,
        /// The second stage, for a manifest with a `verifier` section.
        verifier: Option<Verifier>,
        variant: String,
    }

    impl LocalModel {
        /// Load `variant` of the model in `model_dir` with ONNX Runtime from `ort_lib` (or the usual
        /// search: `$KWS_ORT_LIB`, `$ORT_DYLIB_PATH`, beside the executable). A streamable model
        /// (manifest `streaming` section) is scored on its streaming graph as the server does: of
        /// `variant` if the manifest has it, else fp32 (the report names the variant scored).
        pub fn load(model_dir: &Path, variant: &str, ort_lib: Option<&Path>) -> Result<Self, EvalError> {
            let manifest = Manifest::load(model_dir)
                .map_err(|e| EvalError::Local(format!("model {}: {e}", model_dir.display())))?;
            let options = ScorerOptions {
                library: ort_lib.map(Path::to_path_buf),
                ..ScorerOptions::default()
            };
            let err = |v: &str, e| EvalError::Local(format!("model {} ({v}): {e}", model_dir.display()));
            let (scorer, variant) = match &manifest.streaming {
                Some(s) => {
                    let v = s.served_variant(variant);
                    if v != variant {
                        eprintln!(
                            "note: {} has no {variant} streaming graph: scoring its fp32 one (as the server does)",
                            manifest.name
                        );
                    }
                    let s = OnnxStreamScorer::new(&manifest, v, &options).map_err(|e| err(v, e))?;
                    (LocalScorer::Streaming(s), v)
                }
                None => {
                    let s = OnnxScorer::new(&manifest, variant, &options).map_err(|e| err(variant, e))?;
                    (LocalScorer::Windowed(s), variant)
                }
            };
            let verifier =
                match &manifest.verifier {
                    Some(_) => Some(Verifier::from_manifest(&manifest, &options).map_err(|e| {
                        EvalError::Local(format!("model {} verifier: {e}", model_dir.display()))
                    })?),
                    None => None,
                };
            Ok(Self {
                manifest,
                scorer,
                verifier,
                variant: variant.to_string(),
            })
        }

        /// How the report names the model: the same as the server (`name:variant`).
        pub fn id(&self) -> ModelId {
            ModelId {
                name: format!("{}:{}", self.manifest.name, self.variant),
                version: self.manifest.version.clone(),
                variant: self.variant.clone(),
            }
        }

        /// Score one file, applying `overrides` the way the service resolves a StreamConfig.
        pub fn score(
            &mut self,
            item: &EvalItem,
            overrides: DecoderOverrides,
        ) -> Result<FileScores, EvalError> {
            let audio = Audio::from_wav(&item.wav)?;
            let m = &self.manifest;
            let encoding = match audio.format.encoding {
                Encoding::S16le => MEncoding::S16Le,
                Encoding::F32le => MEncoding::F32Le,
            };
            let format = PcmFormat::new(encoding, audio.format.sample_rate_hz, audio.format.channels)
                .map_err(|e| EvalError::Input(format!("{}: {e}", item.wav.display())))?;
            // The server's own resolution of a StreamConfig (all keywords, model thresholds).
            let config = StreamConfig::resolve(m, format, &[], [], overrides)
                .map_err(|e| EvalError::Input(e.to_string()))?;
            let (hop_ms, smoothing_ms, refractory_ms) = (
                config.hop_ms(),
                config.decoder.smoothing_ms,
                config.decoder.refractory_ms,
            );
            let cascade = config.cascade.is_some();
            let mut spotter = match &self.scorer {
                LocalScorer::Windowed(_) => Spotter::new(config, m.num_classes()),
                LocalScorer::Streaming(s) => {
                    Spotter::new_streaming(config, m.num_classes(), s.layout().clone())
                }
            }
            .map_err(|e| EvalError::Input(e.to_string()))?;
            let n = m.keywords.len();
            let mut windows = Vec::new();
            let mut events = Vec::new();
            let input = |e| EvalError::Input(format!("{}: {e}", item.wav.display()));
            let local = |e| match e {
                ProcessError::Score(e) => EvalError::Local(format!("inference: {e}")),
                e => EvalError::Local(e.to_string()),
            };
            // Piece by piece, each scored (and its candidates verified) before the next, like a
            // live stream: the cascade keeps only the recent audio (`kws_models::two_stage`).
            let mut batch = WindowBatch::new();
            let pieces = audio
                .data
                .chunks(PROCESS_PIECE_FRAMES * audio.format.frame_bytes());
            for piece in pieces.map(Some).chain([None]) {
                batch.clear();
                match piece {
                    Some(p) => spotter.push_pcm(p, &mut batch).map(|_| ()),
                    None => spotter.finish(&mut batch),
                }
                .map_err(input)?;
                let verifier = self.verifier.as_mut().map(|v| v as &mut dyn ClipScorer);
                let first_stage = match &mut self.scorer {
                    LocalScorer::Windowed(s) => FirstStage::Windowed(s),
                    LocalScorer::Streaming(s) => FirstStage::Streaming(s),
                };
                spotter
                    .score_pending(
                        first_stage,
                        verifier.filter(|_| cascade),
                        &batch,
                        |w, smoothed| windows.push((w.start_ms, w.end_ms, smoothed[..n].to_vec())),
                        |e| events.push((e.class, e.start_ms, e.end_ms)),
                    )
                    .map_err(local)?;
            }
            Ok(FileScores {
                keywords: m.keywords.clone(),
                refractory_ms,
                hop_ms,
                smoothing_ms,
                windows,
                audio_ms: spotter.audio_ms_processed(),
                events,
                cascade,
            })
        }
    }
}

/// Counts and rates at one threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub threshold: f32,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// TP / labels; null without labels.
    pub recall: Option<f64>,
    /// TP / (TP + FP); null without detections.
    pub precision: Option<f64>,
    /// 1 − recall; null without labels.
    pub miss_rate: Option<f64>,
    /// FP per hour of evaluated audio.
    pub fa_per_hour: f64,
}

/// The best threshold under a false-alarm budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub threshold: f32,
    pub recall: Option<f64>,
    pub fa_per_hour: f64,
}

/// One keyword's (or the overall) results over the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeywordReport {
    pub keyword: String,
    pub labels: u64,
    pub points: Vec<Point>,
    /// Best recall with FA/h <= 1; null if no threshold of the grid gets there.
    pub at_1_fa_per_hour: Option<OperatingPoint>,
    /// Best recall with FA/h <= 0.1.
    pub at_0_1_fa_per_hour: Option<OperatingPoint>,
}

/// The whole evaluation (also the JSON output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model: ModelId,
    pub files: usize,
    pub negative_files: usize,
    pub audio_ms: u64,
    pub audio_hours: f64,
    pub tolerance_ms: u64,
    pub hop_ms: u32,
    pub smoothing_ms: u32,
    pub refractory_ms: u32,
    /// Labels of words that are not keywords of the model, skipped.
    pub ignored_labels: u64,
    pub grid: Vec<f32>,
    pub keywords: Vec<KeywordReport>,
    pub overall: KeywordReport,
    /// The events the streams produced at their own settings (the model's operating point unless
    /// overridden), all keywords together. The grid above decodes the first stage's scores; with
    /// a cascade these events are the verifier's accepted candidates.
    pub events: StreamEvents,
}

/// Counts of the streams' own events against the labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEvents {
    /// The streams ran the model's cascade (first stage + verifier).
    pub cascade: bool,
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub recall: Option<f64>,
    pub precision: Option<f64>,
    pub fa_per_hour: f64,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn operating_point(points: &[Point], max_fa: f64) -> Option<OperatingPoint> {
    let mut best: Option<&Point> = None;
    for p in points.iter().filter(|p| p.fa_per_hour <= max_fa) {
        let better = match best {
            None => true,
            Some(b) => p.recall.unwrap_or(0.0) > b.recall.unwrap_or(0.0),
        };
        if better {
            best = Some(p);
        }
    }
    best.map(|p| OperatingPoint {
        threshold: p.threshold,
        recall: p.recall,
        fa_per_hour: p.fa_per_hour,
    })
}

fn keyword_report(
    keyword: String,
    grid: &[f32],
    tp: &[u64],
    fp: &[u64],
    fn_: &[u64],
    hours: f64,
) -> KeywordReport {
    let labels = tp.first().zip(fn_.first()).map(|(a, b)| a + b).unwrap_or(0);
    let points: Vec<Point> = grid
        .iter()
        .enumerate()
        .map(|(g, &t)| {
            let recall = ratio(tp[g], tp[g] + fn_[g]);
            Point {
                threshold: t,
                tp: tp[g],
                fp: fp[g],
                fn_: fn_[g],
                recall,
                precision: ratio(tp[g], tp[g] + fp[g]),
                miss_rate: recall.map(|r| 1.0 - r),
                fa_per_hour: if hours > 0.0 { fp[g] as f64 / hours } else { 0.0 },
            }
        })
        .collect();
    KeywordReport {
        keyword,
        labels,
        at_1_fa_per_hour: operating_point(&points, 1.0),
        at_0_1_fa_per_hour: operating_point(&points, 0.1),
        points,
    }
}

/// Decode every file's scores at each grid threshold, match against its labels, and aggregate.
pub fn evaluate(
    model: ModelId,
    items: &[EvalItem],
    scores: &[FileScores],
    grid: &[f32],
    tolerance_ms: u64,
) -> Result<Report, EvalError> {
    let first = scores
        .first()
        .ok_or_else(|| EvalError::Input("no files".into()))?;
    let keywords = first.keywords.clone();
    let n = keywords.len();
    let all: Vec<usize> = (0..n).collect();
    let mut tp = vec![vec![0u64; grid.len()]; n];
    let mut fp = vec![vec![0u64; grid.len()]; n];
    let mut fn_ = vec![vec![0u64; grid.len()]; n];
    let mut ignored = 0;
    let mut audio_ms = 0;
    let mut own_counts = (0u64, 0u64, 0u64);
    for (item, s) in items.iter().zip(scores) {
        if s.keywords != keywords || s.refractory_ms != first.refractory_ms || s.cascade != first.cascade {
            return Err(EvalError::Input(format!(
                "{}: scored with other keywords or decoder settings than the first file",
                item.wav.display()
            )));
        }
        audio_ms += s.audio_ms;
        let mut labels = Vec::new();
        for l in &item.labels {
            match keywords.iter().position(|k| *k == l.keyword) {
                Some(class) => labels.push(Label {
                    class,
                    start_ms: l.start_ms,
                    end_ms: l.end_ms,
                }),
                None => ignored += 1,
            }
        }
        let own: Vec<(usize, u64)> = s
            .events
            .iter()
            .map(|&(k, start, end)| (k, kws_models::eval::event_time(start, end)))
            .collect();
        let labels_or_none: &[Label] = if item.negative { &[] } else { &labels };
        let c = match_events(&own, labels_or_none, n, tolerance_ms);
        own_counts.0 += c.tp.iter().sum::<u64>();
        own_counts.1 += c.fp.iter().sum::<u64>();
        own_counts.2 += c.fn_.iter().sum::<u64>();
        let mut dec = GridDecoder::new(grid, &all, s.refractory_ms, usize::MAX);
        for (seq, (start_ms, end_ms, smoothed)) in s.windows.iter().enumerate() {
            let w = WindowMeta {
                seq: seq as u64,
                start_ms: *start_ms,
                end_ms: *end_ms,
            };
            dec.observe(&w, smoothed);
        }
        for g in 0..grid.len() {
            let c = match_events(dec.events(g), &labels, n, tolerance_ms);
            for k in 0..n {
                tp[k][g] += c.tp[k];
                fp[k][g] += c.fp[k];
                fn_[k][g] += c.fn_[k];
            }
        }
    }
    let hours = audio_ms as f64 / 3_600_000.0;
    let sum =
        |v: &[Vec<u64>]| -> Vec<u64> { (0..grid.len()).map(|g| v.iter().map(|k| k[g]).sum()).collect() };
    let overall = keyword_report("overall".into(), grid, &sum(&tp), &sum(&fp), &sum(&fn_), hours);
    let keyword_reports = (0..n)
        .map(|k| keyword_report(keywords[k].clone(), grid, &tp[k], &fp[k], &fn_[k], hours))
        .collect();
    Ok(Report {
        model,
        files: items.len(),
        negative_files: items.iter().filter(|i| i.negative).count(),
        audio_ms,
        audio_hours: hours,
        tolerance_ms,
        hop_ms: first.hop_ms,
        smoothing_ms: first.smoothing_ms,
        refractory_ms: first.refractory_ms,
        ignored_labels: ignored,
        grid: grid.to_vec(),
        keywords: keyword_reports,
        overall,
        events: StreamEvents {
            cascade: first.cascade,
            tp: own_counts.0,
            fp: own_counts.1,
            fn_: own_counts.2,
            recall: ratio(own_counts.0, own_counts.0 + own_counts.2),
            precision: ratio(own_counts.0, own_counts.0 + own_counts.1),
            fa_per_hour: if hours > 0.0 {
                own_counts.1 as f64 / hours
            } else {
                0.0
            },
        },
    })
}

/// A threshold as people write it (`kws_models::eval::threshold_label`: 0.30, 0.997, 0.9995), so the
/// streaming thresholds near 1 do not all print as "1.00".
pub fn fmt_threshold(t: f64) -> String {
    kws_models::eval::threshold_label(t as f32)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn op(o: &Option<OperatingPoint>) -> String {
    o.as_ref().map_or_else(
        || "none".into(),
        |o| format!("{} ({})", fmt_threshold(f64::from(o.threshold)), pct(o.recall)),
    )
}

/// The human-readable tables: per keyword (with labels or false alarms) recall, precision and FA/h
/// at each threshold, then the operating points of every keyword.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {} (version {}), {} files ({} negative), {:.3} h of audio, tolerance {} ms, hop {} ms, smoothing {} ms, refractory {} ms",
        r.model.name,
        r.model.version,
        r.files,
        r.negative_files,
        r.audio_hours,
        r.tolerance_ms,
        r.hop_ms,
        r.smoothing_ms,
        r.refractory_ms
    );
    if r.ignored_labels > 0 {
        let _ = writeln!(s, "{} labels of non-keywords ignored", r.ignored_labels);
    }
    let e = &r.events;
    let _ = writeln!(
        s,
        "stream events ({}): {} hits, {} false alarms, {} misses; recall {}, precision {}, {:.1} FA/h",
        if e.cascade {
            "cascade: first stage + verifier"
        } else {
            "first stage"
        },
        e.tp,
        e.fp,
        e.fn_,
        pct(e.recall),
        pct(e.precision),
        e.fa_per_hour
    );
    if e.cascade {
        let _ = writeln!(
            s,
            "(the threshold grid below decodes the first stage's scores alone)"
        );
    }
    for k in r.keywords.iter().chain(std::iter::once(&r.overall)) {
        let fps: u64 = k.points.iter().map(|p| p.fp).sum();
        if k.labels == 0 && fps == 0 && k.keyword != "overall" {
            continue;
        }
        let _ = writeln!(s, "\n{} ({} labels)", k.keyword, k.labels);
        let _ = writeln!(
            s,
            "  {:<6}  {:>7}  {:>9}  {:>8}  {:>5}  {:>5}  {:>5}",
            "thr", "recall", "precision", "FA/h", "TP", "FP", "FN"
        );
        for p in &k.points {
            let _ = writeln!(
                s,
                "  {:<6}  {:>7}  {:>9}  {:>8.2}  {:>5}  {:>5}  {:>5}",
                fmt_threshold(f64::from(p.threshold)),
                pct(p.recall),
                pct(p.precision),
                p.fa_per_hour,
                p.tp,
                p.fp,
                p.fn_
            );
        }
    }
    let _ = writeln!(
        s,
        "\n{:<10} {:>7}  {:>18}  {:>18}",
        "keyword", "labels", "thr @ <=1 FA/h", "thr @ <=0.1 FA/h"
    );
    for k in r.keywords.iter().chain(std::iter::once(&r.overall)) {
        let _ = writeln!(
            s,
            "{:<10} {:>7}  {:>18}  {:>18}",
            k.keyword,
            k.labels,
            op(&k.at_1_fa_per_hour),
            op(&k.at_0_1_fa_per_hour)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_print_with_the_digits_that_matter() {
        assert_eq!(fmt_threshold(0.3), "0.30");
        assert_eq!(fmt_threshold(f64::from(0.3f32)), "0.30");
        assert_eq!(fmt_threshold(f64::from(0.997f32)), "0.997");
        assert_eq!(fmt_threshold(f64::from(0.9995f32)), "0.9995");
        assert_eq!(fmt_threshold(0.95), "0.95");
        assert_eq!(fmt_threshold(1.0), "1.00");
    }

    #[test]
    fn grids() {
        let g = parse_grid("0.05:0.95:0.05").expect("grid");
        assert_eq!(g.len(), 19);
        assert_eq!((g[0], g[2], g[18]), (0.05, 0.15, 0.95));
        assert_eq!(parse_grid("0.2, 0.5").expect("list"), vec![0.2, 0.5]);
        assert!(parse_grid("0.5,0.2").is_err());
        assert!(parse_grid("0:1:0.5").is_err(), "0 and 1 are outside (0, 1)");
    }

    #[test]
    fn manifest_lines_and_sidecars() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = dir.path().join("m.jsonl");
        std::fs::write(
            &m,
            "# comment\n{\"wav\": \"a.wav\", \"labels\": [{\"keyword\": \"yes\", \"start_ms\": 1, \"end_ms\": 2}]}\n\n{\"wav\": \"/abs/b.wav\", \"negative\": true}\n",
        )
        .expect("write");
        let items = load_manifest(&m).expect("manifest");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].wav, dir.path().join("a.wav"));
        assert!(!items[0].negative && items[1].negative);
        assert_eq!(items[1].wav, PathBuf::from("/abs/b.wav"));
        std::fs::write(&m, "{\"wav\": \"a.wav\", \"negative\": true, \"labels\": [{\"keyword\": \"yes\", \"start_ms\": 1, \"end_ms\": 2}]}\n")
            .expect("write");
        let e = load_manifest(&m).expect_err("negative with labels");
        assert!(e.to_string().contains("m.jsonl:1"), "{e}");

        let sub = dir.path().join("d");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("x.wav"), b"").expect("write");
        std::fs::write(sub.join("y.wav"), b"").expect("write");
        std::fs::write(
            sub.join("y.json"),
            "{\"labels\": [{\"keyword\": \"no\", \"start_ms\": 5, \"end_ms\": 9}]}",
        )
        .expect("write");
        let items = load_dir(&sub).expect("dir");
        assert!(items[0].negative && items[0].labels.is_empty());
        assert!(!items[1].negative && items[1].labels.len() == 1);
    }

    #[test]
    fn evaluation_counts_and_operating_points() {
        let grid = [0.3, 0.6];
        let scores = |peak: f32| FileScores {
            keywords: vec!["yes".into(), "no".into()],
            refractory_ms: 1000,
            hop_ms: 20,
            smoothing_ms: 60,
            windows: (0..100u64)
                .map(|i| {
                    (
                        i * 20,
                        i * 20 + 1000,
                        if i == 50 { vec![peak, 0.0] } else { vec![0.0, 0.0] },
                    )
                })
                .collect(),
            audio_ms: 1_800_000, // half an hour each
            // The stream's own event (window 50: [1000, 2000) ms), fired in both files.
            events: vec![(0, 1000, 2000)],
            cascade: true,
        };
        let items = [
            EvalItem {
                wav: "pos.wav".into(),
                negative: false,
                labels: vec![
                    FileLabel {
                        keyword: "yes".into(),
                        start_ms: 1400,
                        end_ms: 1600,
                    },
                    FileLabel {
                        keyword: "_unknown_".into(),
                        start_ms: 0,
                        end_ms: 10,
                    },
                ],
            },
            EvalItem {
                wav: "neg.wav".into(),
                negative: true,
                labels: vec![],
            },
        ];
        let model = ModelId {
            name: "m".into(),
            version: "1".into(),
            variant: "int8".into(),
        };
        let r = evaluate(model, &items, &[scores(0.7), scores(0.4)], &grid, 500).expect("eval");
        assert_eq!(r.ignored_labels, 1);
        assert!((r.audio_hours - 1.0).abs() < 1e-12);
        let yes = &r.keywords[0];
        assert_eq!(yes.labels, 1);
        // At 0.3 the positive file hits and the negative file fires once (1 FA/h); at 0.6 only the hit.
        assert_eq!((yes.points[0].tp, yes.points[0].fp, yes.points[0].fn_), (1, 1, 0));
        assert_eq!((yes.points[1].tp, yes.points[1].fp), (1, 0));
        assert_eq!(yes.points[0].precision, Some(0.5));
        assert_eq!(yes.at_1_fa_per_hour.as_ref().map(|o| o.threshold), Some(0.3));
        assert_eq!(yes.at_0_1_fa_per_hour.as_ref().map(|o| o.threshold), Some(0.6));
        assert_eq!(r.keywords[1].points[0].recall, None);
        assert_eq!(r.overall.points[0].fp, 1);
        // The streams' own events: a hit on the positive file, a false alarm on the negative one.
        let e = &r.events;
        assert_eq!((e.cascade, e.tp, e.fp, e.fn_), (true, 1, 1, 0));
        assert_eq!(
            (e.recall, e.precision, e.fa_per_hour),
            (Some(1.0), Some(0.5), 1.0)
        );
    }
}
