"""Continuous keyword-free speech ("negative speech") from every allowed engine, as long tracks.

A track is one voice (engine, voice/variant, rate, pitch, room) saying generated sentences
(`textgen`, training split: template sentences and word runs over `wamerican`, 30 % of them with a
near-word such as "going", "often", "upon") one after another with short pauses (50-600 ms), and,
in 10 % of the utterance slots, a cut-off keyword (the first or last 30-60 % of a keyword said by the
same voice: "sto-", "-own"). No track contains a keyword or a homophone of one. The training sampler
cuts `_unknown_` windows out of the tracks at random offsets (`data.negative_window`, recipe key
`negative_share`), which is what a 1-s window of conversation looks like: parts of two or three words,
word boundaries anywhere.

Deterministic: track `k` of an engine is a pure function of (seed, engine, k), whatever the worker
count. Not the evaluation corpus's texts (fortune-mod) nor its seeds.

Output (under `--out`, next to `shards/`; never committed):
    negspeech/<engine>.npz     int16 16 kHz audio of every track, concatenated (`audio`, `offsets`)
    negspeech/<engine>.jsonl   one JSON object per track: uid, engine, voice, prosody, reverb, params,
                               seconds, segments [{kind: sentence|cut-keyword, text, start, end}] (samples)

Usage: python -m kws_train.negspeech --out data [--minutes 10] [--engines espeak,gnuspeech,...]
       (`--minutes` per engine; espeak gets `ESPEAK_FACTOR` times as much: it has ~100 voices)
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

from . import KEYWORDS, SAMPLE_RATE
from .evalcorpus import rendition
from .lexicon import near_words_in
from .synth import (ALL_ENGINES, ESPEAK_ACCENTS, ESPEAK_FOREIGN_LANGS, FESTIVAL_VOICES, FLITE_VOICES, REVERB_P,
                    Rendition, espeak_variants, gnuspeech_voice, install_tools, render)
from .textgen import lexicon, sentence

SEED = 20261130
TRACK_SECONDS = 30.0
CUT_KEYWORD_P = 0.1
NEAR_P = 0.3
GAP_S = (0.05, 0.6)
ESPEAK_FACTOR = 3.0


def track_voice(engine: str, rng: random.Random, variants: list[str]) -> dict:
    """One speaker for a whole track, with the prosody ranges of the training clips (`synth.plan`)."""
    v: dict = {"engine": engine, "tempo": None, "cents": None, "lang": "en", "params": None}
    if engine == "espeak":
        v.update(voice=f"{rng.choice(ESPEAK_ACCENTS)}+{rng.choice(variants)}",
                 rate=float(rng.randint(120, 220)), pitch=float(rng.randint(20, 80)))
    elif engine == "espeak-foreign":
        lang = rng.choice(ESPEAK_FOREIGN_LANGS)
        v.update(voice=f"{lang}+{rng.choice(variants)}", lang=lang,
                 rate=float(rng.randint(120, 220)), pitch=float(rng.randint(20, 80)))
    elif engine in FLITE_VOICES:
        v.update(voice=FLITE_VOICES[engine], rate=rng.uniform(0.8, 1.35), pitch=rng.uniform(0.75, 1.4))
        if v["voice"] == "rms":  # rms ignores f0_shift
            v["cents"] = rng.uniform(-300, 400)
    elif engine in FESTIVAL_VOICES:
        fn, lang, f0 = FESTIVAL_VOICES[engine]
        v.update(voice=fn, lang=lang, rate=rng.uniform(0.8, 1.35), pitch=rng.uniform(*f0) if f0 else 0.0)
        if f0 is None:
            v["cents"] = rng.uniform(-250, 350)
    elif engine == "freetts-kevin16":
        v.update(voice="kevin16", rate=1.0, pitch=0.0, tempo=rng.uniform(0.8, 1.25), cents=rng.uniform(-300, 400))
    elif engine == "gnuspeech":
        voice, rate, pitch, params = gnuspeech_voice(rng)
        v.update(voice=voice, rate=rate, pitch=pitch, params=params)
    else:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ALL_ENGINES)}")
    v["reverb"] = ([rng.randint(20, 80), rng.randint(20, 80), rng.randint(20, 100)]
                   if rng.random() < REVERB_P else None)
    return v


def plan_track(engine: str, k: int, seed: int, variants: list[str], seconds: float = TRACK_SECONDS,
               phonetic: bool = True) -> tuple[dict, list[tuple[str, str, float]], list[Rendition]]:
    """Voice, utterance plan [(kind, text, cut)] and renditions of track `k` of `engine`.

    `cut` (cut-off keywords only): > 0 keep that fraction from the start, < 0 from the end."""
    rng = random.Random(f"{seed}:{engine}:{k}")
    v = track_voice(engine, rng, variants)
    lex = lexicon("train", phonetic)
    items: list[tuple[str, str, float]] = []
    # ~2.2 s per sentence at ordinary rates: plan 30 % more than needed, the track is cut to length.
    for _ in range(int(seconds / 2.2 * 1.3) + 2):
        if rng.random() < CUT_KEYWORD_P:
            frac = rng.uniform(0.3, 0.6)
            items.append(("cut-keyword", rng.choice(KEYWORDS), frac if rng.random() < 0.5 else -frac))
        else:
            items.append(("sentence", sentence(rng, lex, NEAR_P), 0.0))
    if v["lang"] != "en":  # phonemize the track's words in one espeak-ng call, not one per word
        from .lexicon import words_of
        from .respell import prefetch

        prefetch({w.lower() for _, text, _ in items for w in words_of(text)})
    rends = []
    for j, (kind, text, _) in enumerate(items):
        r = rendition(v, f"{engine}:neg{k:05d}:{j}", text, kind)
        r.reverb = v["reverb"]
        rends.append(r)
    return v, items, rends


def build_track(args) -> tuple[str, int, np.ndarray, dict]:
    """Synthesize and assemble track `k` of `engine` from its plan (worker entry point)."""
    engine, k, seed, seconds, (v, items, rends) = args
    rng = random.Random(f"{seed}:{engine}:{k}:assemble")
    audio = render(rends, max_seconds=None)
    n = int(seconds * SAMPLE_RATE)
    parts, segments, pos = [], [], 0
    for (kind, text, cut), x in zip(items, audio):
        if pos >= n:
            break
        if x is None or not len(x):
            continue
        if kind == "cut-keyword":
            m = max(1, int(len(x) * abs(cut)))
            x = x[:m] if cut > 0 else x[-m:]
            text = f"{text}[:{cut:.2f}]" if cut > 0 else f"{text}[{cut:.2f}:]"
        gap = int(rng.uniform(*GAP_S) * SAMPLE_RATE)
        x = (x * 10 ** (rng.uniform(-6, 0) / 20)).astype(np.float32)
        parts += [np.zeros(gap, np.float32), x]
        seg = {"kind": kind, "text": text, "start": pos + gap, "end": pos + gap + len(x)}
        if kind == "sentence":
            seg["near_words"] = near_words_in(text)
        segments.append(seg)
        pos += gap + len(x)
    y = np.concatenate(parts)[:n] if parts else np.zeros(0, np.float32)
    pcm = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    meta = {"uid": f"{engine}:neg{k:05d}", "engine": engine, "voice": v["voice"], "rate": v["rate"],
            "pitch": v["pitch"], "tempo": v["tempo"], "cents": v["cents"], "reverb": v["reverb"],
            "params": v["params"], "seconds": round(len(pcm) / SAMPLE_RATE, 3),
            "segments": [dict(s, end=min(s["end"], len(pcm))) for s in segments if s["start"] < len(pcm)]}
    return engine, k, pcm, meta


def synth_engine(engine: str, minutes: float, seed: int, out: Path, workers: int,
                 seconds: float = TRACK_SECONDS) -> dict:
    """All tracks of one engine into out/negspeech/<engine>.{npz,jsonl}."""
    variants = espeak_variants() if engine in ("espeak", "espeak-foreign") else []
    n_tracks = max(1, int(np.ceil(minutes * 60 / seconds)))
    t0, c0 = time.time(), _cpu()
    audio, offsets, meta = [], [0], []
    with multiprocessing.Pool(workers) as pool:
        jobs = [(engine, k, seed, seconds, plan_track(engine, k, seed, variants, seconds)) for k in range(n_tracks)]
        for _, _, pcm, m in pool.imap(build_track, jobs):
            audio.append(pcm)
            offsets.append(offsets[-1] + len(pcm))
            meta.append(m)
    d = out / "negspeech"
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / f"{engine}.npz", audio=np.concatenate(audio), offsets=np.array(offsets))
    with open(d / f"{engine}.jsonl", "w", encoding="utf-8") as f:
        for m in meta:
            f.write(json.dumps(m) + "\n")
    audio_s = offsets[-1] / SAMPLE_RATE
    cpu = _cpu() - c0
    return {"engine": engine, "tracks": len(meta), "audio_s": round(audio_s, 1),
            "wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu, 1),
            "audio_s_per_cpu_s": round(audio_s / max(cpu, 1e-9), 2)}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the synthesizers, the pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--engines", default=",".join(ALL_ENGINES))
    p.add_argument("--minutes", type=float, default=10.0, help="per engine (espeak: x ESPEAK_FACTOR)")
    p.add_argument("--track-seconds", type=float, default=TRACK_SECONDS)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    engines = [e for e in a.engines.split(",") if e]
    install_tools(gnuspeech="gnuspeech" in engines)
    for engine in engines:
        if not a.force and (a.out / "negspeech" / f"{engine}.jsonl").exists():
            print(f"{engine}: present, skipped", flush=True)
            continue
        minutes = a.minutes * (ESPEAK_FACTOR if engine == "espeak" else 1.0)
        print(json.dumps(synth_engine(engine, minutes, a.seed, a.out, a.workers, a.track_seconds)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
