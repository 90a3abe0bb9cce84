"""Streaming evaluation corpus: positive streams (keywords spliced between unrelated sentences, exact
labels) and negative streams (sentences without keywords, music, noise), from the training-allowed
English voices with seeds and texts disjoint from training.

Sentences come from Debian's `fortune-mod` collections; sentences containing a keyword as a word are
kept out. Each stream has one voice (engine, accent/variant, rate, pitch) for all its utterances and
one background (noise colour, music, or both) at an SNR of 5-25 dB (some streams nearly clean).

Output (under --out, not committed):
    manifest.jsonl   {"wav", "negative", "labels": [{"keyword", "start_ms", "end_ms"}],
                      "meta": {"engine", "voice", "background", "snr_db", "seconds"}}
    pos/NNNN.wav, neg/NNNN.wav   16 kHz mono s16
Usage: python -m kws_train.evalcorpus --out data/evalcorpus [--pos-minutes 22] [--neg-minutes 130]
       python -m kws_train.evalcorpus --out ../evalcorpus-slice --slice   (the small committed slice)
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import random
import re
from pathlib import Path

import numpy as np

from . import KEYWORDS, SAMPLE_RATE
from .data import MUSIC, NOISES, load_background
from .synth import ESPEAK_ACCENTS, FLITE_VOICES, Rendition, espeak_variants, render, write_wav

ENGINES = ["espeak", "flite-kal16", "flite-awb", "flite-rms", "festival-kal", "freetts-kevin16"]
SEED = 777_000  # disjoint from the training synthesis seed


def fortune_sentences(seed: int) -> list[str]:
    """Keyword-free sentences of 4-20 plain words from the fortune collections, shuffled."""
    out = set()
    for f in sorted(glob.glob("/usr/share/games/fortunes/*")):
        name = os.path.basename(f)
        if "." in name or not os.path.isfile(f):
            continue
        text = open(f, encoding="utf-8", errors="ignore").read().replace("%", " ").replace("\n", " ")
        for s in re.split(r"(?<=[.!?])\s+", text):
            s = s.strip()
            words = re.findall(r"[A-Za-z']+", s)
            if not 4 <= len(words) <= 20 or not re.fullmatch(r"[A-Za-z0-9 ,.;:'!?-]+", s):
                continue
            if any(w.lower().strip("'") in KEYWORDS for w in words):
                continue
            out.add(s)
    sents = sorted(out)
    random.Random(seed).shuffle(sents)
    return sents


def stream_voice(rng: random.Random, variants: list[str]) -> dict:
    engine = rng.choice(ENGINES)
    v = {"engine": engine, "tempo": None, "cents": None}
    if engine == "espeak":
        v.update(voice=f"{rng.choice(ESPEAK_ACCENTS)}+{rng.choice(variants)}", rate=float(rng.randint(130, 200)),
                 pitch=float(rng.randint(25, 75)))
    elif engine in FLITE_VOICES:
        v.update(voice=FLITE_VOICES[engine], rate=rng.uniform(0.9, 1.2), pitch=rng.uniform(0.85, 1.25))
        if v["voice"] == "rms":
            v["cents"] = rng.uniform(-200, 300)
    elif engine == "festival-kal":
        v.update(voice="voice_kal_diphone", rate=rng.uniform(0.9, 1.2), pitch=rng.uniform(90, 150))
    else:
        v.update(voice="kevin16", rate=1.0, pitch=0.0, tempo=rng.uniform(0.9, 1.15), cents=rng.uniform(-200, 300))
    return v


def rendition(v: dict, uid: str, text: str, label: str) -> Rendition:
    return Rendition(uid, v["engine"], v["voice"], text, label, text, v["rate"], v["pitch"], v["tempo"],
                     v["cents"], None)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2) + 1e-12))


def mix_background(x: np.ndarray, bg: dict, rng: np.random.Generator) -> np.ndarray:
    """Background over the whole stream at an SNR of 5-25 dB vs the speech (20 % of streams at 40 dB)."""
    n = len(x)

    def crop(name):
        src = bg[name]
        reps = int(np.ceil(n / len(src))) + 1
        src = np.tile(src, reps) if reps > 1 else src
        s = rng.integers(0, len(src) - n + 1)
        return src[s:s + n].astype(np.float64)

    kind = rng.choice(["noise", "music", "both"])
    if kind == "noise":
        b = crop(rng.choice(NOISES))
    elif kind == "music":
        b = crop(rng.choice(MUSIC))
    else:
        b = crop(rng.choice(MUSIC)) + rng.uniform(0.2, 1.0) * crop(rng.choice(NOISES))
    speech = x[np.abs(x) > 1e-4]
    level = _rms(speech) if len(speech) else 0.05
    snr = 40.0 if rng.random() < 0.2 else rng.uniform(5, 25)
    y = x + b * (level / _rms(b) / 10 ** (snr / 20))
    return np.clip(y, -1, 1), {"background": str(kind), "snr_db": round(float(snr), 1)}


def build_positive(i: int, sents: list[str], bg: dict, variants: list[str], seconds: float) -> tuple[np.ndarray, dict]:
    rng = random.Random(f"{SEED}:pos:{i}")
    nrng = np.random.default_rng(SEED + 2 * i)
    v = stream_voice(rng, variants)
    parts, plan = [], []
    t = 0.0
    while t < seconds:
        s = sents[rng.randrange(len(sents))]
        plan.append(("s", s))
        kw = rng.choice(KEYWORDS)
        plan.append(("k", kw))
        t += 3.5  # ~ one keyword per 3.5 s
    rends = [rendition(v, f"pos{i}:{j}", text, kind) for j, (kind, text) in enumerate(plan)]
    audio = render(rends, max_seconds=None)
    labels = []
    pos = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    parts.append(np.zeros(pos, np.float32))
    for (kind, text), x in zip(plan, audio):
        if x is None or not len(x):
            continue
        gain = 10 ** (rng.uniform(-6, 0) / 20)
        if kind == "k":
            labels.append({"keyword": text, "start_ms": pos * 1000 // SAMPLE_RATE,
                           "end_ms": (pos + len(x)) * 1000 // SAMPLE_RATE})
        parts.append((x * gain).astype(np.float32))
        pos += len(x)
        gap = int(rng.uniform(0.4, 1.2) * SAMPLE_RATE)
        parts.append(np.zeros(gap, np.float32))
        pos += gap
    y, meta = mix_background(np.concatenate(parts), bg, nrng)
    return y, {"negative": False, "labels": labels, **meta, "engine": v["engine"], "voice": v["voice"]}


def build_negative(i: int, sents: list[str], bg: dict, variants: list[str], seconds: float,
                   speech: bool) -> tuple[np.ndarray, dict]:
    rng = random.Random(f"{SEED}:neg:{i}")
    nrng = np.random.default_rng(SEED + 2 * i + 1)
    n = int(seconds * SAMPLE_RATE)
    if not speech:
        y, meta = mix_background(np.zeros(n, np.float32), bg, nrng)
        # Without speech the "SNR" is relative to nothing: use an absolute level instead.
        y = y / max(_rms(y), 1e-9) * 10 ** (rng.uniform(-40, -15) / 20)
        return np.clip(y, -1, 1), {"negative": True, "labels": [], "background": meta["background"],
                                   "engine": "none", "voice": "none"}
    v = stream_voice(rng, variants)
    texts = [sents[rng.randrange(len(sents))] for _ in range(int(seconds / 2.5) + 2)]
    audio = render([rendition(v, f"neg{i}:{j}", t, "sentence") for j, t in enumerate(texts)], max_seconds=None)
    parts, total = [], 0
    for x in audio:
        if x is None or total >= n:
            continue
        gap = np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)
        parts += [gap, x * 10 ** (rng.uniform(-6, 0) / 20)]
        total += len(gap) + len(x)
    x = np.concatenate(parts)[:n] if parts else np.zeros(n, np.float32)
    y, meta = mix_background(x, bg, nrng)
    return y, {"negative": True, "labels": [], **meta, "engine": v["engine"], "voice": v["voice"]}


def _job(args):
    kind, i, seconds, speech, data, sents, variants = args
    bg = load_background(data)
    if kind == "pos":
        return kind, i, *build_positive(i, sents, bg, variants, seconds)
    return kind, i, *build_negative(i, sents, bg, variants, seconds, speech)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("data"), help="synthesized data dir (background tracks)")
    p.add_argument("--pos-minutes", type=float, default=22.0)
    p.add_argument("--neg-minutes", type=float, default=130.0)
    p.add_argument("--slice", action="store_true", help="the small committed slice: 2 positive + 2 negative streams")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    sents = fortune_sentences(SEED)
    variants = espeak_variants()
    jobs = []
    if a.slice:
        jobs = [("pos", 10_000 + i, 20.0, True) for i in range(2)] + \
               [("neg", 10_000, 20.0, True), ("neg", 10_001, 15.0, False)]
    else:
        pos_s, neg_s = 35.0, 60.0
        jobs += [("pos", i, pos_s, True) for i in range(int(np.ceil(a.pos_minutes * 60 / pos_s)))]
        n_neg = int(np.ceil(a.neg_minutes * 60 / neg_s))
        jobs += [("neg", i, neg_s, i % 3 != 2) for i in range(n_neg)]  # 2/3 speech, 1/3 music/noise only
    (a.out / "pos").mkdir(parents=True, exist_ok=True)
    (a.out / "neg").mkdir(parents=True, exist_ok=True)
    rows = []
    with multiprocessing.Pool(a.workers) as pool:
        for kind, i, y, meta in pool.imap(_job, [(k, i, s, sp, a.data, sents, variants) for k, i, s, sp in jobs]):
            rel = f"{kind}/{i:05d}.wav"
            write_wav(a.out / rel, y)
            info = {k: v for k, v in meta.items() if k not in ("negative", "labels")}
            info["seconds"] = round(len(y) / SAMPLE_RATE, 3)
            rows.append({"wav": rel, "negative": meta["negative"], "labels": meta["labels"], "meta": info})
            print(f"{rel}: {rows[-1]['seconds']} s, {len(meta['labels'])} labels", flush=True)
    with open(a.out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    pos = [r for r in rows if not r["negative"]]
    neg = [r for r in rows if r["negative"]]
    print(json.dumps({"positive_minutes": round(sum(r["meta"]["seconds"] for r in pos) / 60, 1),
                      "keywords": sum(len(r["labels"]) for r in pos),
                      "negative_minutes": round(sum(r["meta"]["seconds"] for r in neg) / 60, 1)}))


if __name__ == "__main__":
    main()
