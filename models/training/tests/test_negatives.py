"""Negative speech: generated texts, track plans, the sampler's negative windows, recipe keys and the
weighted / hard-example loss. Parts needing wamerican, TTS engines or torch skip when those are absent.
"""

import dataclasses
import random
import sys
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINING))

from kws_train import KEYWORDS, UNKNOWN  # noqa: E402
from kws_train.data import LABEL_INDEX, Clips, Tracks, negative_crop  # noqa: E402
from kws_train.lexicon import keywords_in, near_words_in  # noqa: E402
from kws_train.recipe import Recipe, load_recipe  # noqa: E402

HAS_WORDS = Path("/usr/share/dict/words").exists()
#: Every recipe that existed before the negative-speech keys (the e* and f* research arms and the v* verifier
#: window configs use them, and so do TC-ResNet8 since 2.1.0, its streamable variant since
#: 2.1.0-streaming, TC-ResNet14-1.5 since 2.1.0 and its streamable variant: their recipe is the e6 arm's).
E6_CONFIGS = ("tc-resnet8.toml", "tc-resnet8-stream.toml", "tc-resnet14-1.5.toml", "tc-resnet14-1.5-stream.toml")
CONFIGS = sorted(p for p in (TRAINING / "configs").rglob("*.toml")
                 if not p.name.startswith(("e", "f", "v")) and p.name not in E6_CONFIGS)
NEW_ARMS = sorted([*(TRAINING / "configs" / "research").glob("e*.toml"),
                   *(TRAINING / "configs" / "research").glob("f*.toml"),
                   *(TRAINING / "configs" / "research").glob("v*.toml")])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(TRAINING / "configs")))
def test_shipped_recipes_leave_negatives_off(path):
    r = load_recipe(path)
    assert (r.negative_share, r.negative_weight, r.hard_threshold, r.negative_engines) == (0.0, 1.0, 0.0, None)
    assert r.vc_engines == []


@pytest.mark.parametrize("path", NEW_ARMS, ids=lambda p: p.stem)
def test_new_arms_load(path):
    from kws_train.data import FAMILIES

    r = load_recipe(path)
    # e5-gnuspeech changes the voices only; every other arm trains on negative speech.
    assert r.negative_share > 0 or (r.negative_engines is None and "gnuspeech" in r.engines)
    assert set(r.negative_engines or r.engines) <= set(FAMILIES)
    assert set(r.engines) <= set(FAMILIES) and set(r.vc_engines) <= set(FAMILIES)
    assert r.holdout_families == ["awb"]


def test_shipped_tc_resnet8_is_the_e6_arm():
    """TC-ResNet8 2.1.0 was trained as research/e6-gnuspeech-negatives (models/RESEARCH.md, round 4):
    the shipped config must stay that recipe under the shipped name, so retrain.sh reproduces it."""
    shipped = dataclasses.asdict(load_recipe(TRAINING / "configs" / "tc-resnet8.toml"))
    arm = dataclasses.asdict(load_recipe(TRAINING / "configs" / "research" / "e6-gnuspeech-negatives.toml",
                                         steps=12000, holdout_families=["awb"]))
    assert shipped.pop("name") == "tc-resnet8" and arm.pop("name") == "e6-gnuspeech-negatives"
    assert shipped == arm
    assert shipped["negative_share"] == 0.3 and "gnuspeech" in shipped["engines"]


@pytest.mark.parametrize("model", ["tc-resnet8-stream", "tc-resnet14-1.5"])
def test_shipped_model_is_the_arm_it_was_trained_as_and_tc_resnet8s_recipe(model):
    """tc-resnet8-stream 2.1.0-streaming was trained as research/e6-tc-resnet8-stream (issue 15) and
    TC-ResNet14-1.5 2.1.0 as research/e6-tc-resnet14-1.5 (models/RESEARCH.md, round 11): each shipped
    config is its arm under the shipped name, and TC-ResNet8's recipe with another architecture, nothing forked."""
    shipped = dataclasses.asdict(load_recipe(TRAINING / "configs" / f"{model}.toml"))
    trained = dataclasses.asdict(load_recipe(TRAINING / "configs" / "research" / f"e6-{model}.toml"))
    windowed = dataclasses.asdict(load_recipe(TRAINING / "configs" / "tc-resnet8.toml"))
    assert shipped.pop("name") == model and trained.pop("name") == f"e6-{model}"
    assert shipped == trained
    assert shipped.pop("arch") == model and windowed.pop("arch") == "tc-resnet8"
    windowed.pop("name")
    assert shipped == windowed


