//! The second-stage verifier: a small head on Google's `speech_embedding` features re-scores the
//! first stage's candidates (research: `training/kws_train/verifier.py`, `RESEARCH.md` "Lever 4/5").
//!
//! This module gives the audio geometry of a candidate ([`View`], [`ClipRange`]) and the scorer
//! ([`Verifier`], feature `onnx`); [`crate::cascade`] holds the decision rule and
//! [`crate::two_stage`] runs both inside a [`crate::Spotter`].
//!
//! # Geometry
//!
//! Three ONNX models run in turn (files and I/O contract: `models/speech-embedding/README.md`):
//!
//! ```text
//! clip [samples] ─▶ mel (×32767 in, x/10 + 2 out) ─▶ [frames, 32]   frame f: samples [160 f, 160 f + 512)
//!      ─▶ embedding, one per 8 frames ─▶ [n, 96]   embedding j: frames [8 j, 8 j + 76)
//!      ─▶ view: 9 consecutive embeddings ─▶ head ─▶ probs [12]
//! ```
//!
//! Stream embedding `j` therefore covers samples `[1280 j, 1280 j + 12 672)` and a view of 9
//! embeddings starting at `j0` covers 140 mel frames, the clip `[1280 j0, 1280 j0 + 22 880)`. A
//! candidate at stream time `t` (ms; the centre of the first stage's firing window) uses the view
//! starting at `j0 = round_half_even((t + offset − 400) / 80) − 4` ([`View::at`]), which is
//! `verifier.view_start` of the Python research code (Python's `round` rounds halves to even).
//!
//! **Stream edges** follow the Python research code, which looks views up in the whole stream's
//! embeddings and repeats the edge embedding where a view runs off the stream: for `j0 < 0` the clip
//! starts at sample 0 and the first embedding stands in for the `−j0` missing ones
//! ([`ClipRange::lead`]); a clip cut short by the end of the stream repeats its last embedding.
//!
//! **Clip vs stream embeddings.** The mel model clamps every value at 80 dB below the maximum of its
//! whole input, so an embedding computed from a clip equals the one computed from the whole stream
//! only where no frame of the stream is floored differently. On the 73 validation streams of the
//! research it differed for part of the clips (max |Δ embedding| 25 on values of ±30; of 2 087
//! candidates, the head's probabilities moved by > 0.01 for 165 and by at most 0.20; 0–2 of 130–249
//! cascade events changed): see `models/README.md`, "Verifier". The clip is what a live stream can
//! compute, so it is the definition here: one mel run per clip, never across a batch (the clamp
//! would couple the clips of a batch).

/// Mel bands of the feature model.
pub const MEL_BINS: usize = 32;
/// Mel frames per embedding.
pub const EMB_FRAMES: usize = 76;
/// Mel frames between consecutive embeddings (80 ms).
pub const EMB_STEP: usize = 8;
/// Values per embedding.
pub const EMB_DIM: usize = 96;
/// Samples per mel frame step (10 ms at 16 kHz).
pub const MEL_HOP: usize = 160;
/// Samples of one mel frame (the STFT length; no padding).
pub const MEL_FRAME: usize = 512;
/// Samples between consecutive embeddings.
pub const EMB_HOP_SAMPLES: usize = EMB_STEP * MEL_HOP;
/// Milliseconds between consecutive embeddings.
pub const EMB_MS: i64 = 80;
/// Stream time (ms) assigned to the centre of embedding 0 (`verifier.EMB_CENTRE_MS`).
pub const EMB_CENTRE_MS: i64 = 400;
/// Embeddings per view of the research head.
pub const VIEW_EMBEDDINGS: usize = 9;
/// Output classes of a head (the 10 keywords, `_silence_`, `_unknown_`).
pub const HEAD_CLASSES: usize = 12;
/// The mel model's input scale: float audio in [-1, 1] times this.
pub const INT16_SCALE: f32 = 32767.0;
/// Largest view accepted (embeddings).
pub const MAX_VIEW_EMBEDDINGS: usize = 64;

