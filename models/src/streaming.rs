//! Streaming (external-state) scoring: each hop computes only the new frames' columns.
//!
//! A streamable model (manifest section `streaming`, written by `kws_train.streaming`) is an ONNX
//! graph with inputs `frames [N, hop, 40]` plus one state tensor per layer `[N, T, C]`, and outputs
//! `probs [N, classes]` plus the new states. Its probabilities after a hop are those of the windowed
//! model on the 98-frame window ending at the hop's last frame, so the decoder, the window times and
//! the events are the same as on the windowed path (`models/README.md`, "Streaming specification").
//!
//! - [`StateLayout`]: the per-stream state as one flat `Vec<f32>` (every state tensor's `[C, T]`
//!   values in manifest order) and the warm-up rule. No per-architecture code: all of it comes from
//!   the manifest.
//! - [`StreamScorer`] / [`OnnxStreamScorer`]: one call scores one hop of `N` streams; the states of
//!   the batch are stream-major (`N * state_len` values) and are gathered into / scattered from the
//!   graph's per-tensor `[N, T, C]` inputs and outputs.
//! - The per-stream pipeline is [`crate::Spotter`] made by [`Spotter::new_streaming`]: the same
//!   audio input, decoder and cascade as a windowed stream, with the model state and the pending
//!   frames instead of a 98-frame ring.
//!
//! # Warm-up
//! States start at zero. A stream is first fed `lead_frames` zero frames so that a hop ends at frame
//! 97; hop `i` (0-based) then ends at stream frame `hop (i + 1) - lead - 1`, and its probabilities are
//! a window from hop `first_valid_call` on (frame 97). The hops before it are run (they fill the
//! states) but their probabilities are not windows and are not decoded.
//!
//! # Batching
//! Hop `i + 1` of a stream needs the states hop `i` produced, so one call carries at most one hop
//! per stream; a batcher runs one round per hop (with 20-ms chunks every stream has one hop per
//! chunk). [`Spotter::next_hop`] and [`Spotter::advance_hop`] + [`Spotter::apply`] (together
//! [`Spotter::complete_hop`]) are the two halves of a round for a batcher;
//! [`Spotter::score_pending`] does it for one stream.

use std::collections::BTreeMap;

use serde::Deserialize;

#[cfg(doc)]
use crate::Spotter;
use crate::error::ScoreError;
use crate::frontend::{FRAME_MS, MS_PER_FRAME, NUM_MFCC, WINDOW_FRAMES};
use crate::manifest::{FileSpec, TensorSpec};
use crate::spotter::WindowMeta;

/// One state tensor of a streaming graph, as in the manifest.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct StateSpec {
    /// Graph input.
    pub name: String,
    /// Graph output carrying the new state.
    pub output: String,
    /// `[-1, T, C]` (any `[-1, a, b]` with a, b >= 1).
    pub shape: Vec<i64>,
    pub dtype: String,
}

/// The manifest's optional `streaming` section.
///
/// ```json
/// "streaming": {"hop_frames": 2, "lead_frames": 0, "first_valid_call": 48,
///   "input": {"name": "frames", "shape": [-1, 2, 40], "dtype": "float32"},
///   "output": {"name": "probs", "shape": [-1, 12], "dtype": "float32"},
///   "states": [{"name": "state_stem", "output": "state_stem_out", "shape": [-1, 5, 40], "dtype": "float32"}, …],
///   "files": {"fp32": {"path": "model.stream.onnx", "sha256": "…", "bytes": 1}}, …}
/// ```
/// Other keys (FLOPs, quantization, measured differences) are records and are ignored here.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct StreamingSpec {
    pub hop_frames: u32,
    pub lead_frames: u32,
    pub first_valid_call: u64,
    pub input: TensorSpec,
    pub output: TensorSpec,
    pub states: Vec<StateSpec>,
    /// Variant (`fp32`, `int8`) -> file, relative to the manifest's directory.
    pub files: BTreeMap<String, FileSpec>,
}

