"""Distillation targets (distill.py, the recipe's distill_* keys): tempering, the uid lookup, the
sampler's soft targets. The sampler parts need torch and skip without it (CI)."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAINING))

from kws_train import CLASSES, KEYWORDS, UNKNOWN  # noqa: E402
from kws_train.data import LABEL_INDEX, Clips  # noqa: E402
from kws_train.distill import load_teacher, soft_targets  # noqa: E402
from kws_train.recipe import Recipe, load_recipe  # noqa: E402


def test_soft_targets_temper_and_normalize():
    p = np.array([[0.9, 0.09, 0.01] + [0.0] * 9], np.float32)
    assert np.allclose(soft_targets(p, 1.0), p, atol=1e-6)
    t2 = soft_targets(p, 2.0)
    assert abs(float(t2.sum()) - 1.0) < 1e-6
    # flatter, same order: the runner-up gains, the winner loses
    assert t2[0, 0] < 0.9 and t2[0, 1] > 0.09 and t2[0, 0] > t2[0, 1] > t2[0, 2]
    assert np.allclose(t2[0, :3], np.sqrt(p[0, :3]) / np.sqrt(np.clip(p[0], 1e-12, None)).sum(), atol=1e-5)
    with pytest.raises(ValueError):
        soft_targets(p, 0.0)


def test_load_teacher_checks_shapes(tmp_path):
    good = tmp_path / "t.npz"
    np.savez(good, uids=np.array(["a:1", "b:2"]), probs=np.full((2, len(CLASSES)), 1 / len(CLASSES), np.float32))
    t = load_teacher(good)
    assert set(t) == {"a:1", "b:2"} and t["a:1"].shape == (len(CLASSES),)
    bad = tmp_path / "bad.npz"
    np.savez(bad, uids=np.array(["a:1"]), probs=np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="probs"):
        load_teacher(bad)


def test_recipes_without_the_keys_do_not_distill():
    r = load_recipe(TRAINING / "configs" / "tc-resnet8.toml")
    assert (r.distill_file, r.distill_weight) == (None, 0.0)


def _clips(rng):
    audio, meta = [], []
    for label in KEYWORDS + [UNKNOWN]:
        for j in range(3):
            audio.append(rng.normal(0, 0.1, 8000).astype(np.float32))
            meta.append({"uid": f"espeak:{label}{j}", "label": label, "engine": "espeak", "word": label,
                         "family": "espeak", "voice": "en-us+m1"})
    bg = {n: rng.normal(0, 0.1, 40000).astype(np.float32) for n in
          ["whitenoise", "pinknoise", "brownnoise", "macroform-cold_day", "macroform-robot_dity",
           "macroform-the_simplicity"]}
    return Clips(audio, meta), bg


def _teacher_file(tmp_path, clips, skip=()):
    """Every keyword clip's teacher says 0.6 its label, 0.4 `_unknown_`."""
    uids, probs = [], []
    for m in clips.meta:
        if m["label"] in KEYWORDS and m["uid"] not in skip:
            p = np.zeros(len(CLASSES), np.float32)
            p[LABEL_INDEX[m["label"]]], p[LABEL_INDEX[UNKNOWN]] = 0.6, 0.4
            uids.append(m["uid"])
            probs.append(p)
    (tmp_path / "teacher").mkdir(exist_ok=True)
    np.savez(tmp_path / "teacher" / "t.npz", uids=np.array(uids), probs=np.stack(probs))
    return "teacher/t.npz"


def test_sampler_mixes_teacher_into_keyword_targets_only(tmp_path):
    pytest.importorskip("torch")
    from kws_train.train import BatchSampler, teacher_targets

    clips, bg = _clips(np.random.default_rng(0))
    r = Recipe(batch=60, distill_file=_teacher_file(tmp_path, clips), distill_weight=0.5)
    teacher = teacher_targets(clips, tmp_path, r)
    assert len(teacher) == 3 * len(KEYWORDS)
    x, y, target = BatchSampler(clips, bg, r, np.random.default_rng(3), teacher=teacher).sample()
    assert target.shape == (60, len(CLASSES)) and np.allclose(target.sum(1), 1.0)
    kw = y < len(KEYWORDS)
    assert kw.any() and (~kw).any()
    # keyword rows: 0.5 x one-hot + 0.5 x (0.6 label, 0.4 unknown)
    assert np.allclose(target[kw, :][np.arange(kw.sum()), y[kw]], 0.8)
    assert np.allclose(target[kw, LABEL_INDEX[UNKNOWN]], 0.2)
    # unknown and silence rows stay one-hot
    assert np.array_equal(target[~kw], np.eye(len(CLASSES), dtype=np.float32)[y[~kw]])
    # the same random stream as without a teacher: the windows and labels do not change
    x0, y0 = BatchSampler(clips, bg, dataclasses.replace(r, distill_weight=0.0), np.random.default_rng(3))()
    assert np.array_equal(x, x0) and np.array_equal(y, y0)


def test_teacher_file_must_cover_every_keyword_clip(tmp_path):
    pytest.importorskip("torch")
    from kws_train.train import teacher_targets

    clips, _ = _clips(np.random.default_rng(0))
    r = Recipe(distill_file=_teacher_file(tmp_path, clips, skip={"espeak:go1"}), distill_weight=0.5)
    with pytest.raises(ValueError, match="1 keyword"):
        teacher_targets(clips, tmp_path, r)
    with pytest.raises(ValueError, match="distill_file"):
        teacher_targets(clips, tmp_path, Recipe(distill_weight=0.5))
    with pytest.raises(ValueError, match="distill_weight"):
        teacher_targets(clips, tmp_path, dataclasses.replace(r, distill_weight=1.5))
    assert teacher_targets(clips, tmp_path, dataclasses.replace(r, distill_weight=0.0)) == {}
