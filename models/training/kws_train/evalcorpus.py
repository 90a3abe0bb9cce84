"""Streaming evaluation corpus: positive streams (keywords spliced between unrelated sentences, exact
labels) and negative streams (sentences without keywords, sentences with near-words, music, noise),
from the training-allowed English voices with seeds and texts disjoint from training.

Sentences come from Debian's `fortune-mod` collections. Sentences that say a keyword or a homophone
of one ("know", "write", "rite", "wright", ...; `lexicon.py`) are never used. Sentences with a
near-word ("going", "often", "upon", "yesterday", "stopped", "knows", "downtown", "lefty", ...) are
kept apart: the `near-words` negative streams are made of them only, every other stream (including the
filler between keywords in positive streams) of sentences without any. Each stream has one voice
(engine, accent/variant, rate, pitch) for all its utterances and one background (noise colour, music,
or both) at an SNR of 5-25 dB (some streams nearly clean).

Categories (`meta.category` of each manifest line, for per-category reports): `keywords` (positive
streams), `speech` (negative: keyword- and near-word-free sentences), `near-words` (negative: every
sentence has a near-word; `meta.near_words` lists them), `music-noise` (negative: no speech).

Output (under --out, not committed):
    manifest.jsonl   {"wav", "negative", "labels": [{"keyword", "start_ms", "end_ms"}],
                      "meta": {"category", "engine", "voice", "background", "snr_db", "seconds"[, "near_words"]}}
    pos/NNNN.wav, neg/NNNN.wav, near/NNNN.wav   16 kHz mono s16
Usage: python -m kws_train.evalcorpus --out data/evalcorpus [--pos-minutes 22] [--neg-minutes 130] [--near-minutes 20]
       python -m kws_train.evalcorpus --out ../eval-slice --slice   (the small committed slice; the committed
       one predates homophone exclusion and categories: its neg/10000 and pos/10001 say "know")
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import multiprocessing
import os
import random
import re
from pathlib import Path

import numpy as np

from . import KEYWORDS, SAMPLE_RATE
from .lexicon import keywords_in, near_words_in, words_of
from .data import MUSIC, NOISES, load_background
from .respell import respell_for, respell_for_espeak
from .synth import ESPEAK_ACCENTS, FLITE_VOICES, Rendition, espeak_variants, render, write_wav

ENGINES = ["espeak", "flite-kal16", "flite-awb", "flite-rms", "festival-kal", "freetts-kevin16"]
SEED = 777_000  # disjoint from the training synthesis seed
FORTUNE_PACKAGES = ["fortune-mod", "fortunes"]


FORTUNE_DIR = "/usr/share/games/fortunes"


def fortune_sentences(seed: int, phonetic: bool = True) -> tuple[list[str], list[str]]:
    """Sentences of 4-20 plain words from the fortune collections, shuffled: (plain, near).

    Sentences with a keyword or a homophone of one are dropped; `plain` has no near-word, every
    sentence of `near` has at least one. With `phonetic` (espeak-ng installed) homophones and
    near-words are also found by their phones (see `lexicon`).
    """
    cands = set()
    for f in sorted(glob.glob(f"{FORTUNE_DIR}/*")):
        name = os.path.basename(f)
        if "." in name or not os.path.isfile(f):
            continue
        text = open(f, encoding="utf-8", errors="ignore").read().replace("%", " ").replace("\n", " ")
        for s in re.split(r"(?<=[.!?])\s+", text):
            s = s.strip()
            words = words_of(s)
            if not 4 <= len(words) <= 20 or not re.fullmatch(r"[A-Za-z0-9 ,.;:'!?-]+", s):
                continue
            if any(w.lower().strip("'") in KEYWORDS for w in words):
                continue
            cands.add(s)
    if not cands:
        raise RuntimeError(f"no fortune sentences under {FORTUNE_DIR}: apt-get install {' '.join(FORTUNE_PACKAGES)}")
    if phonetic:
        from .respell import prefetch

        prefetch({w.lower() for s in cands for w in words_of(s) if re.fullmatch(r"[A-Za-z]+", w)})
    plain, near = [], []
    for s in sorted(cands):
        if keywords_in(s, phonetic):
            continue
        (near if near_words_in(s, phonetic) else plain).append(s)
    random.Random(seed).shuffle(plain)
    random.Random(f"{seed}:near").shuffle(near)
    return plain, near


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


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """What makes a streaming corpus: its seed, how a stream's voice is drawn, which part of each
    background track (fraction of its length) is used. The evaluation corpus and the streaming
    validation set (`valcorpus.py`) differ in all three, and in their texts."""

    name: str
    seed: int
    voice: object  # (random.Random, espeak variants) -> voice dict (engine, voice, rate, pitch, ...)
    bg_span: tuple[float, float]


#: The evaluation corpus: first half of every background track (the validation set uses the second).
EVAL = CorpusSpec("eval", SEED, stream_voice, (0.0, 0.5))


def rendition(v: dict, uid: str, text: str, label: str) -> Rendition:
    """Say `text` with voice `v` (foreign festival and espeak-ng voices: word by word respelled, `v["lang"]`)."""
    said = text
    if v.get("lang", "en") != "en":
        respell = respell_for_espeak if v["engine"] == "espeak-foreign" else respell_for
        said = " ".join(respell(v["lang"], w.lower()) for w in words_of(text))
    return Rendition(uid, v["engine"], v["voice"], text, label, said, v["rate"], v["pitch"], v["tempo"],
                     v["cents"], None, v.get("params"))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2) + 1e-12))


def mix_background(x: np.ndarray, bg: dict, rng: np.random.Generator,
                   span: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Background over the whole stream at an SNR of 5-25 dB vs the speech (20 % of streams at 40 dB),
    cut from the `span` part (fractions of the length) of each background track."""
    n = len(x)

    def crop(name):
        src = bg[name]
        src = src[int(span[0] * len(src)):int(span[1] * len(src))]
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