/// Mel frames the model computes from `samples` samples: `floor((samples − 512) / 160) + 1`.
pub const fn mel_frames(samples: usize) -> usize {
    if samples < MEL_FRAME {
        0
    } else {
        (samples - MEL_FRAME) / MEL_HOP + 1
    }
}

/// Embeddings in `frames` mel frames.
pub const fn embeddings_in(frames: usize) -> usize {
    if frames < EMB_FRAMES {
        0
    } else {
        (frames - EMB_FRAMES) / EMB_STEP + 1
    }
}

/// Mel frames of a view of `embeddings` embeddings (140 for 9).
pub const fn view_frames(embeddings: usize) -> usize {
    EMB_FRAMES + EMB_STEP * embeddings.saturating_sub(1)
}

/// Samples of the clip of `embeddings` embeddings: `(view_frames + 3) · 160` (22 880 for 9). The
/// last 128 samples are read by no frame; the length follows openWakeWord's `samples / 160 − 3` frames.
pub const fn clip_samples(embeddings: usize) -> usize {
    (view_frames(embeddings) + 3) * MEL_HOP
}

/// Clip samples of the research head's view (9 embeddings).
pub const CLIP_SAMPLES: usize = clip_samples(VIEW_EMBEDDINGS);

/// Shortest clip the verifier accepts: one embedding (12 672 samples).
pub const MIN_CLIP_SAMPLES: usize = MEL_FRAME + (EMB_FRAMES - 1) * MEL_HOP;

/// Python's `round` on `n / d` (`d > 0`): nearest integer, halves to even.
fn div_round_half_even(n: i64, d: i64) -> i64 {
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// The embeddings a candidate's verifier input is made of: `len` consecutive stream embeddings
/// starting at `first` (which is negative for candidates in the first ~180 ms of windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Index of the first stream embedding (may be negative).
    pub first: i64,
    /// Embeddings in the view (9 for the research head).
    pub len: usize,
}

impl View {
    /// The view of `len` embeddings centred on stream time `t_ms + offset_ms` (ms): `first =
    /// round_half_even((t_ms + offset_ms − 400) / 80) − len / 2`. For a first-stage window
    /// `[start_ms, end_ms)`, `t_ms = (start_ms + end_ms) / 2` (integer division, as in Python).
    pub fn at(t_ms: i64, offset_ms: i64, len: usize) -> Self {
        let centre = div_round_half_even(t_ms + offset_ms - EMB_CENTRE_MS, EMB_MS);
        Self {
            first: centre - (len / 2) as i64,
            len,
        }
    }

    /// The stream samples to hand to [`Verifier::score_clips`] for this view. Pure; see
    /// [`ClipRange`].
    pub fn clip(&self) -> ClipRange {
        let len = self.len.max(1);
        let lead = usize::try_from(-self.first).unwrap_or(0).min(len - 1);
        let start_emb = u64::try_from(self.first).unwrap_or(0);
        let start = start_emb * EMB_HOP_SAMPLES as u64;
        ClipRange {
            start,
            end: start + clip_samples(len - lead) as u64,
            lead,
        }
    }
}

/// Samples `[start, end)` of a stream (16 kHz, sample 0 = the stream's first) that make a view.
///
/// - `lead > 0` at the start of a stream (the view begins before embedding 0): the clip begins at
///   sample 0, is `lead` embeddings shorter, and the verifier repeats its first embedding `lead`
///   times in front.
/// - A stream that ends before `end`: pass the samples that exist (at least
///   [`MIN_CLIP_SAMPLES`]); the verifier repeats the clip's last embedding.
///
/// The verdict can be computed once sample `end − 1` exists: for the research head (9 embeddings,
/// offset 0) `end` lies 170–250 ms after the end of the candidate's first-stage window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipRange {
    /// First sample (inclusive).
    pub start: u64,
    /// One past the last sample.
    pub end: u64,
    /// Copies of the clip's first embedding placed before it.
    pub lead: usize,
}