impl StreamingSpec {
    pub(crate) fn validate(&self, classes: usize) -> Result<(), String> {
        let hop = self.hop_frames as usize;
        if hop == 0 || hop > WINDOW_FRAMES {
            return Err(format!("hop_frames {hop} is outside 1..={WINDOW_FRAMES}"));
        }
        let lead = (hop - WINDOW_FRAMES % hop) % hop;
        if self.lead_frames as usize != lead {
            return Err(format!(
                "lead_frames {} but a hop of {hop} needs {lead} to end at frame {}",
                self.lead_frames,
                WINDOW_FRAMES - 1
            ));
        }
        let first = ((WINDOW_FRAMES + lead) / hop - 1) as u64;
        if self.first_valid_call != first {
            return Err(format!(
                "first_valid_call {} but a hop of {hop} frames completes the first window at call {first}",
                self.first_valid_call
            ));
        }
        let want_in = [-1, hop as i64, NUM_MFCC as i64];
        if self.input.shape != want_in || self.input.dtype != "float32" {
            return Err(format!(
                "input must be float32 {want_in:?}, got {} {:?}",
                self.input.dtype, self.input.shape
            ));
        }
        if self.output.shape != [-1, classes as i64] || self.output.dtype != "float32" {
            return Err(format!(
                "output must be float32 [-1, {classes}], got {} {:?}",
                self.output.dtype, self.output.shape
            ));
        }
        if self.states.is_empty() {
            return Err("no state tensors".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.states {
            let ok = s.shape.len() == 3 && s.shape[0] == -1 && s.shape[1] >= 1 && s.shape[2] >= 1;
            if !ok || s.dtype != "float32" {
                return Err(format!(
                    "state {:?}: must be float32 [-1, a, b] with a, b >= 1, got {} {:?}",
                    s.name, s.dtype, s.shape
                ));
            }
            for n in [&s.name, &s.output] {
                if !names.insert(n.as_str()) || *n == self.input.name || *n == self.output.name {
                    return Err(format!("tensor name {n:?} is used twice"));
                }
            }
        }
        if self.files.is_empty() {
            return Err("no model files".into());
        }
        Ok(())
    }

    /// The streaming graph to score for a model configured as `variant`: that variant's if the
    /// section lists one, else fp32 (the variant every streaming model ships). The service and
    /// `kws-client eval --local` both choose by this rule.
    pub fn served_variant<'a>(&self, variant: &'a str) -> &'a str {
        if self.files.contains_key(variant) {
            variant
        } else {
            "fp32"
        }
    }

    /// The state layout this section describes.
    pub fn layout(&self) -> StateLayout {
        let mut offset = 0;
        let tensors = self
            .states
            .iter()
            .map(|s| {
                let (rows, cols) = (s.shape[1] as usize, s.shape[2] as usize);
                let tensor = StateTensor {
                    input: s.name.clone(),
                    output: s.output.clone(),
                    rows,
                    cols,
                    offset,
                };
                offset += rows * cols;
                tensor
            })
            .collect();
        StateLayout {
            hop_frames: self.hop_frames as usize,
            lead_frames: self.lead_frames as usize,
            first_valid_call: self.first_valid_call,
            tensors,
            len: offset,
        }
    }
}

/// One state tensor inside a stream's flat state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTensor {
    pub input: String,
    pub output: String,
    /// `shape[1]` and `shape[2]` of the tensor per stream (`kws_train` writes time-major `[T, C]`;
    /// the runtime does not interpret them).
    pub rows: usize,
    pub cols: usize,
    /// Offset of its `rows * cols` values (row-major) in the flat state.
    pub offset: usize,
}

impl StateTensor {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream's state: the flat layout of the state tensors and the warm-up rule (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    /// Frames per call.
    pub hop_frames: usize,
    /// Zero frames fed before the stream's first frame.
    pub lead_frames: usize,
    /// First call (0-based) whose probabilities are a window.
    pub first_valid_call: u64,
    pub tensors: Vec<StateTensor>,
    /// f32 values per stream.
    pub len: usize,
}