def _voice_meta(v: dict) -> dict:
    out = {"engine": v["engine"], "voice": v["voice"]}
    if v.get("params"):
        out["params"] = v["params"]
    return out


def build_positive(spec: CorpusSpec, i: int, sents: list[str], bg: dict, variants: list[str],
                   seconds: float) -> tuple[np.ndarray, dict]:
    rng = random.Random(f"{spec.seed}:pos:{i}")
    nrng = np.random.default_rng(spec.seed + 2 * i)
    v = spec.voice(rng, variants)
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
    y, meta = mix_background(np.concatenate(parts), bg, nrng, spec.bg_span)
    return y, {"negative": False, "labels": labels, "category": "keywords", **meta, **_voice_meta(v)}


def build_negative(spec: CorpusSpec, i: int, sents: list[str], bg: dict, variants: list[str],
                   seconds: float, category: str) -> tuple[np.ndarray, dict]:
    """A negative stream: `speech` or `near-words` (sentences of `sents` with pauses) or `music-noise`."""
    if category == "near-words":  # own seeds: adding these streams leaves the others unchanged
        rng = random.Random(f"{spec.seed}:near:{i}")
        nrng = np.random.default_rng(spec.seed + 1_000_003 + i)
    else:
        rng = random.Random(f"{spec.seed}:neg:{i}")
        nrng = np.random.default_rng(spec.seed + 2 * i + 1)
    n = int(seconds * SAMPLE_RATE)
    if category == "music-noise":
        y, meta = mix_background(np.zeros(n, np.float32), bg, nrng, spec.bg_span)
        # Without speech the "SNR" is relative to nothing: use an absolute level instead.
        y = y / max(_rms(y), 1e-9) * 10 ** (rng.uniform(-40, -15) / 20)
        return np.clip(y, -1, 1), {"negative": True, "labels": [], "category": category,
                                   "background": meta["background"], "engine": "none", "voice": "none"}
    v = spec.voice(rng, variants)
    texts = [sents[rng.randrange(len(sents))] for _ in range(int(seconds / 2.5) + 2)]
    audio = render([rendition(v, f"neg{i}:{j}", t, "sentence") for j, t in enumerate(texts)], max_seconds=None)
    parts, total, said = [], 0, []
    for t, x in zip(texts, audio):
        if x is None or total >= n:
            continue
        gap = np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)
        parts += [gap, x * 10 ** (rng.uniform(-6, 0) / 20)]
        total += len(gap) + len(x)
        said.append(t)
    x = np.concatenate(parts)[:n] if parts else np.zeros(n, np.float32)
    y, meta = mix_background(x, bg, nrng, spec.bg_span)
    out = {"negative": True, "labels": [], "category": category, **meta, **_voice_meta(v)}
    if category == "near-words":
        out["near_words"] = [w for t in said for w in near_words_in(t)]
    return y, out


