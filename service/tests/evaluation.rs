//! Live evaluation over real gRPC: a labelled stream and a known-negative stream drive the
//! `kws_eval_*` counters, which must equal, for every keyword and threshold of the grid, what the
//! offline pipeline + `kws_models::eval` compute for the same audio and labels; the labelled stream's
//! summary reports its own hits/misses/false alarms; feedback resolves event ids.
//!
//! This file installs the process-wide metrics recorder, so it holds a single test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use kws_models::eval::{Counts, GridDecoder, Label, event_time, match_events};
use kws_models::{Manifest, OnnxScorer, ScorerOptions, Spotter, StreamConfig, WindowBatch};
use kws_proto::v1::{self, AudioEncoding, detect_request};
use metrics_exporter_prometheus::PrometheusBuilder;
use tonic::Code;

const MODEL: &str = "tc-resnet8:int8";

/// Offline: per grid threshold label, the (tp, fp, fn) per keyword; and the stream's own events.
struct Expected {
    grid: BTreeMap<String, Counts>,
    own: kws_models::eval::Counts,
}

fn expected(pcm: &[u8], labels: &[Label], grid: &[f32]) -> Expected {
    let manifest = Manifest::load(repo().join("models").join("tc-resnet8")).unwrap();
    let opts = ScorerOptions {
        library: Some(ort_lib()),
        ..ScorerOptions::default()
    };
    let mut scorer = OnnxScorer::new(&manifest, "int8", &opts).unwrap();
    let config = StreamConfig::from_manifest(&manifest, native());
    let refractory = config.decoder.refractory_ms;
    let mut spotter = Spotter::new(config, 12).unwrap();
    let keywords: Vec<usize> = (0..10).collect();
    let mut gd = GridDecoder::new(grid, &keywords, refractory, usize::MAX);
    let mut own = Vec::new();
    // The stream's own events are the cascade's (the shipped manifest has a verifier); the grid
    // observes the first stage's smoothed posteriors. Audio goes in pieces, each scored before the
    // next, so that the cascade's sample ring keeps every candidate's clip (as the server does).
    let mut verifier = kws_models::Verifier::from_manifest(&manifest, &opts).unwrap();
    let mut batch = WindowBatch::new();
    let pieces = pcm.chunks(kws_models::spotter::PROCESS_PIECE_FRAMES * 2);
    for piece in pieces.map(Some).chain([None]) {
        batch.clear();
        match piece {
            Some(p) => spotter.push_pcm(p, &mut batch).map(|_| ()).unwrap(),
            None => spotter.finish(&mut batch).unwrap(),
        }
        spotter
            .score_windows(
                &mut scorer,
                Some(&mut verifier),
                &batch,
                |w, smoothed| gd.observe(w, smoothed),
                |e| own.push((e.class, event_time(e.start_ms, e.end_ms))),
            )
            .unwrap();
    }
    let mut out = BTreeMap::new();
    for (g, t) in grid.iter().enumerate() {
        let c = match_events(gd.events(g), labels, 10, 500);
        out.insert(kws_models::eval::threshold_label(*t), c);
    }
    Expected {
        grid: out,
        own: match_events(&own, labels, 10, 500),
    }
}

/// `name{labels} value` lines of the Prometheus text for `metric`, as label map -> value.
fn series(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            let inner = &labels[metric.len() + 1..labels.len() - 1];
            let map = inner
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (map, value.parse().unwrap())
        })
        .collect()
}

