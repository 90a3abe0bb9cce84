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
    out = {name: build_eval_set(c, bg, zlib.crc32(name.encode())) for name, c in sets.items()}
    # Background only (noise colours, music, music + noise, all levels): the `_silence_` target.
    out["silence-mix"] = build_eval_set(clips.select(lambda m: False), bg, zlib.crc32(b"silence-mix"),
                                        silence_count=600)
    return out


def predict(net, frontend, x: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            feats = frontend(torch.from_numpy(x[i:i + batch]))
            out.append(torch.softmax(net(feats), dim=1).numpy())
    return np.concatenate(out)


def calibrate(probs: np.ndarray, y: np.ndarray, max_fpr: float = 0.01) -> np.ndarray:
    """Per keyword, the lowest threshold whose false-positive rate on the windows of every other class
    is <= max_fpr (validation data)."""
    th = np.ones(len(KEYWORDS))
    for i in KEYWORD_IDS:
        neg = np.sort(probs[y != i, i])[::-1]
        k = int(np.floor(max_fpr * len(neg)))
        th[i] = float(neg[k]) + 1e-7 if k < len(neg) else 0.0
    return th


def calibrated_predict(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Decision rule with per-keyword thresholds: the most probable keyword at or above its threshold,
    else the more probable of `_silence_` / `_unknown_` (so `_unknown_` cannot swallow a keyword that
    clears its threshold)."""
    kw = probs[:, KEYWORD_IDS]
    ok = kw >= thresholds[None, :]
    masked = np.where(ok, kw, -1.0)
    best = masked.argmax(1)
    rest = len(KEYWORDS) + probs[:, len(KEYWORDS):].argmax(1)
    return np.where(ok.any(1), best, rest)


def scores(probs: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> dict:
    pred = probs.argmax(1) if thresholds is None else calibrated_predict(probs, thresholds)
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    kw = np.isin(y, KEYWORD_IDS)
    if not kw.any():
        return {"acc": float((pred == y).mean()), "keyword_acc": float("nan"), "n": int(len(y)),
                "recall": {}, "confusion": cm.tolist()}
    recall = {c: float(cm[i, i] / cm[i].sum()) for i, c in enumerate(CLASSES) if cm[i].sum() > 0}
    return {"acc": float((pred == y).mean()), "keyword_acc": float((pred[kw] == y[kw]).mean()),
            "n": int(len(y)), "recall": recall, "confusion": cm.tolist()}


def evaluate_sets(net, frontend, sets) -> dict:
    """Argmax scores per set, plus scores under per-keyword thresholds calibrated on the validation set
    (`calibrated`), when there is one."""
    probs = {name: predict(net, frontend, x) for name, (x, y) in sets.items()}
    out = {"sets": {name: scores(probs[name], y) for name, (x, y) in sets.items()}}
    if "val-espeak-accents" in sets:
        th = calibrate(probs["val-espeak-accents"], sets["val-espeak-accents"][1])
        out["calibration_thresholds"] = th.tolist()
        out["calibrated"] = {name: scores(probs[name], y, th) for name, (x, y) in sets.items()}
    return out


def format_confusion(cm) -> str:
    """Markdown table: rows are the true class, columns the prediction."""
    short = [c.strip("_")[:5] for c in CLASSES]
    lines = ["| true \\ pred | " + " | ".join(short) + " |", "|---" * (len(CLASSES) + 1) + "|"]
    for c, row in zip(short, cm):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)
