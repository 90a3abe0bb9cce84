//! Batched scoring of feature windows: the [`Scorer`] trait and its ONNX Runtime implementation.
//!
//! A batch is `N` windows of `98 x 40` features, row-major (`[N, 98, 40]`); the result is `[N, C]`
//! posteriors. Scoring is split from the per-stream pipeline so a caller can batch windows from many
//! streams into one call.

use crate::error::ScoreError;
use crate::frontend::WINDOW_VALUES;

/// Scores batches of windows. Implementations are used from one thread at a time (`&mut self`).
pub trait Scorer: Send {
    /// Number of classes per window in the output.
    fn num_classes(&self) -> usize;

    /// Score `features.len() / (98 * 40)` windows into `out` (`N * num_classes` values).
    fn score(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), ScoreError>;
}

/// Check the buffer sizes of a `score` call; returns `N`.
pub fn check_batch(features: &[f32], out: &[f32], classes: usize) -> Result<usize, ScoreError> {
    if features.is_empty() || !features.len().is_multiple_of(WINDOW_VALUES) {
        return Err(ScoreError::InputShape { got: features.len() });
    }
    let n = features.len() / WINDOW_VALUES;
    if out.len() != n * classes {
        return Err(ScoreError::OutputShape {
            got: out.len(),
            n,
            classes,
        });
    }
    Ok(n)
}

#[cfg(feature = "onnx")]
pub(crate) use onnx::build_session;
#[cfg(feature = "onnx")]
pub use onnx::{OnnxScorer, ScorerOptions, init_runtime, locate_library};

#[cfg(feature = "onnx")]
mod onnx {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use ort::session::Session;
    use ort::session::builder::GraphOptimizationLevel;
    use ort::value::{TensorRef, ValueType};

    use super::{Scorer, check_batch};
    use crate::error::{ModelError, RuntimeError, ScoreError};
    use crate::frontend::{NUM_MFCC, WINDOW_FRAMES};
    use crate::manifest::Manifest;

    /// Environment variable naming the ONNX Runtime shared library.
    pub const LIB_ENV: &str = "KWS_ORT_LIB";

    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();