impl StateLayout {
    /// Values of one call's frames per stream (`hop * 40`).
    pub fn frame_values(&self) -> usize {
        self.hop_frames * NUM_MFCC
    }

    /// The state of a new stream (zeros).
    pub fn initial_state(&self) -> Vec<f32> {
        vec![0.0; self.len]
    }

    /// Bytes of one stream's state.
    pub fn state_bytes(&self) -> usize {
        self.len * std::mem::size_of::<f32>()
    }

    /// The window a call (0-based) completes, if it is one: the 98 frames ending at its last frame.
    /// `seq` counts windows from 0 like [`crate::Spotter`]'s.
    pub fn window_of_call(&self, call: u64) -> Option<WindowMeta> {
        let seq = call.checked_sub(self.first_valid_call)?;
        let last = (self.hop_frames as u64) * (call + 1) - self.lead_frames as u64 - 1;
        let window = WINDOW_FRAMES as u64;
        Some(WindowMeta {
            seq,
            start_ms: (last + 1 - window) * u64::from(MS_PER_FRAME),
            end_ms: last * u64::from(MS_PER_FRAME) + u64::from(FRAME_MS),
        })
    }
}

/// `N` of a streaming call: the number of whole hops in `frames` (at least one).
fn hops_in(layout: &StateLayout, frames: &[f32]) -> Result<usize, ScoreError> {
    let per = layout.frame_values();
    if frames.is_empty() || !frames.len().is_multiple_of(per) {
        return Err(ScoreError::InputShape { got: frames.len() });
    }
    Ok(frames.len() / per)
}

fn check_probs(probs: &[f32], n: usize, classes: usize) -> Result<(), ScoreError> {
    if probs.len() != n * classes {
        return Err(ScoreError::OutputShape {
            got: probs.len(),
            n,
            classes,
        });
    }
    Ok(())
}

/// Check the buffers of a streaming call; returns `N`.
pub fn check_stream_batch(
    layout: &StateLayout,
    frames: &[f32],
    states_in: &[f32],
    states_out: &[f32],
    probs: &[f32],
    classes: usize,
) -> Result<usize, ScoreError> {
    let n = hops_in(layout, frames)?;
    if states_in.len() != n * layout.len || states_out.len() != n * layout.len {
        return Err(ScoreError::StateShape {
            got_in: states_in.len(),
            got_out: states_out.len(),
            n,
            per_stream: layout.len,
        });
    }
    check_probs(probs, n, classes)?;
    Ok(n)
}

/// Check the buffers of a [`StreamScorer::score_each`] call; returns `N`.
pub fn check_stream_states(
    layout: &StateLayout,
    frames: &[f32],
    states: &[&mut [f32]],
    probs: &[f32],
    classes: usize,
) -> Result<usize, ScoreError> {
    let n = hops_in(layout, frames)?;
    let bad = states.iter().map(|s| s.len()).find(|&l| l != layout.len);
    if bad.is_some() || states.len() != n {
        let got = bad.unwrap_or(states.len() * layout.len);
        return Err(ScoreError::StateShape {
            got_in: got,
            got_out: got,
            n,
            per_stream: layout.len,
        });
    }
    check_probs(probs, n, classes)?;
    Ok(n)
}

/// Scores one hop of `N` streams. Implementations are used from one thread at a time.
pub trait StreamScorer: Send {
    fn num_classes(&self) -> usize;

    fn layout(&self) -> &StateLayout;

    /// `frames`: `[N, hop, 40]` row-major (each stream's next hop); `states_in`: `N` flat states
    /// (stream-major, [`StateLayout::len`] values each); writes the `N` new states to `states_out`
    /// and `[N, classes]` probabilities to `probs`.
    fn score(
        &mut self,
        frames: &[f32],
        states_in: &[f32],
        states_out: &mut [f32],
        probs: &mut [f32],
    ) -> Result<(), ScoreError>;

