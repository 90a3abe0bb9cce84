//! `kws-client eval` through a real server and with `--local`: identical JSON, sane counts, a DET PNG.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// A small labelled manifest: the golden stream with its true keyword positions (golden.json; its
/// `_unknown_` word is kept to exercise `ignored_labels`), the "yes" clip, and two negative clips.
fn write_manifest(dir: &std::path::Path) -> std::path::PathBuf {
    let g = golden_json();
    let labels: Vec<Value> = g["stream"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| json!({"keyword": l["label"], "start_ms": l["start_ms"], "end_ms": l["end_ms"]}))
        .collect();
    let lines = [
        json!({"wav": golden("stream.wav"), "labels": labels}),
        json!({"wav": golden("00-yes.wav"), "labels": [{"keyword": "yes", "start_ms": 0, "end_ms": 1000}]}),
        json!({"wav": golden("05-silence.wav"), "negative": true}),
        json!({"wav": golden("06-silence.wav"), "negative": true}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let path = dir.join("manifest.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_local_give_identical_reports() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let manifest = path_arg(&write_manifest(dir.path()));
    let (remote_json, local_json, det) = (
        dir.path().join("server.json"),
        dir.path().join("local.json"),
        dir.path().join("det.png"),
    );

    let out = kws_client(
        args(&[
            "--addr",
            &addr,
            "eval",
            &manifest,
            "--json",
            &path_arg(&remote_json),
            "--det",
            &path_arg(&det),
        ]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("thr @ <=1 FA/h"), "{text}");
    assert!(text.contains("overall (4 labels)"), "{text}");

    let out = kws_client(
        args(&[
            "eval",
            &manifest,
            "--local",
            "--model-dir",
            &path_arg(&model_dir()),
            "--variant",
            "int8",
            "--ort-lib",
            &path_arg(&ort_lib()),
            "--json",
            &path_arg(&local_json),
        ]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let remote: Value = serde_json::from_str(&std::fs::read_to_string(&remote_json).unwrap()).unwrap();
    let local: Value = serde_json::from_str(&std::fs::read_to_string(&local_json).unwrap()).unwrap();
    assert_eq!(remote, local, "server and --local reports differ");

    // Sanity of the numbers themselves.
    assert_eq!(remote["model"]["name"], "tc-resnet8:int8");
    assert_eq!(
        (remote["files"].as_u64(), remote["negative_files"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(remote["ignored_labels"], 1, "the _unknown_ word");
    assert_eq!(remote["audio_ms"], 5500 + 3 * 1000);
    assert_eq!(remote["grid"].as_array().unwrap().len(), 19);
    let overall = &remote["overall"];
    assert_eq!(
        overall["labels"], 4,
        "yes, stop, left in the stream + the yes clip"
    );
    let points = overall["points"].as_array().unwrap();
    for p in points {
        assert_eq!(p["tp"].as_u64().unwrap() + p["fn"].as_u64().unwrap(), 4);
    }
    // (Counts need not be monotonic in the threshold: with a refractory period, a low threshold's
    // early event can suppress a later one that a higher threshold reports.)
    // At a low threshold the model finds the stream's keywords (its shipped events do at 0.3).
    assert!(points[1]["tp"].as_u64().unwrap() >= 3, "{}", points[1]);
    let yes = remote["keywords"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyword"] == "yes")
        .unwrap();
    assert_eq!(yes["labels"], 2);

    let png = std::fs::read(&det).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 5_000, "a DET chart, {} bytes", png.len());
}

/// A streaming model (`tc-resnet8-stream`): the server scores it on its streaming graph and so does
/// `--local`; the reports (thresholds grid, events) are identical, and name the variant scored (the
/// int8 request falls back to fp32 on both sides unless the manifest ships an int8 streaming graph).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_model_gives_identical_reports_through_the_server_and_local() {
    let mut c = test_config();
    c.models.serve = vec!["tc-resnet8-stream:fp32".into()];
    c.models.default = "tc-resnet8-stream:fp32".into();
    let server = TestServer::start_with(c).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let manifest = path_arg(&write_manifest(dir.path()));
    let (remote_json, local_json) = (dir.path().join("server.json"), dir.path().join("local.json"));
    let remote_path = path_arg(&remote_json);
    let out = kws_client(
        args(&["--addr", &addr, "eval", &manifest, "--json", &remote_path]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let model = path_arg(&repo().join("models/tc-resnet8-stream"));
    let (lib, local_path) = (path_arg(&ort_lib()), path_arg(&local_json));
    let local_args = [
        "eval",
        &manifest,
        "--local",
        "--model-dir",
        &model,
        "--variant",
        "fp32",
        "--ort-lib",
        &lib,
        "--json",
        &local_path,
    ];
    let out = kws_client(args(&local_args), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let read = |p: &std::path::Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (remote, local) = (read(&remote_json), read(&local_json));
    assert_eq!(remote["model"]["name"], "tc-resnet8-stream:fp32");
    assert_eq!(remote["hop_ms"], 20);
    assert_eq!(remote, local, "server and --local reports differ");
    // `models` says how it is served.
    let out = kws_client(args(&["--addr", &addr, "models", "--json"]), None).await;
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let m = &v["models"][0];
    assert_eq!(
        (m["streaming"].as_bool(), m["state_bytes_per_stream"].as_u64()),
        (Some(true), Some(7648))
    );
    let out = kws_client(args(&["--addr", &addr, "models"]), None).await;
    assert!(
        stdout(&out).contains("streaming: scored hop by hop (20 ms) from 7648 bytes"),
        "{}",
        stdout(&out)
    );
    // A hop the streaming graph does not score is refused locally too.
    let bad = [&local_args[..], &["--hop-ms", "40"]].concat();
    let out = kws_client(args(&bad), None).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("hops of 2 frames (20 ms) only"),
        "{}",
        stderr(&out)
    );
}

/// A model whose manifest has a verifier (the kws-models fixture): the server's cascade and
/// `--local`'s give the same report, events included; `--first-stage-only` turns it off in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cascade_gives_identical_reports_through_the_server_and_local() {
    let mut c = test_config();
    c.models.dir = repo().join("models/tests/fixtures");
    c.models.serve = vec!["verifier:fp32".into()];
    c.models.default = "verifier:fp32".into();
    let server = TestServer::start_with(c).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let manifest = path_arg(&write_manifest(dir.path()));
    let fixture = repo().join("models/tests/fixtures/verifier");
    let mut reports = Vec::new();
    for first_stage_only in [false, true] {
        let flag: &[&str] = if first_stage_only {
            &["--first-stage-only"]
        } else {
            &[]
        };
        let (remote_json, local_json) = (
            dir.path().join(format!("server-{first_stage_only}.json")),
            dir.path().join(format!("local-{first_stage_only}.json")),
        );
        let mut remote_args = vec!["--addr", &addr, "eval", &manifest, "--json"];
        let remote_path = path_arg(&remote_json);
        remote_args.push(&remote_path);
        remote_args.extend(flag);
        let out = kws_client(args(&remote_args), None).await;
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        let (fixture_arg, lib, local_path) =
            (path_arg(&fixture), path_arg(&ort_lib()), path_arg(&local_json));
        let mut local_args = vec![
            "eval",
            &manifest,
            "--local",
            "--model-dir",
            &fixture_arg,
            "--variant",
            "fp32",
            "--ort-lib",
            &lib,
            "--json",
            &local_path,
        ];
        local_args.extend(flag);
        let out = kws_client(args(&local_args), None).await;
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        let read = |p: &std::path::Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let (remote, mut local) = (read(&remote_json), read(&local_json));
        // The local report names the model by its manifest (the server by the directory it serves).
        assert_eq!(local["model"]["name"], "tc-resnet8-verifier-test:fp32");
        local["model"]["name"] = remote["model"]["name"].clone();
        assert_eq!(
            remote, local,
            "server and --local reports differ (first_stage_only {first_stage_only})"
        );
        assert_eq!(remote["events"]["cascade"], !first_stage_only);
        reports.push(remote);
    }
    // Both find the labelled keywords; the grid (first stage) is the same with and without the
    // cascade, the events are not (the verifier rejects some candidates).
    let (cascade, first) = (&reports[0], &reports[1]);
    assert_eq!(cascade["overall"], first["overall"]);
    assert!(
        cascade["events"]["tp"].as_u64().unwrap() >= 2,
        "{}",
        cascade["events"]
    );
    assert!(
        first["events"]["tp"].as_u64().unwrap() >= 2,
        "{}",
        first["events"]
    );

    // `models` shows the cascade; `detect` prints the verifier's score of each event.
    let out = kws_client(args(&["--addr", &addr, "models"]), None).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "cascade: candidates when best_keyword >= 0.70, verifier head-research-conv15k.onnx (9 embeddings per view)"
        ),
        "{text}"
    );
    let wav = path_arg(&golden("stream.wav"));
    let out = kws_client(
        args(&["--addr", &addr, "detect", &wav, "--json", "--no-progress"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let events: Vec<Value> = stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "event")
        .collect();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["verifier_score"].as_f64().is_some_and(|p| p >= 0.9)),
        "{events:?}"
    );
    let out = kws_client(
        args(&[
            "--addr",
            &addr,
            "detect",
            &wav,
            "--json",
            "--no-progress",
            "--first-stage-only",
        ]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("\"verifier_score\":null"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_input_errors_exit_2_and_a_dead_server_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"wav\": \"a.wav\", \"labelz\": []}\n").unwrap();
    let out = kws_client(args(&["eval", &path_arg(&bad), "--local"]), None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.jsonl:1"), "{}", stderr(&out));

    let out = kws_client(
        args(&["eval", &path_arg(dir.path()), "--thresholds", "0.5,0.2"]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));

    let manifest = path_arg(&write_manifest(dir.path()));
    let dead = dead_addr().to_string();
    let out = kws_client(args(&["--addr", &dead, "eval", &manifest]), None).await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

/// Without a font (`KWS_PLOT_FONT=none` stands for a machine with none) the DET is still drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn det_without_a_font_is_drawn_without_text() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = path_arg(&write_manifest(dir.path()));
    let det = dir.path().join("det.png");
    let args = args(&[
        "eval",
        &manifest,
        "--local",
        "--model-dir",
        &path_arg(&model_dir()),
        "--ort-lib",
        &path_arg(&ort_lib()),
        "--det",
        &path_arg(&det),
    ]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kws-client"))
            .args(&args)
            .env("KWS_PLOT_FONT", "none")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("drawn without text"), "{}", stderr(&out));
    assert_eq!(&std::fs::read(&det).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}

/// The committed slice of the evaluation corpus (`models/eval-slice`, made by
/// `python -m kws_train.evalcorpus --slice`): keywords spliced between sentences over noise/music,
/// and negative speech/music. Checks the report's bookkeeping against the manifest itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_on_the_corpus_slice() {
    let slice = repo().join("models").join("eval-slice");
    let manifest = slice.join("manifest.jsonl");
    let rows: Vec<Value> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labels: u64 = rows
        .iter()
        .map(|r| r["labels"].as_array().map_or(0, |a| a.len() as u64))
        .sum();
    let audio_ms: u64 = rows
        .iter()
        .map(|r| (r["meta"]["seconds"].as_f64().unwrap() * 1000.0).round() as u64)
        .sum();
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("slice.json");
    let det = dir.path().join("det.png");
    let out = kws_client(
        args(&[
            "eval",
            &path_arg(&manifest),
            "--local",
            "--model-dir",
            &path_arg(&model_dir()),
            "--ort-lib",
            &path_arg(&ort_lib()),
            "--json",
            &path_arg(&json_path),
            "--det",
            &path_arg(&det),
        ]),
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(r["files"].as_u64(), Some(rows.len() as u64));
    assert_eq!(r["overall"]["labels"].as_u64(), Some(labels));
    assert!(
        r["audio_ms"].as_u64().unwrap().abs_diff(audio_ms) <= rows.len() as u64,
        "{} vs {audio_ms}",
        r["audio_ms"]
    );
    let points = r["overall"]["points"].as_array().unwrap();
    assert!(
        points
            .iter()
            .all(|p| p["tp"].as_u64().unwrap() + p["fn"].as_u64().unwrap() == labels),
        "every label is a hit or a miss at every threshold"
    );
    assert!(
        points[0]["tp"].as_u64().unwrap() >= labels / 2,
        "the model finds keywords in the slice: {}",
        points[0]
    );
    assert_eq!(&std::fs::read(&det).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}