impl ClipRange {
    /// Samples in the range.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Never true (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The clip out of a whole stream held in memory (cut short at the stream's end).
    pub fn slice<'a>(&self, stream: &'a [f32]) -> Clip<'a> {
        let len = stream.len() as u64;
        let (a, b) = (self.start.min(len) as usize, self.end.min(len) as usize);
        Clip {
            audio: &stream[a..b],
            lead: self.lead,
        }
    }
}

/// One verifier input: the samples of a [`ClipRange`] (floats in [-1, 1], 16 kHz) and its `lead`.
#[derive(Debug, Clone, Copy)]
pub struct Clip<'a> {
    pub audio: &'a [f32],
    pub lead: usize,
}

impl<'a> From<&'a [f32]> for Clip<'a> {
    fn from(audio: &'a [f32]) -> Self {
        Self { audio, lead: 0 }
    }
}

/// A verifier call that cannot be computed. Nothing is scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    #[error("clip {index} has {got} samples: use {min}..={max} samples (16 kHz) for a view with lead {lead}")]
    ClipLength {
        index: usize,
        got: usize,
        min: usize,
        max: usize,
        lead: usize,
    },
    #[error("clip {index} has lead {lead}: a view of {len} embeddings allows 0..{len}")]
    Lead { index: usize, lead: usize, len: usize },
    #[error("clip {index}, sample {sample} is {value}: samples must be finite")]
    BadSample { index: usize, sample: usize, value: f32 },
    #[error("output buffer of {got} values does not fit {n} clips x {classes} classes")]
    OutputShape { got: usize, n: usize, classes: usize },
    #[error("{model} model returned {got} values, expected {want}")]
    ModelOutput {
        model: &'static str,
        got: usize,
        want: usize,
    },
    #[error("inference failed: {0}")]
    Runtime(String),
}

/// Check clip `index` of a call for a view of `view` embeddings (length for its `lead`, finite
/// samples); returns the number of embeddings the verifier computes from it.
pub fn check_clip(index: usize, clip: &Clip<'_>, view: usize) -> Result<usize, VerifyError> {
    if clip.lead >= view {
        return Err(VerifyError::Lead {
            index,
            lead: clip.lead,
            len: view,
        });
    }
    let max = clip_samples(view - clip.lead);
    let n = clip.audio.len();
    if !(MIN_CLIP_SAMPLES..=max).contains(&n) {
        return Err(VerifyError::ClipLength {
            index,
            got: n,
            min: MIN_CLIP_SAMPLES,
            max,
            lead: clip.lead,
        });
    }
    if let Some((sample, &value)) = clip.audio.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(VerifyError::BadSample { index, sample, value });
    }
    Ok(embeddings_in(mel_frames(n)).min(view - clip.lead))
}

/// The verdict's probabilities of each clip from the head's probabilities of its `per` views
/// (`probs`: `[N · per, 12]`, a clip's views consecutive) into `out` (`[N, 12]`): per class the
/// minimum over the views, so a keyword must be heard in every view (`combine_views` in the
/// research code). `per` 1 copies.
pub fn combine_views(probs: &[f32], per: usize, out: &mut [f32]) {
    let per = per.max(1);
    for (row, views) in out
        .chunks_exact_mut(HEAD_CLASSES)
        .zip(probs.chunks_exact(per * HEAD_CLASSES))
    {
        row.copy_from_slice(&views[..HEAD_CLASSES]);
        for view in views.chunks_exact(HEAD_CLASSES).skip(1) {
            for (o, &p) in row.iter_mut().zip(view) {
                // `min` would drop a NaN; keep it, so a broken head never accepts.
                if p < *o || p.is_nan() {
                    *o = p;
                }
            }
        }
    }
}

#[cfg(feature = "onnx")]
pub use onnx::{Verifier, VerifierFiles};

