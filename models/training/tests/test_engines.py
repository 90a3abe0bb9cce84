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


def test_espeak_foreign_text_fixups():
    from kws_train.respell import _ESPEAK_FIXUPS

    # The festival respellings that espeak-ng's voices would misread (no engine needed for these).
    assert _ESPEAK_FIXUPS["it"]("jès") == "iès"  # espeak-ng Italian: "j" = /dZ/
    assert _ESPEAK_FIXUPS["ru"]("ст+ап") == "стап"  # "+" would be read as "plus"
    assert _ESPEAK_FIXUPS["hi"]("नॉ") == "नो" and _ESPEAK_FIXUPS["mr"]("गॉ") == "गो"
    assert set(_ESPEAK_FIXUPS) <= set(synth.ESPEAK_FOREIGN_LANGS)


@pytest.mark.skipif(not (HAS_SOX and shutil.which("espeak-ng") and Path("/usr/share/dict/words").exists()),
                    reason="espeak-ng, sox or wamerican missing")
def test_espeak_foreign_reads_respelled_keywords_in_every_language():
    import subprocess

    from kws_train.respell import respell_for_espeak

    rends = synth.plan(["espeak-foreign"], 0.1, 5)
    langs = {r.voice.split("+")[0] for r in rends}
    assert langs == set(synth.ESPEAK_FOREIGN_LANGS)
    kw = [r for r in rends if r.label == "yes"][:4] + [r for r in rends if r.label == "down"][:4]
    for r, x in zip(kw, synth.render(kw)):
        assert x is not None and 0.05 * 16000 <= len(x) <= 16000, r
        assert r.text == respell_for_espeak(r.voice.split("+")[0], r.word) and r.text != r.word
    # What the voice says (espeak-ng's phonemes): an English-like "yes" and "down", not "dZes" or "plus".
    for lang in synth.ESPEAK_FOREIGN_LANGS:
        said = {w: subprocess.run(["espeak-ng", "-q", "-x", "-v", lang, respell_for_espeak(lang, w)],
                                  capture_output=True, text=True, check=True).stdout.strip() for w in ("yes", "down")}
        assert said["yes"].lstrip("'").startswith("j") and "dZ" not in said["yes"], (lang, said)
        assert said["down"].startswith("d") and "pl'jus" not in said["down"], (lang, said)
