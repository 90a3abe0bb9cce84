//! Fuzz the server's handling of a Detect stream up to the model: the input is a sequence of
//! length-delimited `DetectRequest`s (what a client sends), decoded with prost like tonic does, then
//! validated and run through the same functions the session uses: `validation::validate` (config),
//! `validation::check_chunk` + `Spotter::push_pcm` (audio: PCM decoding, resampling, MFCC, windowing),
//! `validation::label_from_proto` / `Evaluator` (labels), the decoder with synthetic posteriors, and
//! `Spotter::finish`.
//!
//! Checked besides "no panic": a chunk that passed validation is always accepted by the pipeline;
//! every feature is finite; windows come in order; after `finish`, audio processed == audio received.
#![no_main]

use std::sync::LazyLock;

use kws_models::frontend::WINDOW_VALUES;
use kws_models::{Manifest, Spotter, WindowBatch};
use kws_proto::v1::{self, detect_request};
use kws_service::batcher::{Batcher, BatcherSettings};
use kws_service::config::ServerConfig;
use kws_service::eval::{EvalSettings, Evaluator};
use kws_service::registry::{ServedModel, model_info};
use kws_service::validation::{check_chunk, label_from_proto, validate};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The shipped model's manifest (no ONNX Runtime: scores are synthetic), a batcher without workers.
static MODEL: LazyLock<ServedModel> = LazyLock::new(|| {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tc-resnet8");
    let manifest = Manifest::load(&dir).expect("manifest");
    let (batcher, _) = Batcher::start(
        "tc-resnet8:int8",
        Vec::new(),
        BatcherSettings {
            max_batch: 64,
            max_delay: std::time::Duration::from_millis(5),
            queue_capacity: 1,
        },
    )
    .expect("batcher");
    ServedModel {
        name: "tc-resnet8:int8".into(),
        variant: "int8".into(),
        streaming: None,
        info: model_info("tc-resnet8:int8", "int8", &manifest),
        manifest,
        batcher,
        verifier: None,
    }
});

static SERVER: LazyLock<ServerConfig> = LazyLock::new(|| ServerConfig {
    max_chunk_bytes: 1 << 20,
    ..ServerConfig::default()
});

static EVAL: LazyLock<EvalSettings> = LazyLock::new(|| EvalSettings::new(500, vec![0.25, 0.5, 0.75]));

struct Stream {
    spotter: Spotter,
    evaluator: Evaluator,
    batch: WindowBatch,
    next_seq: u64,
    probs: Vec<f32>,
}

impl Stream {
    /// Score the pending windows with synthetic posteriors (from their features) and apply them.
    fn apply(&mut self) {
        let classes = MODEL.manifest.num_classes();
        let (features, windows) = std::mem::take(&mut self.batch).into_parts();
        assert!(features.iter().all(|v| v.is_finite()), "non-finite feature");
        for (i, w) in windows.iter().enumerate() {
            assert_eq!(w.seq, self.next_seq, "windows in order");
            self.next_seq += 1;
            let f = &features[i * WINDOW_VALUES..(i + 1) * WINDOW_VALUES];
            self.probs.clear();
            self.probs
                .extend((0..classes).map(|k| 1.0 / (1.0 + (-f[k * 97 % WINDOW_VALUES]).exp())));
            let event = self.spotter.apply(w, &self.probs).expect("in order");
            self.evaluator
                .observe(w, self.spotter.smoothed(), event.map(|e| e.class));
        }
        self.batch = WindowBatch::with_buffer(features);
    }
}

fuzz_target!(|data: &[u8]| {
    let model = &*MODEL;
    let mut buf = data;
    let mut stream: Option<Stream> = None;
    while !buf.is_empty() {
        let Ok(req) = v1::DetectRequest::decode_length_delimited(&mut buf) else {
            break;
        };
        match (req.request, stream.as_mut()) {
            (Some(detect_request::Request::Config(c)), None) => {
                let Ok(r) = validate(&c, &model.manifest, &SERVER) else {
                    return;
                };
                let Ok(spotter) = Spotter::new(r.stream.clone(), model.manifest.num_classes()) else {
                    return;
                };
                stream = Some(Stream {
                    evaluator: Evaluator::new(
                        &EVAL,
                        &model.manifest.keywords,
                        &r.keywords,
                        r.stream.decoder.refractory_ms,
                        r.known_negative,
                    ),
                    spotter,
                    batch: WindowBatch::new(),
                    next_seq: 0,
                    probs: Vec::new(),
                });
            }
            (Some(detect_request::Request::Audio(a)), Some(s)) => {
                let format = s.spotter.format();
                let Ok(frames) = check_chunk(&a.data, SERVER.max_chunk_bytes, &format) else {
                    return;
                };
                let before = s.spotter.frames_received();
                let n = s
                    .spotter
                    .push_pcm(&a.data, &mut s.batch)
                    .expect("a validated chunk is accepted");
                assert_eq!(n, frames);
                assert_eq!(s.spotter.frames_received(), before + frames as u64);
                s.apply();
            }
            (Some(detect_request::Request::Label(l)), Some(s)) => {
                let Ok(label) = label_from_proto(&l, &model.manifest) else {
                    return;
                };
                s.evaluator.add_label(label);
            }
            // Config twice, audio or label before config, empty request: the stream is refused.
            _ => return,
        }
    }
    if let Some(mut s) = stream {
        s.spotter.finish(&mut s.batch).expect("finish");
        s.apply();
        assert_eq!(
            s.spotter.audio_ms_processed(),
            s.spotter.audio_ms_received(),
            "audio in == audio processed"
        );
        let audio = s.spotter.audio_ms_received();
        if s.evaluator.label_beyond(audio + 1).is_none() {
            let _ = s.evaluator.finish(audio, &model.name);
        }
    }
});