#[cfg(feature = "onnx")]
mod onnx {
    use std::path::{Path, PathBuf};

    use ort::session::Session;
    use ort::value::{TensorElementType, TensorRef, ValueType};

    use super::*;
    use crate::error::{ModelError, RuntimeError};
    use crate::manifest::Manifest;
    use crate::scorer::{ScorerOptions, build_session, init_runtime};

    /// The three model files of a verifier, already read (and, from a manifest, checked).
    #[derive(Debug, Clone)]
    pub struct VerifierFiles {
        pub mel: (PathBuf, Vec<u8>),
        pub embedding: (PathBuf, Vec<u8>),
        pub head: (PathBuf, Vec<u8>),
    }

    impl VerifierFiles {
        /// Read three files without checksums (tools and tests; a manifest checks them).
        pub fn read(mel: &Path, embedding: &Path, head: &Path) -> Result<Self, ModelError> {
            let read = |p: &Path| {
                std::fs::read(p)
                    .map(|b| (p.to_path_buf(), b))
                    .map_err(|source| ModelError::Io {
                        path: p.to_path_buf(),
                        source,
                    })
            };
            Ok(Self {
                mel: read(mel)?,
                embedding: read(embedding)?,
                head: read(head)?,
            })
        }
    }

    /// Scores candidate clips: mel (once per clip) → embeddings (once per batch) → head (once per
    /// batch). One `Verifier` per inference thread (`Session::run` takes `&mut self`); calls block
    /// for the duration of the three runs and reuse internal buffers.
    pub struct Verifier {
        mel: Session,
        embedding: Session,
        head: Session,
        names: [(String, String); 3],
        view: usize,
        shifts: usize,
        head_path: PathBuf,
        mel_in: Vec<f32>,
        frames: Vec<f32>,
        emb_in: Vec<f32>,
        emb_out: Vec<f32>,
        head_in: Vec<f32>,
    }