    /// Find the ONNX Runtime shared library: `explicit`, else `$KWS_ORT_LIB`, else `$ORT_DYLIB_PATH`,
    /// else `libonnxruntime.so` beside the executable. The file must exist.
    pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
        let mut tried = Vec::new();
        let candidates = explicit
            .map(Path::to_path_buf)
            .into_iter()
            .chain(
                std::env::var_os(LIB_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
            )
            .chain(
                std::env::var_os("ORT_DYLIB_PATH")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
            )
            .chain(
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("libonnxruntime.so"))),
            );
        for c in candidates {
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c.display().to_string());
        }
        if explicit.is_none() && tried.len() < 3 {
            tried.insert(0, format!("${LIB_ENV} unset"));
        }
        Err(RuntimeError::LibraryNotFound {
            tried: tried.join(", "),
        })
    }

    /// Load ONNX Runtime from `library` (see [`locate_library`]) once per process. Later calls return
    /// the environment already loaded, whatever path they name.
    pub fn init_runtime(
        library: Option<&Path>,
    ) -> Result<&'static ort::environment::Environment, RuntimeError> {
        if let Some(env) = ENV.get() {
            return Ok(env);
        }
        let path = locate_library(library)?;
        let load = |reason: String| RuntimeError::LibraryLoad {
            path: path.clone(),
            reason,
        };
        let env = ort::init_from(&path)
            .map_err(|e| load(e.to_string()))?
            .with_name("kws")
            .build()
            .map_err(|e| load(e.to_string()))?;
        Ok(ENV.get_or_init(|| env))
    }

    /// How to build a session.
    #[derive(Debug, Clone)]
    pub struct ScorerOptions {
        /// Intra-op threads of this session (1 is best for this small model: run several scorers
        /// instead).
        pub intra_threads: usize,
        /// Full graph optimization (constant folding, fusions); off only for debugging.
        pub optimize: bool,
        /// ONNX Runtime library; `None` = [`locate_library`]'s search.
        pub library: Option<PathBuf>,
    }

    impl Default for ScorerOptions {
        fn default() -> Self {
            Self {
                intra_threads: 1,
                optimize: true,
                library: None,
            }
        }
    }

    /// A [`Scorer`] backed by one ONNX Runtime session.
    pub struct OnnxScorer {
        session: Session,
        classes: usize,
        input: String,
        output: String,
        path: PathBuf,
    }

    impl std::fmt::Debug for OnnxScorer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("OnnxScorer")
                .field("path", &self.path)
                .field("classes", &self.classes)
                .finish()
        }
    }

    /// A session over a model's bytes with the crate's settings: graph optimization per
    /// `options.optimize`, `options.intra_threads` (at least 1), one inter-op thread. `path` names
    /// the model in errors.
    pub(crate) fn build_session(
        env: &'static ort::environment::Environment,
        path: &Path,
        bytes: &[u8],
        options: &ScorerOptions,
    ) -> Result<Session, RuntimeError> {
        let fail = |reason: String| RuntimeError::Session {
            path: path.to_path_buf(),
            reason,
        };
        let level = if options.optimize {
            GraphOptimizationLevel::All
        } else {
            GraphOptimizationLevel::Disable
        };
        Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(level)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(options.intra_threads.max(1))
            .map_err(|e| fail(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| fail(e.to_string()))
    }

    fn dims(t: &ValueType) -> Option<Vec<i64>> {
        match t {
            ValueType::Tensor { ty, shape, .. } if *ty == ort::value::TensorElementType::Float32 => {
                Some(shape.iter().copied().collect())
            }
            _ => None,
        }
    }

    impl OnnxScorer {
        /// Load `variant` (`fp32` or `int8`) of the model in `manifest`: verify its sha256, create the
        /// session, and check the graph's input/output names and shapes against the manifest.
        pub fn new(
            manifest: &Manifest,
            variant: &str,
            options: &ScorerOptions,
        ) -> Result<Self, RuntimeError> {
            let env = init_runtime(options.library.as_deref())?;
            let (path, bytes) = manifest.read_verified(variant)?;
            let session = build_session(env, &path, &bytes, options)?;
            let mismatch = |reason: String| {
                RuntimeError::Model(ModelError::Shape {
                    path: path.clone(),
                    reason,
                })
            };
            let classes = manifest.num_classes();
            let [input] = session.inputs() else {
                return Err(mismatch(format!("{} inputs, expected 1", session.inputs().len())));
            };
            let [output] = session.outputs() else {
                return Err(mismatch(format!(
                    "{} outputs, expected 1",
                    session.outputs().len()
                )));
            };
            let want_in = vec![-1, WINDOW_FRAMES as i64, NUM_MFCC as i64];
            if input.name() != manifest.input.name || dims(input.dtype()).as_ref() != Some(&want_in) {
                return Err(mismatch(format!(
                    "input {} {:?}, manifest says {} float32 {want_in:?}",
                    input.name(),
                    input.dtype(),
                    manifest.input.name
                )));
            }
            let want_out = vec![-1, classes as i64];
            if output.name() != manifest.output.name || dims(output.dtype()).as_ref() != Some(&want_out) {
                return Err(mismatch(format!(
                    "output {} {:?}, manifest says {} float32 {want_out:?}",
                    output.name(),
                    output.dtype(),
                    manifest.output.name
                )));
            }
            let (input, output) = (input.name().to_string(), output.name().to_string());
            Ok(Self {
                session,
                classes,
                input,
                output,
                path,
            })
        }

        /// The model file this session was created from.
        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    impl Scorer for OnnxScorer {
        fn num_classes(&self) -> usize {
            self.classes
        }

        /// One `Session::run`. Allocates the output tensor inside ONNX Runtime.
        fn score(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), ScoreError> {
            let n = check_batch(features, out, self.classes)?;
            let err = |e: ort::Error| ScoreError::Runtime(e.to_string());
            let tensor = TensorRef::from_array_view(([n, WINDOW_FRAMES, NUM_MFCC], features)).map_err(err)?;
            let outputs = self
                .session
                .run(ort::inputs![self.input.as_str() => tensor])
                .map_err(err)?;
            let (_, probs) = outputs[self.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            if probs.len() != out.len() {
                return Err(ScoreError::OutputShape {
                    got: probs.len(),
                    n,
                    classes: self.classes,
                });
            }
            out.copy_from_slice(probs);
            Ok(())
        }
    }
}