def test_streaming_tc_resnet14_is_the_shipped_recipe():
    """tc-resnet14-1.5-stream is trained with TC-ResNet8's recipe; only the architecture differs, so the
    two streaming models compare architectures, not recipes (issue 15)."""
    big = dataclasses.asdict(load_recipe(TRAINING / "configs" / "tc-resnet14-1.5-stream.toml"))
    small = dataclasses.asdict(load_recipe(TRAINING / "configs" / "tc-resnet8-stream.toml"))
    assert (big.pop("name"), big.pop("arch")) == ("tc-resnet14-1.5-stream", "tc-resnet14-1.5-stream")
    assert (small.pop("name"), small.pop("arch")) == ("tc-resnet8-stream", "tc-resnet8-stream")
    assert big == small


def test_recipe_keys_load(tmp_path):
    (tmp_path / "r.toml").write_text('extends = "%s"\nnegative_share = 0.6\nnegative_weight = 2.0\n'
                                     'hard_threshold = 0.3\nhard_start = 0.25\nnegative_engines = ["espeak"]\n'
                                     % (TRAINING / "configs" / "tc-resnet8.toml").as_posix())
    r = load_recipe(tmp_path / "r.toml")
    assert (r.negative_share, r.negative_weight, r.hard_threshold, r.hard_start) == (0.6, 2.0, 0.3, 0.25)
    assert r.negative_engines == ["espeak"] and r.steps == 12000


def test_negative_crop_is_random_and_in_range():
    rng = np.random.default_rng(0)
    a = (np.arange(16000 * 10) % 30000).astype(np.int16)
    b = np.full(16000 * 2, 1000, np.int16)
    t = Tracks([a, b], [{"engine": "espeak"}, {"engine": "gnuspeech"}])
    crops = [negative_crop(t, rng) for _ in range(200)]
    assert all(len(c) == 19200 and c.dtype == np.float32 for c in crops)
    starts = {int(round(c[0] * 32768)) for c in crops if c[0] * 32768 != 1000}
    assert len(starts) > 50  # many offsets
    from_b = sum(np.all(c == 1000 / 32768) for c in crops)
    assert 10 < from_b < 80  # weighted by length: ~1/6 of the crops


@pytest.mark.skipif(not HAS_WORDS, reason="wamerican not installed")
def test_generated_sentences_are_keyword_free():
    from kws_train.textgen import lexicon, sentences

    tr, va = lexicon("train", phonetic=False), lexicon("val", phonetic=False)
    assert not set(tr["noun"]) & set(va["noun"]) and len(va["noun"]) > 1000
    s = sentences(500, 1, "train", near_p=0.5, phonetic=False)
    assert s == sentences(500, 1, "train", near_p=0.5, phonetic=False)
    assert not any(keywords_in(x, phonetic=False) for x in s)
    with_near = sum(bool(near_words_in(x, phonetic=False)) for x in s)
    assert 150 < with_near < 350
    assert not any(near_words_in(x, phonetic=False) for x in sentences(300, 2, "val", near_p=0.0, phonetic=False))


@pytest.mark.skipif(not HAS_WORDS, reason="wamerican not installed")
def test_track_plan_is_deterministic_and_mixed():
    from kws_train.negspeech import plan_track

    v, items, rends = plan_track("gnuspeech", 3, 42, [], phonetic=False)
    v2, items2, _ = plan_track("gnuspeech", 3, 42, [], phonetic=False)
    assert (v, items) == (v2, items2) and v["voice"] in ("male", "female", "large_child", "baby")
    assert plan_track("gnuspeech", 4, 42, [], phonetic=False)[1] != items
    kinds = [k for k, _, _ in items]
    assert kinds.count("sentence") > 5
    for (kind, text, cut), r in zip(items, rends):
        assert r.engine == "gnuspeech" and r.params == v["params"] and r.reverb == v["reverb"]
        if kind == "cut-keyword":
            assert text in KEYWORDS and 0.3 <= abs(cut) <= 0.6
        else:
            assert not keywords_in(text, phonetic=False)


# --- torch: the sampler and the loss -----------------------------------------------------------------


def _toy(rng):
    audio, meta = [], []
    for label in KEYWORDS + [UNKNOWN]:
        for j in range(4):
            audio.append(rng.normal(0, 0.1, 8000).astype(np.float32))
            meta.append({"label": label, "engine": "espeak", "word": label, "family": "espeak", "voice": "en-us+m1"})
    bg = {n: rng.normal(0, 0.1, 40000).astype(np.float32) for n in
          ["whitenoise", "pinknoise", "brownnoise", "macroform-cold_day", "macroform-robot_dity",
           "macroform-the_simplicity"]}
    tracks = Tracks([(rng.normal(0, 3000, 16000 * 5)).astype(np.int16)], [{"engine": "espeak"}])
    return Clips(audio, meta), bg, tracks