    impl std::fmt::Debug for Verifier {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Verifier")
                .field("head", &self.head_path)
                .field("view", &self.view)
                .field("view_shifts", &self.shifts)
                .finish()
        }
    }

    fn float_dims(t: &ValueType) -> Option<Vec<i64>> {
        match t {
            ValueType::Tensor { ty, shape, .. } if *ty == TensorElementType::Float32 => {
                Some(shape.iter().copied().collect())
            }
            _ => None,
        }
    }

    /// A session with one float input and one float output whose shapes match `want_in`/`want_out`
    /// (`-1` = any size, dynamic or not).
    fn session(
        env: &'static ort::environment::Environment,
        (path, bytes): &(PathBuf, Vec<u8>),
        options: &ScorerOptions,
        want_in: &[i64],
        want_out: &[i64],
    ) -> Result<(Session, String, String), RuntimeError> {
        let session = build_session(env, path, bytes, options)?;
        let mismatch = |reason: String| {
            RuntimeError::Model(ModelError::Shape {
                path: path.clone(),
                reason,
            })
        };
        let fits = |got: Option<Vec<i64>>, want: &[i64]| {
            got.is_some_and(|g| g.len() == want.len() && g.iter().zip(want).all(|(g, w)| *w == -1 || g == w))
        };
        let ([input], [output]) = (session.inputs(), session.outputs()) else {
            return Err(mismatch(format!(
                "{} inputs and {} outputs, expected 1 and 1",
                session.inputs().len(),
                session.outputs().len()
            )));
        };
        if !fits(float_dims(input.dtype()), want_in) || !fits(float_dims(output.dtype()), want_out) {
            return Err(mismatch(format!(
                "input {} {:?} and output {} {:?}; expected float32 {want_in:?} -> {want_out:?}",
                input.name(),
                input.dtype(),
                output.name(),
                output.dtype()
            )));
        }
        let names = (input.name().to_string(), output.name().to_string());
        Ok((session, names.0, names.1))
    }

    impl Verifier {
        /// Load the verifier of `manifest` (its `verifier` section): every file is checked against
        /// its sha256 and every graph against the contract.
        pub fn from_manifest(manifest: &Manifest, options: &ScorerOptions) -> Result<Self, RuntimeError> {
            let Some(spec) = &manifest.verifier else {
                return Err(RuntimeError::Model(ModelError::Manifest {
                    path: manifest.dir().join(crate::manifest::MANIFEST_FILE),
                    reason: "no `verifier` section".into(),
                }));
            };
            let files = spec.read_verified(manifest.dir())?;
            Self::new(
                &files,
                spec.embeddings_per_view,
                spec.view_shifts,
                manifest.num_classes(),
                options,
            )
        }

        /// Build from files already read: views of `view` embeddings, `shifts` shifted views on each
        /// side of a clip's view (its clips hold `view + 2 · shifts` embeddings; the manifest's
        /// `verifier.view_shifts`), heads with `classes` outputs (must be [`HEAD_CLASSES`]).
        pub fn new(
            files: &VerifierFiles,
            view: usize,
            shifts: usize,
            classes: usize,
            options: &ScorerOptions,
        ) -> Result<Self, RuntimeError> {
            let env = init_runtime(options.library.as_deref())?;
            if classes != HEAD_CLASSES
                || !(1..=MAX_VIEW_EMBEDDINGS).contains(&view)
                || shifts > MAX_VIEW_EMBEDDINGS / 2
                || view + 2 * shifts > MAX_VIEW_EMBEDDINGS
            {
                return Err(RuntimeError::Model(ModelError::Shape {
                    path: files.head.0.clone(),
                    reason: format!(
                        "{classes} classes, views of {view} embeddings and {shifts} shifted views a side; supported: {HEAD_CLASSES} classes, clips of 1..={MAX_VIEW_EMBEDDINGS} embeddings"
                    ),
                }));
            }
            let (mel, mi, mo) = session(env, &files.mel, options, &[-1, -1], &[-1, 1, -1, MEL_BINS as i64])?;
            let (embedding, ei, eo) = session(
                env,
                &files.embedding,
                options,
                &[-1, EMB_FRAMES as i64, MEL_BINS as i64, 1],
                &[-1, 1, 1, EMB_DIM as i64],
            )?;
            let (head, hi, ho) = session(
                env,
                &files.head,
                options,
                &[-1, view as i64, EMB_DIM as i64],
                &[-1, classes as i64],
            )?;
            Ok(Self {
                mel,
                embedding,
                head,
                names: [(mi, mo), (ei, eo), (hi, ho)],
                view,
                shifts,
                head_path: files.head.0.clone(),
                mel_in: Vec::new(),
                frames: Vec::new(),
                emb_in: Vec::new(),
                emb_out: Vec::new(),
                head_in: Vec::new(),
            })
        }

        /// Embeddings per view (the head's input).
        pub fn view_len(&self) -> usize {
            self.view
        }

        /// Shifted views on each side of a clip's view.
        pub fn view_shifts(&self) -> usize {
            self.shifts
        }

        /// Embeddings per clip: `view_len() + 2 · view_shifts()`.
        pub fn clip_embeddings(&self) -> usize {
            self.view + 2 * self.shifts
        }

        /// Head inputs per clip: `2 · view_shifts() + 1`.
        fn views_per_clip(&self) -> usize {
            2 * self.shifts + 1
        }

        /// The head file this verifier was built from.
        pub fn head_path(&self) -> &Path {
            &self.head_path
        }

        /// Scaled mel frames (`x / 10 + 2`, `[frames, 32]` row-major) of one clip into `self.frames`.
        fn mel_frames_of(&mut self, audio: &[f32]) -> Result<usize, VerifyError> {
            let err = |e: ort::Error| VerifyError::Runtime(e.to_string());
            self.mel_in.clear();
            self.mel_in.extend(audio.iter().map(|x| x * INT16_SCALE));
            let tensor =
                TensorRef::from_array_view(([1, audio.len()], self.mel_in.as_slice())).map_err(err)?;
            let (input, output) = (&self.names[0].0, &self.names[0].1);
            let outputs = self
                .mel
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(err)?;
            let (_, spec) = outputs[output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            let frames = mel_frames(audio.len());
            if spec.len() != frames * MEL_BINS {
                return Err(VerifyError::ModelOutput {
                    model: "mel",
                    got: spec.len(),
                    want: frames * MEL_BINS,
                });
            }
            self.frames.clear();
            self.frames.extend(spec.iter().map(|v| v / 10.0 + 2.0));
            Ok(frames)
        }

        /// The head inputs of `clips`: `[N · (2 · shifts + 1), view, 96]` row-major into `out`
        /// (replaced): per clip its views starting 0, 1, … embeddings into the clip (the middle one
        /// is the candidate's). One mel run per clip and one embedding run for the batch.
        pub fn views(&mut self, clips: &[Clip<'_>], out: &mut Vec<f32>) -> Result<(), VerifyError> {
            let (clip_len, per, view) = (self.clip_embeddings(), self.views_per_clip(), self.view);
            let counts = clips
                .iter()
                .enumerate()
                .map(|(i, c)| check_clip(i, c, clip_len))
                .collect::<Result<Vec<_>, _>>()?;
            let total: usize = counts.iter().sum();
            out.clear();
            if clips.is_empty() {
                return Ok(());
            }
            self.emb_in.clear();
            self.emb_in.reserve(total * EMB_FRAMES * MEL_BINS);
            for (clip, &n) in clips.iter().zip(&counts) {
                self.mel_frames_of(clip.audio)?;
                for j in 0..n {
                    let a = j * EMB_STEP * MEL_BINS;
                    self.emb_in
                        .extend_from_slice(&self.frames[a..a + EMB_FRAMES * MEL_BINS]);
                }
            }
            let err = |e: ort::Error| VerifyError::Runtime(e.to_string());
            let tensor =
                TensorRef::from_array_view(([total, EMB_FRAMES, MEL_BINS, 1], self.emb_in.as_slice()))
                    .map_err(err)?;
            let (input, output) = (&self.names[1].0, &self.names[1].1);
            let outputs = self
                .embedding
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(err)?;
            let (_, emb) = outputs[output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            if emb.len() != total * EMB_DIM {
                return Err(VerifyError::ModelOutput {
                    model: "embedding",
                    got: emb.len(),
                    want: total * EMB_DIM,
                });
            }
            self.emb_out.clear();
            self.emb_out.extend_from_slice(emb);
            out.reserve(clips.len() * per * view * EMB_DIM);
            let mut base = 0;
            for (clip, &n) in clips.iter().zip(&counts) {
                for shift in 0..per {
                    for k in shift..shift + view {
                        // Edge embeddings repeat, as `verifier.take_view` does in the stream.
                        let j = k.saturating_sub(clip.lead).min(n - 1);
                        let a = (base + j) * EMB_DIM;
                        out.extend_from_slice(&self.emb_out[a..a + EMB_DIM]);
                    }
                }
                base += n;
            }
            Ok(())
        }

        /// Score `clips` into `out` (`N × 12` probabilities: the head's softmax, or with shifted
        /// views per class the minimum over a clip's views, which need not sum to 1). Blocks;
        /// allocates only when the internal buffers grow.
        pub fn score_into(&mut self, clips: &[Clip<'_>], out: &mut [f32]) -> Result<(), VerifyError> {
            let n = clips.len();
            if out.len() != n * HEAD_CLASSES {
                return Err(VerifyError::OutputShape {
                    got: out.len(),
                    n,
                    classes: HEAD_CLASSES,
                });
            }
            if n == 0 {
                return Ok(());
            }
            let mut head_in = std::mem::take(&mut self.head_in);
            let per = self.views_per_clip();
            let result = self.views(clips, &mut head_in).and_then(|()| {
                let err = |e: ort::Error| VerifyError::Runtime(e.to_string());
                let tensor = TensorRef::from_array_view(([n * per, self.view, EMB_DIM], head_in.as_slice()))
                    .map_err(err)?;
                let (input, output) = (&self.names[2].0, &self.names[2].1);
                let outputs = self
                    .head
                    .run(ort::inputs![input.as_str() => tensor])
                    .map_err(err)?;
                let (_, probs) = outputs[output.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(err)?;
                if probs.len() != out.len() * per {
                    return Err(VerifyError::ModelOutput {
                        model: "head",
                        got: probs.len(),
                        want: out.len() * per,
                    });
                }
                combine_views(probs, per, out);
                Ok(())
            });
            self.head_in = head_in;
            result
        }

        /// Score full clips (`lead` 0, [`CLIP_SAMPLES`] samples for 9 embeddings, or shorter at the
        /// end of a stream). Allocates the result.
        pub fn score(&mut self, clips: &[&[f32]]) -> Result<Vec<[f32; HEAD_CLASSES]>, VerifyError> {
            let clips: Vec<Clip<'_>> = clips.iter().map(|&c| Clip::from(c)).collect();
            self.score_clips(&clips)
        }

        /// Score clips with their `lead` (see [`ClipRange`]). Allocates the result.
        pub fn score_clips(&mut self, clips: &[Clip<'_>]) -> Result<Vec<[f32; HEAD_CLASSES]>, VerifyError> {
            let mut flat = vec![0.0; clips.len() * HEAD_CLASSES];
            self.score_into(clips, &mut flat)?;
            Ok(flat
                .chunks_exact(HEAD_CLASSES)
                .map(|c| {
                    let mut p = [0.0; HEAD_CLASSES];
                    p.copy_from_slice(c);
                    p
                })
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_views_combine_to_their_per_class_minimum() {
        let row = |f: fn(usize) -> f32| (0..HEAD_CLASSES).map(f).collect::<Vec<f32>>();
        // Two clips of three views each.
        let mut probs = Vec::new();
        probs.extend(row(|c| c as f32 / 100.0));
        probs.extend(row(|c| 0.5 - c as f32 / 100.0));
        probs.extend(row(|_| 0.3));
        probs.extend(row(|_| 0.9));
        probs.extend(row(|c| if c == 4 { f32::NAN } else { 0.8 }));
        probs.extend(row(|_| 0.7));
        let mut out = vec![-1.0; 2 * HEAD_CLASSES];
        combine_views(&probs, 3, &mut out);
        for (c, &got) in out[..HEAD_CLASSES].iter().enumerate() {
            let want = (c as f32 / 100.0).min(0.5 - c as f32 / 100.0).min(0.3);
            assert_eq!(got, want, "class {c}");
        }
        // A NaN in any view is kept: such a verdict never accepts.
        assert!(out[HEAD_CLASSES + 4].is_nan());
        assert_eq!(out[HEAD_CLASSES], 0.7);
        // One view per clip: a copy.
        let mut one = vec![0.0; 2 * HEAD_CLASSES];
        combine_views(&probs[..2 * HEAD_CLASSES], 1, &mut one);
        assert_eq!(one, probs[..2 * HEAD_CLASSES]);
    }

    #[test]
    fn geometry_constants() {
        assert_eq!(view_frames(9), 140);
        assert_eq!(CLIP_SAMPLES, 22_880);
        assert_eq!(mel_frames(CLIP_SAMPLES), 140);
        assert_eq!(mel_frames(22_752), 140);
        assert_eq!(mel_frames(22_751), 139);
        assert_eq!(mel_frames(660), 1);
        assert_eq!(embeddings_in(mel_frames(CLIP_SAMPLES)), 9);
        assert_eq!(embeddings_in(mel_frames(MIN_CLIP_SAMPLES)), 1);
        assert_eq!(embeddings_in(mel_frames(MIN_CLIP_SAMPLES - 1)), 0);
    }

    #[test]
    fn round_half_even_like_python() {
        // Python: [round(x / 2) for x in range(-7, 8)]
        let want = [-4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4];
        let got: Vec<i64> = (-7..8).map(|n| div_round_half_even(n, 2)).collect();
        assert_eq!(got, want);
        assert_eq!(div_round_half_even(120, 80), 2); // 1.5 -> 2
        assert_eq!(div_round_half_even(200, 80), 2); // 2.5 -> 2
        assert_eq!(div_round_half_even(-40, 80), 0); // -0.5 -> 0
        assert_eq!(div_round_half_even(-120, 80), -2); // -1.5 -> -2
    }

    #[test]
    fn view_and_clip_of_a_candidate() {
        // Window [0, 1000) -> t = 500 -> round(100 / 80) - 4 = -3.
        let v = View::at(500, 0, 9);
        assert_eq!(v, View { first: -3, len: 9 });
        assert_eq!(
            v.clip(),
            ClipRange {
                start: 0,
                end: clip_samples(6) as u64,
                lead: 3
            }
        );
        let v = View::at(10_500, 0, 9);
        assert_eq!(v.first, 126 - 4);
        let c = v.clip();
        assert_eq!((c.start, c.len(), c.lead), (122 * 1280, CLIP_SAMPLES, 0));
        // The centre of the view lies within 40 ms of the candidate time.
        for t in (500..5000).step_by(10) {
            let v = View::at(t, 0, 9);
            let centre = EMB_CENTRE_MS + EMB_MS * (v.first + 4);
            assert!((centre - t).abs() <= EMB_MS / 2, "t {t}");
        }
        assert_eq!(View::at(1000, 160, 9).first, View::at(1000, 0, 9).first + 2);
    }

    #[test]
    fn clip_checks() {
        let a = vec![0.0f32; CLIP_SAMPLES];
        assert_eq!(check_clip(0, &Clip::from(a.as_slice()), 9), Ok(9));
        assert_eq!(check_clip(0, &Clip::from(&a[..MIN_CLIP_SAMPLES]), 9), Ok(1));
        assert!(matches!(
            check_clip(0, &Clip::from(&a[..MIN_CLIP_SAMPLES - 1]), 9),
            Err(VerifyError::ClipLength { .. })
        ));
        let long = vec![0.0f32; CLIP_SAMPLES + 1];
        assert!(matches!(
            check_clip(2, &Clip::from(long.as_slice()), 9),
            Err(VerifyError::ClipLength { index: 2, .. })
        ));
        let lead = Clip {
            audio: &a[..clip_samples(6)],
            lead: 3,
        };
        assert_eq!(check_clip(0, &lead, 9), Ok(6));
        assert!(matches!(
            check_clip(0, &Clip { audio: &a, lead: 3 }, 9),
            Err(VerifyError::ClipLength { .. })
        ));
        assert!(matches!(
            check_clip(0, &Clip { audio: &a, lead: 9 }, 9),
            Err(VerifyError::Lead { .. })
        ));
        let mut bad = a.clone();
        bad[7] = f32::NAN;
        assert!(matches!(
            check_clip(1, &Clip::from(bad.as_slice()), 9),
            Err(VerifyError::BadSample {
                index: 1,
                sample: 7,
                ..
            })
        ));
    }

    #[test]
    fn slice_cuts_at_the_stream_end() {
        let stream: Vec<f32> = (0..30_000).map(|i| i as f32).collect();
        let r = View::at(1000, 0, 9).clip();
        let c = r.slice(&stream);
        assert_eq!(c.audio.len(), r.len());
        assert_eq!(c.audio[0], r.start as f32);
        let r = ClipRange {
            start: 20_000,
            end: 20_000 + CLIP_SAMPLES as u64,
            lead: 0,
        };
        assert_eq!(r.slice(&stream).audio.len(), 10_000);
    }
}