    /// [`score`](Self::score) for callers that keep each stream's state in a buffer of its own (the
    /// service's batcher): `states[i]` holds stream `i`'s state before the hop and receives its new
    /// state, so the batch's states are never concatenated nor split. On error every state is
    /// unchanged. The default concatenates, calls `score` and splits; [`OnnxStreamScorer`] reads and
    /// writes the buffers directly.
    fn score_each(
        &mut self,
        frames: &[f32],
        states: &mut [&mut [f32]],
        probs: &mut [f32],
    ) -> Result<(), ScoreError> {
        check_stream_states(self.layout(), frames, states, probs, self.num_classes())?;
        let states_in: Vec<f32> = states.iter().flat_map(|s| s.iter().copied()).collect();
        let mut states_out = vec![0.0; states_in.len()];
        self.score(frames, &states_in, &mut states_out, probs)?;
        let len = self.layout().len;
        for (dst, src) in states.iter_mut().zip(states_out.chunks_exact(len)) {
            dst.copy_from_slice(src);
        }
        Ok(())
    }
}

/// Where a batch's states come from and go to: one stream-major buffer each way, or one buffer per
/// stream read and then overwritten.
enum States<'a, 'b> {
    Flat { input: &'a [f32], output: &'a mut [f32] },
    Each(&'a mut [&'b mut [f32]]),
}

impl States<'_, '_> {
    fn input(&self, i: usize, len: usize) -> &[f32] {
        match self {
            States::Flat { input, .. } => &input[i * len..(i + 1) * len],
            States::Each(s) => &s[i][..],
        }
    }

    fn output(&mut self, i: usize, len: usize) -> &mut [f32] {
        match self {
            States::Flat { output, .. } => &mut output[i * len..(i + 1) * len],
            States::Each(s) => &mut s[i][..],
        }
    }
}

#[cfg(feature = "onnx")]
pub use onnx::OnnxStreamScorer;

#[cfg(feature = "onnx")]
mod onnx {
    use std::path::{Path, PathBuf};

    use ort::session::Session;
    use ort::value::{TensorRef, ValueType};

    use super::{StateLayout, States, StreamScorer, check_stream_batch, check_stream_states};
    use crate::error::{ModelError, RuntimeError, ScoreError};
    use crate::manifest::Manifest;
    use crate::scorer::{ScorerOptions, build_session, init_runtime};

    /// A [`StreamScorer`] backed by one ONNX Runtime session of the manifest's streaming graph.
    pub struct OnnxStreamScorer {
        session: Session,
        layout: StateLayout,
        classes: usize,
        input: String,
        output: String,
        /// Per state tensor: the batch's `[N, C, T]` input, gathered from the streams' states.
        gathered: Vec<Vec<f32>>,
        path: PathBuf,
    }

