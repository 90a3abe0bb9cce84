"""Teacher probabilities for distilling the verifier into the first stage (research, issue 13).

The verifier's head sits on speech_embedding, a representation learned from real speech; the issue
found such a head better than TC-ResNet8 at telling keywords apart on the owner's unheard voices.
Distillation gives the first stage the head's full distribution over the classes as part of its
training target for every keyword clip, in the hope that the head's notion of which keywords sound
alike carries over. Measured in models/RESEARCH.md round 12 and not used: on the held-out awb voice
the head is the weaker stage, and two seeds lost 3-6 points at <= 1 and <= 2 FA/h.

    python -m kws_train.distill --config configs/tc-resnet8.toml --data data \
        --head ../tc-resnet8/verifier/head.onnx --out data/teacher/tc8-head.npz

Each keyword clip of the recipe's training engines (held-out families, validation accents and
`_unknown_` words left out, as `train` leaves them out) is centred in the head's 2.3-s training
window, embedded, and the head's probabilities of its three centre views (80 ms apart) are averaged.
Writes `uids` and `probs` [clips, 12] (class order `CLASSES`). A recipe reads the file back with
`distill_file` (relative to the data directory), `distill_weight` and `distill_temperature`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import CLASSES, KEYWORDS

VIEWS = 3  # centre view and one 80-ms shift either side


def teacher_probs(audio: list[np.ndarray], head: Path, features: Path | None, threads: int = 1) -> np.ndarray:
    """The head's probabilities [clips, 12] of 1-s clips, each centred in the head's 2.3-s window
    (`verifier.centred_views`), averaged over the three centre views."""
    from .verifier import EMB_DIM, WINDOW_EMB, Embedder, centred_views, find_feature_models, head_file_probs

    models = find_feature_models(features)
    if models is None:
        raise FileNotFoundError("speech_embedding feature models not found (models/speech-embedding)")
    views = centred_views(Embedder(models, threads), audio, VIEWS // 2)
    p = head_file_probs(head, views.reshape(-1, WINDOW_EMB, EMB_DIM)).reshape(len(views), VIEWS, len(CLASSES))
    return p.mean(axis=1).astype(np.float32)


def soft_targets(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`probs ** (1 / T)`, renormalized: T > 1 flattens the teacher (its classes' logits divided by
    T, for a softmax teacher), T = 1 leaves it as it is."""
    if temperature <= 0:
        raise ValueError(f"distill_temperature must be > 0, got {temperature}")
    p = np.clip(np.asarray(probs, np.float64), 1e-12, None) ** (1.0 / temperature)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


def load_teacher(path: Path) -> dict[str, np.ndarray]:
    """uid -> teacher probabilities [12], as written by this module."""
    z = np.load(path)
    uids, probs = z["uids"], z["probs"]
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES) or len(uids) != len(probs):
        raise ValueError(f"{path}: expected uids [n] and probs [n, {len(CLASSES)}], "
                         f"got {uids.shape} and {probs.shape}")
    return {str(u): p for u, p in zip(uids, probs)}


def main(argv: list[str] | None = None) -> None:
    from .data import load_clips
    from .recipe import load_recipe
    from .train import trainable

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="recipe whose training clips get teacher labels")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--head", type=Path, required=True, help="verifier head (head.onnx or head.pt)")
    p.add_argument("--features", type=Path, help="directory of the two speech_embedding models")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    r = load_recipe(a.config)
    engines = [e for e in r.engines if (a.data / "shards" / f"{e}.npz").exists()]
    missing = sorted(set(r.engines) - set(engines))
    if missing:
        raise SystemExit(f"no shards for {missing} under {a.data / 'shards'} (run kws_train.synth)")
    clips = load_clips(a.data, engines).select(lambda m: trainable(m, r) and m["label"] in KEYWORDS)
    t0 = time.time()
    probs = teacher_probs(clips.audio, a.head, a.features, threads=a.threads)
    y = np.array([CLASSES.index(m["label"]) for m in clips.meta])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, uids=np.array([m["uid"] for m in clips.meta]), probs=probs)
    top = probs.max(axis=1)
    print(json.dumps({"clips": len(clips), "seconds": round(time.time() - t0, 1),
                      "teacher_argmax_is_label": float((probs.argmax(1) == y).mean()),
                      "teacher_p_label_median": float(np.median(probs[np.arange(len(y)), y])),
                      "teacher_top_p_mean": float(top.mean()),
                      "share_with_top_p_below_0.9": float((top < 0.9).mean()),
                      "out": str(a.out)}, indent=1))


if __name__ == "__main__":
    main()
