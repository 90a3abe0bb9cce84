"""streameval (streaming recall / FA/h on a validation manifest) agrees with the reference decoder in
stream.py and the Rust matching rule; runs on the committed eval slice with the shipped model. numpy +
onnxruntime only."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
MODELS = TRAINING.parent
sys.path.insert(0, str(TRAINING))

from kws_train import KEYWORDS  # noqa: E402
from kws_train.stream import DecoderConfig, decode, smoothed, smoothing_windows  # noqa: E402
from kws_train.streameval import grid_events, match_events, smoothed_fast  # noqa: E402


def trace(n, seed, peaky=True):
    rng = np.random.default_rng(seed)
    m = (n + 3) // 4  # runs of 4 equal windows, so smoothed scores reach high thresholds
    logits = rng.normal(0, 1, (m, 12)) + (rng.random((m, 1)) < 0.1) * rng.normal(0, 8, (m, 12)) * peaky
    p = np.exp(np.repeat(logits, 4, axis=0)[:n] + rng.normal(0, 0.01, (n, 12)))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    start = 20 * np.arange(n, dtype=np.int64)
    return p, start, start + 1000 - 10 + 40  # window of 98 frames: end = start + 970 + 30


@pytest.mark.parametrize("n,smoothing_ms,hop", [(1, 60, 2), (2, 60, 2), (500, 60, 2), (500, 200, 2),
                                                 (300, 10, 1), (300, 100, 5)])
def test_smoothed_fast_is_bit_identical(n, smoothing_ms, hop):
    p, s, e = trace(n, n + smoothing_ms)
    cfg = DecoderConfig(smoothing_ms=smoothing_ms, hop_frames=hop)
    want = smoothed(list(zip(s, e, p)), cfg)
    got = smoothed_fast(p, smoothing_windows(cfg))
    assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("refractory_ms", [0, 300, 1000])
def test_grid_events_match_reference_decoder(refractory_ms):
    p, s, e = trace(3000, refractory_ms)
    cfg = DecoderConfig(smoothing_ms=60, refractory_ms=refractory_ms)
    sm = smoothed_fast(p, smoothing_windows(cfg))
    grid = [0.2, 0.5, 0.9, 0.99]
    got = grid_events(sm, s, e, grid, refractory_ms)
    # The reference decoder on the already-smoothed trace (smoothing 1 window = identity).
    ident = DecoderConfig(smoothing_ms=10, refractory_ms=refractory_ms, hop_frames=1)
    for t, ev in zip(grid, got):
        ref = decode(list(zip(s, e, sm)), {k: t for k in KEYWORDS}, ident)
        assert ev == [(KEYWORDS.index(x.keyword), (x.start_ms + x.end_ms) // 2) for x in ref], t
    assert len(got[0]) > len(got[2]) > 0


def test_match_events_rule():
    # labels: (class, start, end); events: (class, time)
    labels = [(0, 1000, 1500), (0, 1600, 2000), (3, 5000, 5400)]
    c = match_events([(0, 1700), (0, 1200), (1, 1300), (3, 9000), (3, 5900)], labels, 10, 500)
    # 1200 -> label 1; 1700 -> label 2 (label 1 taken); "no" at 1300 is a confusion FP; 5900 is within
    # 5400 + 500; 9000 is a plain false alarm.
    assert c["tp"][0] == 2 and c["tp"][3] == 1
    assert c["fp"][1] == 1 and c["fp"][3] == 1 and c["confusions"] == 1
    assert sum(c["fn"]) == 0
    c = match_events([], labels, 10, 500)
    assert c["fn"][0] == 2 and c["fn"][3] == 1


def test_on_committed_slice_with_shipped_model(tmp_path):
    pytest.importorskip("onnxruntime")
    from kws_train import streameval

    out = tmp_path / "rep.json"
    streameval.main([str(MODELS / "eval-slice" / "manifest.jsonl"), "--model-dir", str(MODELS / "tc-resnet8"),
                     "--thresholds", "0.3,0.9,0.999", "--json", str(out), "--quiet"])
    rep = json.loads(out.read_text())
    labels = sum(len(json.loads(x)["labels"]) for x in (MODELS / "eval-slice" / "manifest.jsonl").read_text().splitlines())
    o = rep["overall"]
    assert all(p["tp"] + p["fn"] == labels for p in o)
    assert o[0]["tp"] >= o[-1]["tp"] and o[0]["fp"] >= o[-1]["fp"]
    assert o[0]["recall"] >= 0.5, o[0]  # the shipped model finds most keywords of the slice
    # categories: the slice predates meta.category, so files fall back to labelled / negative
    assert set(rep["categories"]) == {"labelled", "negative"}
    assert abs(rep["seconds"] - sum(json.loads(x)["meta"]["seconds"] for x in
               (MODELS / "eval-slice" / "manifest.jsonl").read_text().splitlines())) < 0.01
