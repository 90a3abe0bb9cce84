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