    impl std::fmt::Debug for OnnxStreamScorer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("OnnxStreamScorer")
                .field("path", &self.path)
                .field("hop_frames", &self.layout.hop_frames)
                .field("state_len", &self.layout.len)
                .finish()
        }
    }

    fn dims(t: &ValueType) -> Option<Vec<i64>> {
        match t {
            ValueType::Tensor { ty, shape, .. } if *ty == ort::value::TensorElementType::Float32 => {
                Some(shape.iter().copied().collect())
            }
            _ => None,
        }
    }

    impl OnnxStreamScorer {
        /// Load `variant` (`fp32`, `int8`) of the manifest's streaming graph: verify its sha256,
        /// create the session, and check every input and output (names, shapes) against the manifest.
        pub fn new(
            manifest: &Manifest,
            variant: &str,
            options: &ScorerOptions,
        ) -> Result<Self, RuntimeError> {
            let spec = manifest.streaming.as_ref().ok_or_else(|| {
                RuntimeError::Model(ModelError::Variant(
                    format!("streaming {variant}"),
                    "none: the manifest has no streaming section".into(),
                ))
            })?;
            let env = init_runtime(options.library.as_deref())?;
            let (path, bytes) = manifest.read_verified_streaming(variant)?;
            let session = build_session(env, &path, &bytes, options)?;
            let mismatch = |reason: String| {
                RuntimeError::Model(ModelError::Shape {
                    path: path.clone(),
                    reason,
                })
            };
            let mut want_in = vec![(spec.input.name.as_str(), spec.input.shape.clone())];
            let mut want_out = vec![(spec.output.name.as_str(), spec.output.shape.clone())];
            for s in &spec.states {
                want_in.push((s.name.as_str(), s.shape.clone()));
                want_out.push((s.output.as_str(), s.shape.clone()));
            }
            let check = |what: &str, got: Vec<(String, Option<Vec<i64>>)>, want: &[(&str, Vec<i64>)]| {
                let mut got = got;
                got.sort();
                let mut want: Vec<(String, Option<Vec<i64>>)> = want
                    .iter()
                    .map(|(n, s)| ((*n).to_string(), Some(s.clone())))
                    .collect();
                want.sort();
                if got != want {
                    return Err(mismatch(format!(
                        "{what} {got:?}, manifest says float32 {want:?}"
                    )));
                }
                Ok(())
            };
            let ins = session
                .inputs()
                .iter()
                .map(|i| (i.name().to_string(), dims(i.dtype())))
                .collect();
            let outs = session
                .outputs()
                .iter()
                .map(|o| (o.name().to_string(), dims(o.dtype())))
                .collect();
            check("inputs", ins, &want_in)?;
            check("outputs", outs, &want_out)?;
            let layout = spec.layout();
            Ok(Self {
                session,
                gathered: vec![Vec::new(); layout.tensors.len()],
                layout,
                classes: manifest.num_classes(),
                input: spec.input.name.clone(),
                output: spec.output.name.clone(),
                path,
            })
        }

        /// The model file this session was created from.
        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    impl StreamScorer for OnnxStreamScorer {
        fn num_classes(&self) -> usize {
            self.classes
        }

        fn layout(&self) -> &StateLayout {
            &self.layout
        }

        /// One `Session::run`. Gathers the states into per-tensor buffers (reused across calls) and
        /// scatters the new ones; ONNX Runtime allocates its outputs.
        fn score(
            &mut self,
            frames: &[f32],
            states_in: &[f32],
            states_out: &mut [f32],
            probs: &mut [f32],
        ) -> Result<(), ScoreError> {
            let n = check_stream_batch(&self.layout, frames, states_in, states_out, probs, self.classes)?;
            self.run(
                frames,
                n,
                States::Flat {
                    input: states_in,
                    output: states_out,
                },
                probs,
            )
        }

        /// As `score`, gathering from and scattering to each stream's own buffer.
        fn score_each(
            &mut self,
            frames: &[f32],
            states: &mut [&mut [f32]],
            probs: &mut [f32],
        ) -> Result<(), ScoreError> {
            let n = check_stream_states(&self.layout, frames, states, probs, self.classes)?;
            self.run(frames, n, States::Each(states), probs)
        }
    }

    impl OnnxStreamScorer {
        fn run(
            &mut self,
            frames: &[f32],
            n: usize,
            mut states: States<'_, '_>,
            probs: &mut [f32],
        ) -> Result<(), ScoreError> {
            let err = |e: ort::Error| ScoreError::Runtime(e.to_string());
            let len = self.layout.len;
            for (t, buf) in self.layout.tensors.iter().zip(self.gathered.iter_mut()) {
                buf.clear();
                for i in 0..n {
                    buf.extend_from_slice(&states.input(i, len)[t.offset..t.offset + t.len()]);
                }
            }
            let mut inputs = Vec::with_capacity(1 + self.layout.tensors.len());
            let hop = self.layout.hop_frames;
            inputs.push((
                self.input.as_str(),
                TensorRef::from_array_view(([n, hop, crate::frontend::NUM_MFCC], frames)).map_err(err)?,
            ));
            for (t, buf) in self.layout.tensors.iter().zip(&self.gathered) {
                inputs.push((
                    t.input.as_str(),
                    TensorRef::from_array_view(([n, t.rows, t.cols], buf.as_slice())).map_err(err)?,
                ));
            }
            let outputs = self.session.run(inputs).map_err(err)?;
            let (_, p) = outputs[self.output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            if p.len() != probs.len() {
                return Err(ScoreError::OutputShape {
                    got: p.len(),
                    n,
                    classes: self.classes,
                });
            }
            // Every output is checked before any state is written: on error the states are unchanged.
            let mut new = Vec::with_capacity(self.layout.tensors.len());
            for t in &self.layout.tensors {
                let (_, v) = outputs[t.output.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(err)?;
                if v.len() != n * t.len() {
                    return Err(ScoreError::Runtime(format!(
                        "state output {} has {} values, expected {}",
                        t.output,
                        v.len(),
                        n * t.len()
                    )));
                }
                new.push(v);
            }
            probs.copy_from_slice(p);
            for (t, v) in self.layout.tensors.iter().zip(new) {
                for (i, src) in v.chunks_exact(t.len()).enumerate() {
                    states.output(i, len)[t.offset..t.offset + t.len()].copy_from_slice(src);
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hop: u32) -> StreamingSpec {
        let lead = (hop as usize - WINDOW_FRAMES % hop as usize) % hop as usize;
        StreamingSpec {
            hop_frames: hop,
            lead_frames: lead as u32,
            first_valid_call: ((WINDOW_FRAMES + lead) / hop as usize - 1) as u64,
            input: TensorSpec {
                name: "frames".into(),
                shape: vec![-1, i64::from(hop), 40],
                dtype: "float32".into(),
            },
            output: TensorSpec {
                name: "probs".into(),
                shape: vec![-1, 12],
                dtype: "float32".into(),
            },
            states: vec![
                StateSpec {
                    name: "a".into(),
                    output: "a_out".into(),
                    shape: vec![-1, 5, 40],
                    dtype: "float32".into(),
                },
                StateSpec {
                    name: "b".into(),
                    output: "b_out".into(),
                    shape: vec![-1, 4, 48],
                    dtype: "float32".into(),
                },
            ],
            files: BTreeMap::from([(
                "fp32".to_string(),
                FileSpec {
                    path: "m.onnx".into(),
                    sha256: "0".repeat(64),
                    bytes: 1,
                },
            )]),
        }
    }

    #[test]
    fn layout_is_flat_in_manifest_order() {
        let l = spec(2).layout();
        assert_eq!(l.len, 200 + 192);
        assert_eq!(l.tensors[1].offset, 200);
        assert_eq!(l.state_bytes(), 392 * 4);
        assert_eq!(l.frame_values(), 80);
    }

    #[test]
    fn windows_of_calls_match_the_windowed_path() {
        // hop 2: call 48 ends at frame 97 (the first window), then every 20 ms.
        let l = spec(2).layout();
        assert_eq!(l.window_of_call(47), None);
        let w = l.window_of_call(48).unwrap();
        assert_eq!((w.seq, w.start_ms, w.end_ms), (0, 0, 1000));
        let w = l.window_of_call(49).unwrap();
        assert_eq!((w.seq, w.start_ms, w.end_ms), (1, 20, 1020));
        // hop 8: 6 lead frames; call 12 covers padded frames 96..104 = stream frames 90..97.
        let l = spec(8).layout();
        assert_eq!(l.lead_frames, 6);
        assert_eq!(l.window_of_call(11), None);
        let w = l.window_of_call(12).unwrap();
        assert_eq!((w.seq, w.start_ms, w.end_ms), (0, 0, 1000));
        assert_eq!(l.window_of_call(13).unwrap().start_ms, 80);
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(spec(2).validate(12).is_ok());
        assert!(spec(8).validate(12).is_ok());
        let mut s = spec(8);
        s.lead_frames = 0;
        assert!(s.validate(12).unwrap_err().contains("lead_frames"));
        let mut s = spec(2);
        s.first_valid_call = 49;
        assert!(s.validate(12).unwrap_err().contains("first_valid_call"));
        let mut s = spec(2);
        s.states[1].output = "a_out".into();
        assert!(s.validate(12).unwrap_err().contains("used twice"));
        let mut s = spec(2);
        s.states[0].shape = vec![-1, 40];
        assert!(s.validate(12).unwrap_err().contains("[-1, a, b]"));
        assert!(spec(2).validate(11).unwrap_err().contains("output"));
    }

    #[test]
    fn buffer_checks() {
        let l = spec(2).layout();
        let (f, s, p) = (vec![0.0; 160], vec![0.0; 2 * l.len], vec![0.0; 24]);
        let mut o = vec![0.0; 2 * l.len];
        assert_eq!(check_stream_batch(&l, &f, &s, &o, &p, 12), Ok(2));
        o.pop();
        assert!(matches!(
            check_stream_batch(&l, &f, &s, &o, &p, 12),
            Err(ScoreError::StateShape { .. })
        ));
        assert!(matches!(
            check_stream_batch(&l, &f[..100], &s, &s, &p, 12),
            Err(ScoreError::InputShape { .. })
        ));
    }

    /// A fake scorer: the "state" counts calls, the probabilities carry the first frame value.
    struct Counting(StateLayout);

    impl StreamScorer for Counting {
        fn num_classes(&self) -> usize {
            12
        }
        fn layout(&self) -> &StateLayout {
            &self.0
        }
        fn score(
            &mut self,
            frames: &[f32],
            si: &[f32],
            so: &mut [f32],
            probs: &mut [f32],
        ) -> Result<(), ScoreError> {
            for (o, i) in so.iter_mut().zip(si) {
                *o = i + 1.0;
            }
            probs.fill(0.0);
            probs[11] = frames[0].abs().min(1.0);
            Ok(())
        }
    }

    /// tc-resnet8's stream settings with 20-ms hops, first stage only (its manifest carries a
    /// verifier), and `samples` of deterministic 16-kHz s16 noise.
    fn hop_config_and_audio(samples: i32) -> (crate::spotter::StreamConfig, Vec<u8>) {
        let manifest =
            crate::Manifest::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tc-resnet8"))
                .expect("manifest");
        let mut config =
            crate::spotter::StreamConfig::from_manifest(&manifest, crate::PcmFormat::native_s16());
        config.hop_frames = 2;
        config.cascade = None;
        let audio = (0..samples)
            .flat_map(|i: i32| (((i * 7919) % 20_000 - 10_000) as i16).to_le_bytes())
            .collect();
        (config, audio)
    }

    #[test]
    fn warm_up_hops_are_scored_but_not_decoded_and_chunking_does_not_matter() {
        use crate::spotter::{FirstStage, WindowBatch};
        use crate::{ConfigError, Spotter};
        let l = spec(2).layout();
        let (config, audio) = hop_config_and_audio(16_000 * 2 + 1234);
        let mut reference = None;
        let mut batch = WindowBatch::new();
        for chunk in [2, 320, 5000, audio.len()] {
            let mut s = Spotter::new_streaming(config.clone(), 12, l.clone()).unwrap();
            let mut scorer = Counting(l.clone());
            let mut windows = Vec::new();
            for c in audio.chunks(chunk) {
                s.push_pcm(c, &mut batch).unwrap();
                s.score_pending(
                    FirstStage::Streaming(&mut scorer),
                    None,
                    &batch,
                    |w, _| windows.push(*w),
                    |_| {},
                )
                .unwrap();
            }
            s.finish(&mut batch).unwrap();
            s.score_pending(
                FirstStage::Streaming(&mut scorer),
                None,
                &batch,
                |w, _| windows.push(*w),
                |_| {},
            )
            .unwrap();
            assert!(
                batch.is_empty(),
                "a streaming stream emits no windows to the batch"
            );
            // 2.08 s of audio: 205 frames, 102 hops, windows end at frames 97, 99, ..., 203.
            assert_eq!(windows.len(), 54);
            assert_eq!(
                windows[0],
                WindowMeta {
                    seq: 0,
                    start_ms: 0,
                    end_ms: 1000
                }
            );
            assert!(s.model_state().unwrap().iter().all(|&v| v == 102.0));
            assert_eq!((s.windows_applied(), s.windows_emitted()), (54, 54));
            let r = reference.get_or_insert_with(|| windows.clone());
            assert_eq!(*r, windows);
            // Nothing pending: completing a hop is refused, not a panic.
            assert!(s.advance_hop(&l.initial_state()).is_err());
        }
        let mut c = config.clone();
        c.hop_frames = 4;
        let e = Spotter::new_streaming(c, 12, l.clone()).unwrap_err();
        assert_eq!(e, ConfigError::StreamingHop { got: 4, model: 2 });
        assert!(e.to_string().contains("hops of 2 frames (20 ms) only"), "{e}");
        // The kinds do not mix.
        let mut s = Spotter::new_streaming(config.clone(), 12, l.clone()).unwrap();
        let mut scorer = Counting(l.clone());
        let mut w = Spotter::new(config, 12).unwrap();
        assert!(w.advance_hop(&l.initial_state()).is_err());
        assert!(
            w.score_pending(
                FirstStage::Streaming(&mut scorer),
                None,
                &batch,
                |_, _| {},
                |_| {}
            )
            .is_err()
        );
        assert!(
            s.score_windows(&mut Windowed, None, &batch, |_, _| {}, |_| {})
                .is_err()
        );
    }

    #[test]
    fn a_lent_hop_completes_like_a_copied_one() {
        use crate::Spotter;
        use crate::spotter::WindowBatch;
        let l = spec(2).layout();
        let (config, audio) = hop_config_and_audio(16_000 + 777);
        let mut batch = WindowBatch::new();
        let (mut copied, mut lent) = (
            Spotter::new_streaming(config.clone(), 12, l.clone()).unwrap(),
            Spotter::new_streaming(config.clone(), 12, l.clone()).unwrap(),
        );
        for s in [&mut copied, &mut lent] {
            s.push_pcm(&audio, &mut batch).unwrap();
        }
        let mut scorer = Counting(l.clone());
        let (mut frames, mut state) = (Vec::new(), Vec::new());
        let (mut new_state, mut probs) = (vec![0.0; l.len], vec![0.0; 12]);
        let mut hops = 0;
        assert!(lent.return_hop(&mut state).is_err(), "nothing lent yet");
        while let Some(hop) = copied.next_hop() {
            let expected_frames = hop.frames.to_vec();
            scorer
                .score(hop.frames, hop.state, &mut new_state, &mut probs)
                .unwrap();
            let window = copied.advance_hop(&new_state).unwrap();

            assert!(lent.lend_hop(&mut frames, &mut state));
            assert_eq!(frames, expected_frames);
            // While lent the stream has no state to give and takes no other completion.
            assert!(lent.next_hop().is_none() && lent.model_state().is_none());
            assert!(!lent.lend_hop(&mut Vec::new(), &mut Vec::new()));
            assert!(lent.advance_hop(&new_state).is_err());
            let mut short = vec![0.0; l.len - 1];
            assert!(lent.return_hop(&mut short).is_err(), "wrong length");
            let before = state.clone();
            scorer.score(&frames, &before, &mut state, &mut probs).unwrap();
            assert_eq!(lent.return_hop(&mut state).unwrap(), window);
            assert_eq!(lent.model_state(), copied.model_state());
            hops += 1;
        }
        assert!(hops > 50, "{hops} hops");
        assert!(!lent.lend_hop(&mut frames, &mut state), "no whole hop pending");
        // A windowed stream lends nothing.
        let mut w = Spotter::new(config, 12).unwrap();
        assert!(!w.lend_hop(&mut frames, &mut state));
        assert!(w.return_hop(&mut state).is_err());
    }

    /// A windowed scorer, which a streaming stream refuses.
    struct Windowed;

    impl crate::Scorer for Windowed {
        fn num_classes(&self) -> usize {
            12
        }
        fn score(&mut self, _: &[f32], _: &mut [f32]) -> Result<(), ScoreError> {
            Ok(())
        }
    }
}
