"""Clip-level evaluation: accuracy on keywords and on all 12 classes, per-class recall, confusion matrix.

Evaluation windows are built by `data.build_eval_set` with a seed derived from the set's name, so every
recipe is scored on exactly the same audio.
"""

from __future__ import annotations

import zlib

import numpy as np

from . import CLASSES, KEYWORDS
from .data import Clips, build_eval_set, espeak_accent

KEYWORD_IDS = list(range(len(KEYWORDS)))


def eval_sets_for(clips: Clips, bg, r) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validation (held-out espeak accents) and one test set per held-out family and engine."""
    sets = {}
    val = clips.select(lambda m: espeak_accent(m) in r.val_espeak_accents)
    if len(val):
        sets["val-espeak-accents"] = val
    for fam in r.holdout_families:
        fam_clips = clips.select(lambda m, f=fam: m["family"] == f)
        engines = sorted({m["engine"] for m in fam_clips.meta})
        if len(engines) > 1:
            for e in engines:
                sets[f"test-{e}"] = fam_clips.select(lambda m, e=e: m["engine"] == e)
        sets[f"test-{fam}"] = fam_clips
    return {name: build_eval_set(c, bg, zlib.crc32(name.encode())) for name, c in sets.items()}


def predict(net, frontend, x: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            feats = frontend(torch.from_numpy(x[i:i + batch]))
            out.append(torch.softmax(net(feats), dim=1).numpy())
    return np.concatenate(out)


def scores(probs: np.ndarray, y: np.ndarray) -> dict:
    pred = probs.argmax(1)
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    kw = np.isin(y, KEYWORD_IDS)
    recall = {c: float(cm[i, i] / cm[i].sum()) for i, c in enumerate(CLASSES) if cm[i].sum() > 0}
    return {"acc": float((pred == y).mean()), "keyword_acc": float((pred[kw] == y[kw]).mean()),
            "n": int(len(y)), "recall": recall, "confusion": cm.tolist()}


def evaluate_sets(net, frontend, sets) -> dict:
    return {"sets": {name: scores(predict(net, frontend, x), y) for name, (x, y) in sets.items()}}


def format_confusion(cm) -> str:
    """Markdown table: rows are the true class, columns the prediction."""
    short = [c.strip("_")[:5] for c in CLASSES]
    lines = ["| true \\ pred | " + " | ".join(short) + " |", "|---" * (len(CLASSES) + 1) + "|"]
    for c, row in zip(short, cm):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)
