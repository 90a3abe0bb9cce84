"""calibrate (per-keyword streaming thresholds, lever 6): its fast decoder is the shipped decoder's rule
(stream.decode) at per-keyword thresholds, and its search never returns thresholds over the budget on
the streams it was given. numpy only."""

import sys
from pathlib import Path

import numpy as np

TRAINING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINING))

from kws_train import KEYWORDS  # noqa: E402
from kws_train.calibrate import Streams, decode as fast_decode, search, split  # noqa: E402
from kws_train.stream import DecoderConfig, decode, smoothed  # noqa: E402


def trace(n, seed):
    rng = np.random.default_rng(seed)
    m = (n + 3) // 4
    logits = rng.normal(0, 1, (m, 12)) + (rng.random((m, 1)) < 0.15) * rng.normal(0, 9, (m, 12))
    p = np.exp(np.repeat(logits, 4, axis=0)[:n] + rng.normal(0, 0.01, (n, 12)))
    p = (p / p.sum(1, keepdims=True)).astype(np.float32)
    start = 20 * np.arange(n, dtype=np.int64)
    return p, start, start + 1000


def test_fast_decode_is_the_decoder_rule_at_per_keyword_thresholds():
    dec = DecoderConfig()
    for seed in range(20):
        p, st, en = trace(600, seed)
        rng = np.random.default_rng(100 + seed)
        th = rng.choice([0.3, 0.5, 0.7, 0.9, 0.99], size=len(KEYWORDS)).astype(np.float32)
        want = decode(list(zip(st, en, p)), {k: float(th[i]) for i, k in enumerate(KEYWORDS)}, dec)
        sm = smoothed(list(zip(st, en, p)), dec)
        got = fast_decode(sm, st, en, th, dec.refractory_ms)
        assert got == [(KEYWORDS.index(e.keyword), (e.start_ms + e.end_ms) // 2) for e in want]


def streams(n_files, seed):
    dec = DecoderConfig()
    files = []
    rng = np.random.default_rng(seed)
    for i in range(n_files):
        p, st, en = trace(900, seed * 100 + i)
        sm = smoothed(list(zip(st, en, p)), dec)
        # Labels where some keyword is clearly up, so some events are true and some false.
        k = np.argmax(sm[:, :10], 1)
        hot = np.nonzero(sm[np.arange(len(sm)), k] > 0.8)[0]
        labels = [(int(k[j]), int(st[j] + 300), int(st[j] + 700)) for j in hot[::7] if rng.random() < 0.6]
        files.append({"sm": sm, "start": st, "end": en, "labels": np.array(labels, np.int64).reshape(-1, 3),
                      "seconds": 18.0, "category": "keywords" if i % 2 else "speech"})
    return files


def test_search_respects_the_budget_and_beats_no_worse_than_one_threshold():
    files = streams(12, 3)
    s = Streams(files, 1000, 500)
    grid = [0.3, 0.5, 0.7, 0.9, 0.95, 0.99]
    met = 0
    for budget in (5.0, 1200.0, 1600.0, 3000.0):  # the fixture fires ~1100-3000 times per hour
        th, info = search(s, grid, budget)
        c = s.counts(th).sum(0)
        top = s.counts(np.full(len(KEYWORDS), grid[-1], np.float32)).sum(0)
        assert info["within_budget"] == (top[1] <= budget * s.hours)
        if not info["within_budget"]:
            continue
        met += 1
        assert c[1] <= budget * s.hours + 1e-9
        single = s.counts(np.full(len(KEYWORDS), info["single_threshold"], np.float32)).sum(0)
        if single[1] <= budget * s.hours:
            assert c[0] >= single[0]
    assert met >= 2, "the fixture must let some budgets be met"


def test_split_keeps_streams_whole_and_categories_balanced():
    files = streams(9, 4)
    a, b = split(files, 2)
    assert len(a) + len(b) == 9
    assert {id(f) for f in a}.isdisjoint({id(f) for f in b})
    for part in (a, b):
        assert {str(f["category"]) for f in part} == {"keywords", "speech"}


def test_a_clip_table_cut_at_an_offset_is_looked_up_and_written_at_that_offset(tmp_path):
    """`clip-table --offset-ms 80` answers for views one embedding later than the candidate's own: calibrate
    looks every candidate up there (a table read at offset 0 has no such clip) and writes the offset into
    the manifest as `verifier.centre_offset_ms`."""
    import json
    import os

    from kws_train import calibrate
    from kws_train.verifier import OFFSET_KEY, VIEW_SHIFTS_KEY, view_start

    n, k = 300, KEYWORDS.index("go")
    sm = np.zeros((n, 12), np.float32)
    sm[:, 11] = 1.0
    sm[100:110, :] = 0.0
    sm[100:110, k] = 0.99  # one keyword, ten windows at 2.0-2.2 s
    start = 20 * np.arange(n, dtype=np.int64)
    end = start + 1000
    cache = tmp_path / "cache"
    cache.mkdir()
    np.savez(cache / "s.npz", sm=sm, start=start, end=end, emb=np.zeros((0, 96), np.float32),
             labels=np.array([[k, 2400, 2800]], np.int64), seconds=n * 0.02 + 1, category="keywords", wav="s.wav")
    (cache / "decoder.json").write_text(json.dumps({"smoothing_ms": 300, "refractory_ms": 1000}))
    firsts = sorted({view_start(int(t), 80.0) for t in (start[100:110] + end[100:110]) // 2})
    at_zero = {view_start(int(t)) for t in (start[100:110] + end[100:110]) // 2}
    assert min(at_zero) not in firsts  # read at offset 0, the first candidate has no clip in this table
    probs = np.zeros((len(firsts), 12), np.float32)
    probs[:, k] = 0.9
    table = tmp_path / "clips.npz"
    np.savez(table, **{"s.wav|first": np.array(firsts, np.int64), "s.wav|probs": probs,
                       VIEW_SHIFTS_KEY: np.array(1, np.int64), OFFSET_KEY: np.array(80.0)})
    model = tmp_path / "m"
    model.mkdir()
    os.symlink(TRAINING.parent / "speech-embedding", tmp_path / "speech-embedding")
    head = tmp_path / "head.onnx"
    head.write_bytes(b"stand-in head: calibrate only copies and hashes it")
    (model / "manifest.json").write_text(json.dumps({"name": "m"}))
    out = tmp_path / "cal.json"
    calibrate.main(["--cache", str(cache), "--budget", "5", "--folds", "1", "--head", str(head), "--clip-table",
                    str(table), "--t1", "0.9", "--single", "--grid", "0.5,0.95", "--json", str(out),
                    "--write-manifest", str(model / "manifest.json")])
    r = json.loads(out.read_text())["single_result"]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    v = json.loads((model / "manifest.json").read_text())["verifier"]
    assert v["centre_offset_ms"] == 80 and v["view_shifts"] == 1
    assert v["thresholds"]["go"] == 0.5