def test_sampler_negative_share():
    pytest.importorskip("torch")
    from kws_train.train import BatchSampler

    clips, bg, tracks = _toy(np.random.default_rng(0))
    base = Recipe(batch=40)
    # share 0: giving the sampler tracks changes nothing (same random stream, same batches)
    a = BatchSampler(clips, bg, base, np.random.default_rng(5))()
    b = BatchSampler(clips, bg, base, np.random.default_rng(5), tracks)()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    r = dataclasses.replace(base, negative_share=0.75)
    x, y = BatchSampler(clips, bg, r, np.random.default_rng(5), tracks)()
    assert x.shape == (40, 16000) and np.all(y[-30:] == LABEL_INDEX[UNKNOWN])
    # without tracks (export's calibration windows) the batch stays class-balanced
    x, y = BatchSampler(clips, bg, r, np.random.default_rng(5))()
    assert np.array_equal(x, a[0])


def test_negative_weight_and_hard_examples():
    torch = pytest.importorskip("torch")
    from kws_train.train import example_weights, weighted_loss

    y = torch.tensor([0, 3, LABEL_INDEX[UNKNOWN], LABEL_INDEX[UNKNOWN], 10])
    probs = torch.tensor([
        [0.9] + [0.1 / 11] * 11,  # keyword 0, confident: easy
        [0.5] + [0.5 / 11] * 11,  # keyword 3 at p = 0.045: hard
        [0.05] * 11 + [0.45],  # unknown, keywords at 0.05: easy
        [0.6] + [0.4 / 11] * 11,  # unknown, fires "yes" at 0.6: hard
        [0.02] * 10 + [0.78, 0.02],  # silence, easy
    ])
    logits = torch.log(probs)
    r = Recipe(steps=100)
    assert example_weights(logits, y, r, 0) is None
    per = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert float(weighted_loss(per, None)) == pytest.approx(3.0)
    w = example_weights(logits, y, dataclasses.replace(r, negative_weight=3.0), 0)
    assert w.tolist() == [1, 1, 3, 3, 3]
    w = example_weights(logits, y, dataclasses.replace(r, hard_threshold=0.5), 0)
    assert w.tolist() == [0, 1, 0, 1, 0]
    assert float(weighted_loss(per, w)) == pytest.approx(3.0)  # (2 + 4) / 2
    # not before hard_start
    assert example_weights(logits, y, dataclasses.replace(r, hard_threshold=0.5, hard_start=0.5), 10) is None
    w = example_weights(logits, y, dataclasses.replace(r, hard_threshold=0.5, hard_start=0.5, negative_weight=2.0), 60)
    assert w.tolist() == [0, 1, 0, 2, 0]
    assert float(weighted_loss(per, torch.zeros(5))) == 0.0


# --- voice conversion (pyworld) ----------------------------------------------------------------------


def test_voice_conversion_changes_pitch_and_keeps_length():
    pytest.importorskip("pyworld")
    from kws_train.voiceconv import _warp_freq, convert

    t = np.arange(16000) / 16000
    f0 = 120 * (1 + 0.1 * np.sin(2 * np.pi * 2 * t))
    x = (0.3 * np.sign(np.sin(2 * np.pi * np.cumsum(f0) / 16000))).astype(np.float32)  # buzzy, 108-132 Hz

    def pitch(y):
        import pyworld as pw

        f, _ = pw.dio(y.astype(np.float64), 16000)
        return np.median(f[f > 0])

    y = convert(x, {"semitones": 5.0, "f0_range": 1.0, "warp": 1.1})
    assert len(y) == len(x) and y.dtype == np.float32
    assert pitch(y) / pitch(x) == pytest.approx(2 ** (5 / 12), rel=0.05)
    y0 = convert(x, {"semitones": 0.0, "f0_range": 1.0, "warp": 1.0})
    assert pitch(y0) == pytest.approx(pitch(x), rel=0.03)
    a = np.arange(12, dtype=np.float64).reshape(2, 6)
    assert np.allclose(_warp_freq(a, 1.0), a) and np.allclose(_warp_freq(a, 2.0)[0], [0, 0.5, 1, 1.5, 2, 2.5])