def _job(args):
    spec, kind, i, seconds, category, data, sents, variants = args
    bg = load_background(data)
    if kind == "pos":
        return kind, i, *build_positive(spec, i, sents[0], bg, variants, seconds)
    pool = sents[1] if category == "near-words" else sents[0]
    return kind, i, *build_negative(spec, i, pool, bg, variants, seconds, category)


def plan_jobs(pos_minutes: float, neg_minutes: float, near_minutes: float) -> list[tuple[str, int, float, str]]:
    """(kind, index, seconds, category) of every stream: 35-s positive streams; 60-s negative streams,
    2/3 speech and 1/3 music/noise only; 60-s near-word streams (indices from 50 000)."""
    pos_s, neg_s = 35.0, 60.0
    jobs = [("pos", i, pos_s, "keywords") for i in range(int(np.ceil(pos_minutes * 60 / pos_s)))]
    n_neg = int(np.ceil(neg_minutes * 60 / neg_s))
    jobs += [("neg", i, neg_s, "speech" if i % 3 != 2 else "music-noise") for i in range(n_neg)]
    jobs += [("near", 50_000 + i, neg_s, "near-words") for i in range(int(np.ceil(near_minutes * 60 / neg_s)))]
    return jobs


def generate(spec: CorpusSpec, out: Path, data: Path, jobs: list[tuple[str, int, float, str]],
             sents: tuple[list[str], list[str]], workers: int) -> list[dict]:
    """Render `jobs` into `out` (WAVs + manifest.jsonl); `sents` = (plain, near-word) sentences."""
    variants = espeak_variants()
    for kind in {k for k, *_ in jobs}:
        (out / kind).mkdir(parents=True, exist_ok=True)
    rows = []
    args = [(spec, k, i, s, c, data, sents, variants) for k, i, s, c in jobs]
    with multiprocessing.Pool(workers) as pool:
        for kind, i, y, meta in pool.imap(_job, args):
            rel = f"{kind}/{i:05d}.wav"
            write_wav(out / rel, y)
            info = {k: v for k, v in meta.items() if k not in ("negative", "labels")}
            info["seconds"] = round(len(y) / SAMPLE_RATE, 3)
            rows.append({"wav": rel, "negative": meta["negative"], "labels": meta["labels"], "meta": info})
            print(f"{rel}: {info['category']}, {info['seconds']} s, {len(meta['labels'])} labels", flush=True)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    summary = {}
    for r in rows:
        c = summary.setdefault(r["meta"]["category"], {"streams": 0, "minutes": 0.0, "keywords": 0})
        c["streams"] += 1
        c["minutes"] = round(c["minutes"] + r["meta"]["seconds"] / 60, 2)
        c["keywords"] += len(r["labels"])
    print(json.dumps(summary), flush=True)
    return rows


def install_fortunes() -> None:
    if not glob.glob(f"{FORTUNE_DIR}/*"):
        import subprocess

        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *FORTUNE_PACKAGES], env=env, check=True,
                       capture_output=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("data"), help="synthesized data dir (background tracks)")
    p.add_argument("--pos-minutes", type=float, default=22.0)
    p.add_argument("--neg-minutes", type=float, default=130.0)
    p.add_argument("--near-minutes", type=float, default=20.0)
    p.add_argument("--slice", action="store_true", help="the small committed slice: 2 positive + 3 negative streams")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    install_fortunes()
    sents = fortune_sentences(SEED)
    if a.slice:
        jobs = [("pos", 10_000 + i, 20.0, "keywords") for i in range(2)] + \
               [("neg", 10_000, 20.0, "speech"), ("neg", 10_001, 15.0, "music-noise"),
                ("near", 60_000, 20.0, "near-words")]
    else:
        jobs = plan_jobs(a.pos_minutes, a.neg_minutes, a.near_minutes)
    generate(EVAL, a.out, a.data, jobs, sents, a.workers)


if __name__ == "__main__":
    main()
