"""End-to-end synthesis with the real engines (skipped where they are not installed: CI has none)."""

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINING))

from kws_train import synth  # noqa: E402

HAS_SOX = shutil.which("sox") is not None
HAS_GNUSPEECH = HAS_SOX and shutil.which("node") is not None and \
    (synth.GNUSPEECH_DIR / "node_modules" / "@echogarden" / "gnuspeech-wasm").is_dir()


@pytest.mark.skipif(not HAS_GNUSPEECH, reason="node, sox or gnuspeech/node_modules (npm ci) missing")
def test_gnuspeech_renders_deterministic_16k_clips():
    rends = [r for r in synth.plan(["gnuspeech"], 0.01, 7)][:6]
    assert {r.engine for r in rends} == {"gnuspeech"} and all(r.params for r in rends)
    a = synth.render(rends)
    b = synth.render(rends)
    for r, x, y in zip(rends, a, b):
        assert x is not None and 0.05 * 16000 <= len(x) <= 16000, r
        assert np.array_equal(x, y), "GnuSpeech output must not depend on the run"
        assert np.max(np.abs(x)) == pytest.approx(0.7, abs=1e-3)  # peak-normalized like every engine
    meta = synth.rendition_meta(rends[0])
    assert meta["params"] == rends[0].params and "params" not in synth.rendition_meta(
        synth.Rendition("u", "espeak", "en-us", "yes", "yes", "yes", 150, 50, None, None, None))


@pytest.mark.skipif(not (HAS_SOX and shutil.which("espeak-ng") and Path("/usr/share/dict/words").exists()),
                    reason="espeak-ng, sox or wamerican missing")
def test_negative_track_end_to_end():
    from kws_train.lexicon import keywords_in
    from kws_train.negspeech import build_track, plan_track

    plan = plan_track("espeak", 0, 11, synth.espeak_variants(), seconds=6.0)
    engine, k, pcm, meta = build_track(("espeak", 0, 11, 6.0, plan))
    assert pcm.dtype == np.int16 and len(pcm) == 6 * 16000
    assert np.sqrt(np.mean((pcm / 32768.0) ** 2)) > 0.01
    segs = meta["segments"]
    assert segs and all(0 <= s["start"] < s["end"] <= len(pcm) for s in segs)
    assert all(not keywords_in(s["text"]) for s in segs if s["kind"] == "sentence")
    _, _, pcm2, _ = build_track(("espeak", 0, 11, 6.0, plan_track("espeak", 0, 11, synth.espeak_variants(), 6.0)))
    assert np.array_equal(pcm, pcm2)