def test_converted_clips_join_training_only_when_asked(tmp_path):
    pytest.importorskip("torch")
    import json

    from kws_train.train import add_converted

    (tmp_path / "vc").mkdir()
    audio = np.zeros(3000, np.int16)
    np.savez(tmp_path / "vc" / "espeak.npz", audio=audio, offsets=np.array([0, 1000, 2000, 3000]))
    metas = [{"uid": f"u{i}", "engine": "espeak", "voice": v, "word": "yes", "label": "yes"}
             for i, v in enumerate(["en-us+m1", "en-029+m1", "en-gb+f2"])]
    (tmp_path / "vc" / "espeak.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    base = Clips([np.zeros(10, np.float32)], [{"engine": "flite-kal16", "label": "yes"}])
    r = Recipe()
    assert add_converted(base, tmp_path, r) is base
    out = add_converted(base, tmp_path, dataclasses.replace(r, vc_engines=["espeak"]))
    assert [m.get("voice") for m in out.meta] == [None, "en-us+m1", "en-gb+f2"]  # en-029: validation accent


# --- mining rounds -----------------------------------------------------------------------------------


def test_mining_peaks_and_crops(tmp_path):
    from kws_train.data import load_mined, mined_crop
    from kws_train.mine import peaks

    score = np.array([0.1, 0.6, 0.7, 0.65, 0.2, 0.1, 0.9, 0.2, 0.55, 0.1])
    assert peaks(score, 0.5, 3) == [2, 6]  # 0.6/0.65 suppressed by 0.7, 0.55 by 0.9 (2 apart)
    assert peaks(score, 0.5, 1) == [1, 2, 3, 6, 8]
    x = np.arange(16000 * 3, dtype=np.int64).astype(np.int16)
    t = Tracks([x, x], [{"uid": "e:neg00000"}, {"uid": "e:neg00001"}])
    c = mined_crop(t, 1, 16000)  # window [16000, 32000) centred in a 1.2-s crop
    assert len(c) == 19200 and c[0] * 32768 == pytest.approx(np.int16(16000 + 8000 - 9600))
    c0 = mined_crop(t, 0, 0)  # at the start: zero-padded, window still centred
    assert np.all(c0[:1600] == 0) and c0[1600] == 0 and c0[1601] * 32768 == pytest.approx(1)
    (tmp_path / "m.jsonl").write_text('{"uid": "e:neg00001", "start": 160}\n{"uid": "held:neg00000", "start": 5}\n')
    assert load_mined(tmp_path / "m.jsonl", t) == [(1, 160)]


def test_sampler_mined_share():
    pytest.importorskip("torch")
    from kws_train.train import BatchSampler

    clips, bg, tracks = _toy(np.random.default_rng(0))
    r = dataclasses.replace(Recipe(batch=20), negative_share=0.25, mined_share=0.25)
    x, y = BatchSampler(clips, bg, r, np.random.default_rng(1), tracks, [(0, 16000)])()
    assert np.all(y[-10:] == LABEL_INDEX[UNKNOWN]) and x.shape == (20, 16000)
    # mined windows need tracks; without a mined list the share stays class-balanced
    _, y2 = BatchSampler(clips, bg, r, np.random.default_rng(1), tracks)()
    assert np.sum(y2 == LABEL_INDEX[UNKNOWN]) < 15


def test_holdout_voices_keep_tracks_out():
    """`holdout_voices` (research/e7-gnuspeech-adult) holds an engine's voice types out (the negative-speech
    tracks are filtered with `held_out`), and nothing else."""
    from kws_train.recipe import held_out

    r = load_recipe(TRAINING / "configs" / "research" / "e7-gnuspeech-adult.toml")
    track = {"engine": "gnuspeech", "family": "gnuspeech", "voice": "baby"}
    assert held_out(track, r) and held_out({**track, "voice": "large_child"}, r)
    assert not held_out({**track, "voice": "female"}, r) and not held_out({**track, "voice": "male"}, r)
    assert held_out({"engine": "flite-awb", "family": "awb", "voice": "awb"}, r)
    e6 = load_recipe(TRAINING / "configs" / "research" / "e6-gnuspeech-negatives.toml")
    assert not held_out(track, e6)


def test_holdout_voices_keep_clips_out():
    pytest.importorskip("torch")
    from kws_train.train import trainable

    r = load_recipe(TRAINING / "configs" / "research" / "e7-gnuspeech-adult.toml")
    clip = {"engine": "gnuspeech", "family": "gnuspeech", "label": "yes", "word": "yes", "uid": "gnuspeech:1"}
    assert not trainable({**clip, "voice": "baby"}, r) and not trainable({**clip, "voice": "large_child"}, r)
    assert trainable({**clip, "voice": "male"}, r) and trainable({**clip, "voice": "female"}, r)
