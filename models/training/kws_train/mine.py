"""Hard-negative mining rounds: score the negative-speech tracks (`negspeech.py`) with a trained model
and keep the windows it fires on, for the next round's training (recipe keys `mined_file`,
`mined_share`).

Every track is scored like a stream (`stream.windows`, hop 2 = 20 ms, the decoder's smoothing); a
window is kept when its smoothed highest keyword probability is >= `--threshold`, one per local peak
(non-maximum suppression over `--spacing-ms`). Output: one JSON line per mined window
{"uid" (track), "engine", "start" (first sample of the 1-s window), "score", "keyword"}.
Windows of held-out families and validation accents are mined too but never drawn in training (the
sampler only knows the tracks its recipe may train on).

Usage: python -m kws_train.mine --data data --model runs/x/model.onnx --out data/mined/round1.jsonl \
           [--threshold 0.5] [--engines espeak,gnuspeech]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import KEYWORDS, SAMPLE_RATE
from .data import load_negspeech
from .stream import DecoderConfig, smoothing_windows, windows
from .streameval import smoothed_fast


def peaks(score: np.ndarray, thr: float, spacing: int) -> list[int]:
    """Indices of windows with score >= thr, greedily by score, at least `spacing` windows apart."""
    cand = np.nonzero(score >= thr)[0]
    order = cand[np.argsort(-score[cand], kind="stable")]
    taken: list[int] = []
    blocked = np.zeros(len(score), bool)
    for i in order:
        if not blocked[i]:
            taken.append(int(i))
            blocked[max(0, i - spacing + 1):i + spacing] = True
    return sorted(taken)


def mine_track(session, x: np.ndarray, thr: float, dec: DecoderConfig, spacing_ms: int) -> list[dict]:
    wins = windows(x, dec.hop_frames)
    if not wins:
        return []
    feats = np.stack([w[2] for w in wins]).astype(np.float32)
    probs = np.concatenate([session.run(["probs"], {"features": feats[i:i + 512]})[0]
                            for i in range(0, len(feats), 512)])
    sm = smoothed_fast(probs, smoothing_windows(dec))[:, :len(KEYWORDS)]
    score, best = sm.max(axis=1), sm.argmax(axis=1)
    spacing = max(1, spacing_ms // (10 * dec.hop_frames))
    return [{"start": wins[i][0] * SAMPLE_RATE // 1000, "score": round(float(score[i]), 5),
             "keyword": KEYWORDS[int(best[i])]} for i in peaks(score, thr, spacing)]


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    from .synth import ALL_ENGINES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--model", type=Path, required=True, help="ONNX model ([N,98,40] -> probs [N,12])")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--spacing-ms", type=int, default=500)
    p.add_argument("--engines", default=",".join(ALL_ENGINES))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    session = ort.InferenceSession(str(a.model), so, providers=["CPUExecutionProvider"])
    tracks = load_negspeech(a.data, [e for e in a.engines.split(",") if e])
    dec = DecoderConfig()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t0, total_s, n = time.time(), 0.0, 0
    with open(a.out, "w", encoding="utf-8") as f:
        for x, m in zip(tracks.audio, tracks.meta):
            for w in mine_track(session, x.astype(np.float32) / 32768.0, a.threshold, dec, a.spacing_ms):
                f.write(json.dumps({"uid": m["uid"], "engine": m["engine"], **w}) + "\n")
                n += 1
            total_s += len(x) / SAMPLE_RATE
    print(json.dumps({"tracks": len(tracks), "hours": round(total_s / 3600, 3), "mined": n,
                      "per_hour": round(n / max(total_s / 3600, 1e-9), 1), "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    sys.exit(main())