fn counter(text: &str, metric: &str, keyword: &str, threshold: &str) -> u64 {
    let v: Vec<f64> = series(text, metric)
        .into_iter()
        .filter(|(l, _)| l["model"] == MODEL && l["keyword"] == keyword && l["threshold"] == threshold)
        .map(|(_, v)| v)
        .collect();
    assert!(v.len() <= 2, "{metric} {keyword} {threshold}: {v:?}");
    v.iter().sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_and_negative_streams_drive_exact_counters_and_feedback() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let cfg = test_config();
    let grid = cfg.evaluation.thresholds.clone();
    let server = TestServer::start(cfg).await;
    let manifest = Manifest::load(repo().join("models").join("tc-resnet8")).unwrap();

    // The golden stream with its keyword labels (the `_unknown_` word is not a keyword: no label).
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("golden.json")).unwrap()).unwrap();
    let mut labels = Vec::new();
    let mut label_msgs = Vec::new();
    for l in golden["stream"]["labels"].as_array().unwrap() {
        let kw = l["label"].as_str().unwrap();
        let Some(class) = manifest.keyword_index(kw) else {
            continue;
        };
        let (s, e) = (l["start_ms"].as_u64().unwrap(), l["end_ms"].as_u64().unwrap());
        labels.push(Label {
            class,
            start_ms: s,
            end_ms: e,
        });
        label_msgs.push(v1::DetectRequest {
            request: Some(detect_request::Request::Label(v1::Label {
                keyword: kw.into(),
                start_ms: s,
                end_ms: e,
            })),
        });
    }
    assert!(labels.len() >= 2);
    let pcm = s16_bytes(&wav_i16(&golden_dir().join("stream.wav")));

    // Labelled stream: one label before the audio, the others after it.
    let mut reqs = vec![req_config(config(AudioEncoding::PcmS16le, 16_000, 1))];
    reqs.push(label_msgs[0].clone());
    reqs.extend(random_chunks(&pcm, 2, 5, 3200).into_iter().map(req_audio));
    reqs.extend(label_msgs[1..].iter().cloned());
    let labelled = run_stream(&mut server.client().await, reqs).await;
    assert!(labelled.status.is_none(), "{:?}", labelled.status);

    // Known-negative stream: the same audio; every event is a false alarm.
    let negative_cfg = v1::StreamConfig {
        known_negative: true,
        ..config(AudioEncoding::PcmS16le, 16_000, 1)
    };
    let mut reqs = vec![req_config(negative_cfg)];
    reqs.extend(random_chunks(&pcm, 2, 6, 3200).into_iter().map(req_audio));
    let negative = run_stream(&mut server.client().await, reqs).await;
    assert!(negative.status.is_none(), "{:?}", negative.status);

    // The summaries: this stream's own evaluation at its thresholds.
    let want_pos = expected(&pcm, &labels, &grid);
    let ev = labelled.summary.as_ref().unwrap().evaluation.unwrap();
    let own = &want_pos.own;
    assert_eq!(
        (ev.labels, ev.hits, ev.misses, ev.false_alarms, ev.confusions),
        (
            labels.len() as u64,
            own.tp.iter().sum(),
            own.fn_.iter().sum(),
            own.fp.iter().sum(),
            own.confusions
        )
    );
    assert!(
        ev.hits >= 1,
        "the model finds at least one labelled keyword: {ev:?}"
    );
    let neg_ev = negative.summary.as_ref().unwrap().evaluation.unwrap();
    assert_eq!(
        (neg_ev.labels, neg_ev.hits, neg_ev.false_alarms),
        (0, 0, negative.events.len() as u64)
    );

    // The counters: exact, for every keyword and grid threshold (labelled + negative streams).
    let want_neg = expected(&pcm, &[], &grid);
    let text = handle.render();
    let mut checked = 0;
    for (t, pos) in &want_pos.grid {
        let (tp, fp, fn_) = (&pos.tp, &pos.fp, &pos.fn_);
        let nfp = &want_neg.grid[t].fp;
        for (k, kw) in manifest.keywords.iter().enumerate() {
            assert_eq!(
                counter(&text, "kws_eval_true_positives_total", kw, t),
                tp[k],
                "TP {kw} @ {t}"
            );
            assert_eq!(
                counter(&text, "kws_eval_false_positives_total", kw, t),
                fp[k] + nfp[k],
                "FP {kw} @ {t}"
            );
            assert_eq!(
                counter(&text, "kws_eval_false_negatives_total", kw, t),
                fn_[k],
                "FN {kw} @ {t}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 10 * grid.len());
    let total_tp: u64 = want_pos.grid.values().map(|c| c.tp.iter().sum::<u64>()).sum();
    assert!(total_tp > 0, "the check is not vacuous");
    let audio: f64 = series(&text, "kws_eval_audio_seconds_total")
        .iter()
        .filter(|(l, _)| l["model"] == MODEL)
        .map(|(_, v)| v)
        .sum();
    assert!(
        (audio - 11.0).abs() < 1e-6,
        "5.5 s labelled + 5.5 s negative, got {audio}"
    );

    // Feedback: a real event id resolves and is counted; an unknown one is NOT_FOUND.
    let mut c = server.client().await;
    let event = labelled.events.first().expect("an event");
    let verdict = |id: &str| v1::SubmitFeedbackRequest {
        feedback: Some(v1::submit_feedback_request::Feedback::Verdict(v1::EventVerdict {
            event_id: id.into(),
            verdict: v1::Verdict::Correct as i32,
            note: "reviewed".into(),
        })),
    };
    c.submit_feedback(verdict(&event.event_id)).await.unwrap();
    let err = c.submit_feedback(verdict("no-such-event")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let missed = v1::SubmitFeedbackRequest {
        feedback: Some(v1::submit_feedback_request::Feedback::Missed(v1::MissedKeyword {
            stream_id: labelled.ready.as_ref().unwrap().stream_id.clone(),
            keyword: "left".into(),
            start_ms: 4000,
            end_ms: 4400,
            note: String::new(),
        })),
    };
    c.submit_feedback(missed).await.unwrap();
    let text = handle.render();
    let fb: Vec<_> = series(&text, "kws_feedback_total")
        .into_iter()
        .map(|(l, v)| (l["keyword"].clone(), l["verdict"].clone(), v as u64))
        .collect();
    assert!(
        fb.contains(&(event.keyword.clone(), "correct".into(), 1)),
        "{fb:?}"
    );
    assert!(fb.contains(&("left".into(), "missed".into(), 1)), "{fb:?}");
}
