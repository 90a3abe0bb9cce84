"""Voice conversion of the synthesized clips with the WORLD vocoder (pyworld): more kinds of speakers
made from the allowed voices (the detection-quality issue allows it; no other voice is involved).

Each converted copy of a clip gets a new glottal pitch (shift of -5..+5 semitones), a new intonation
range (log-f0 excursions x0.6-1.5) and a new vocal tract (spectral envelope and aperiodicity warped along
frequency by x0.85-1.2: formants up for a shorter tract, down for a longer one), independently of its
duration. WORLD analysis: DIO + StoneMask f0, CheapTrick envelope, D4C aperiodicity, 5-ms frames.

A converted clip keeps its source's engine, voice and family (so held-out families and validation
accents stay out of training with their conversions), and carries `vc` (the parameters) and
`source` (the source uid). Stored apart from `shards/` so evaluation sets never see them:
    vc/<engine>.npz, vc/<engine>.jsonl   (same layout as shards)
Recipe key `vc_engines` adds them to the training clips (default: none).

Needs `pyworld` (requirements-vc.txt; built from source, needs a C++ compiler).
Usage: python -m kws_train.voiceconv --data data --engines espeak,flite-kal16 [--copies 1] [--fraction 0.5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from . import SAMPLE_RATE
from .synth import trim

FRAME_MS = 5.0
SEMITONES = (-5.0, 5.0)
F0_RANGE = (0.6, 1.5)
WARP = (0.85, 1.2)


def draw_params(rng: random.Random) -> dict:
    return {"semitones": round(rng.uniform(*SEMITONES), 3), "f0_range": round(rng.uniform(*F0_RANGE), 3),
            "warp": round(rng.uniform(*WARP), 4)}


def _warp_freq(x: np.ndarray, alpha: float) -> np.ndarray:
    """y[:, f] = x[:, f / alpha] (linear interpolation; the top bin repeats beyond the source range)."""
    n = x.shape[1]
    src = np.minimum(np.arange(n) / alpha, n - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    return x[:, i0] * (1 - w) + x[:, i1] * w


def convert(x: np.ndarray, p: dict, fs: int = SAMPLE_RATE) -> np.ndarray:
    """One converted copy of float audio `x` (any length >= 50 ms): pitch, intonation range, tract."""
    import pyworld as pw

    x64 = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pw.dio(x64, fs, frame_period=FRAME_MS)
    f0 = pw.stonemask(x64, f0, t, fs)
    sp = pw.cheaptrick(x64, f0, t, fs)
    ap = pw.d4c(x64, f0, t, fs)
    voiced = f0 > 0
    if voiced.any():
        lf = np.log(f0[voiced])
        m = lf.mean()
        f0 = f0.copy()
        f0[voiced] = np.exp(m + (lf - m) * p["f0_range"] + np.log(2) * p["semitones"] / 12)
    sp2 = np.ascontiguousarray(np.maximum(_warp_freq(sp, p["warp"]), 1e-16))
    ap2 = np.ascontiguousarray(np.clip(_warp_freq(ap, p["warp"]), 0.0, 1.0))
    y = pw.synthesize(np.ascontiguousarray(f0), sp2, ap2, fs, FRAME_MS)
    return y[:len(x)].astype(np.float32)


def _job(args) -> list[tuple[int, dict, np.ndarray | None]]:
    items, seed = args
    out = []
    for i, m, x, copy in items:
        p = draw_params(random.Random(f"{seed}:{m['uid']}:{copy}"))
        y = trim(convert(x, p))
        peak = float(np.max(np.abs(y))) if len(y) else 0.0
        if len(y) < SAMPLE_RATE // 20 or peak <= 0 or len(y) > SAMPLE_RATE:
            out.append((i, m, None))
            continue
        mm = dict(m, uid=f"{m['uid']}+vc{copy}", source=m["uid"], vc=p)
        out.append((i, mm, y * (0.7 / peak)))
    return out


def convert_engine(data: Path, engine: str, copies: int, fraction: float, seed: int, workers: int) -> dict:
    z = np.load(data / "shards" / f"{engine}.npz")
    pcm, off = z["audio"], z["offsets"]
    meta = [json.loads(x) for x in (data / "shards" / f"{engine}.jsonl").read_text(encoding="utf-8").splitlines()]
    pick = random.Random(f"{seed}:{engine}:pick")
    todo = [(i, m, pcm[off[i]:off[i + 1]].astype(np.float32) / 32768.0, c)
            for i, m in enumerate(meta) if pick.random() < fraction for c in range(copies)]
    t0 = time.time()
    c0 = _cpu()
    chunks = [(todo[k:k + 50], seed) for k in range(0, len(todo), 50)]
    audio, offsets, out_meta, dropped = [], [0], [], 0
    with multiprocessing.Pool(workers) as pool:
        for res in pool.imap(_job, chunks):
            for _, m, y in res:
                if y is None:
                    dropped += 1
                    continue
                q = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
                audio.append(q)
                offsets.append(offsets[-1] + len(q))
                out_meta.append(m)
    d = data / "vc"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / f"{engine}.npz", audio=np.concatenate(audio) if audio else np.zeros(0, np.int16),
             offsets=np.array(offsets))
    with open(d / f"{engine}.jsonl", "w", encoding="utf-8") as f:
        for m in out_meta:
            f.write(json.dumps(m) + "\n")
    src_s = sum(len(x) for _, _, x, _ in todo) / SAMPLE_RATE
    cpu = _cpu() - c0
    return {"engine": engine, "clips": len(out_meta), "dropped": dropped, "audio_s": round(src_s, 1),
            "wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu, 1),
            "audio_s_per_cpu_s": round(src_s / max(cpu, 1e-9), 2)}


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--engines", required=True)
    p.add_argument("--copies", type=int, default=1, help="converted copies per chosen clip")
    p.add_argument("--fraction", type=float, default=1.0, help="share of each engine's clips converted")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    for engine in [e for e in a.engines.split(",") if e]:
        print(json.dumps(convert_engine(a.data, engine, a.copies, a.fraction, a.seed, a.workers)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
