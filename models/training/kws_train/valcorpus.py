"""Streaming validation set: the evaluation corpus's layout (`evalcorpus.py`: positive streams with
spliced keywords, negative `speech`, `near-words` and `music-noise` streams, `meta.category`), made
from everything the evaluation corpus does not use, for selecting checkpoints and thresholds
(`streameval.py`) without touching the evaluation corpus.

| | evaluation corpus | validation set |
|---|---|---|
| seeds | 777 000 | 555 000 |
| texts | `fortune-mod` sentences | generated sentences (`textgen`, validation split: content words whose hash is 0 mod 10, never in training's negative speech) |
| voices | espeak (all 8 accents), flite kal16/awb/rms, festival kal, freetts kevin16 | espeak `en-029` / `en-gb-scotland` only (the validation accents no recipe trains on), GnuSpeech (4 voices, varied), festival voices of other languages (respelled English) |
| background | first half of each noise/music track | second half |

Shared, because there is nothing else: the three music tracks (all three are also training
backgrounds), the espeak validation accents (the evaluation corpus draws all accents), function words
and near-words. A recipe that trains on GnuSpeech or the foreign festival voices sees those voices
(other texts, prosody, seeds) here as the evaluation corpus sees the English ones. The flite awb voice
(the held-out test voice) is never used here.

Usage: python -m kws_train.valcorpus --out data/valcorpus [--pos-minutes 15] [--neg-minutes 60] [--near-minutes 15]
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from . import KEYWORDS
from .evalcorpus import CorpusSpec, generate, plan_jobs
from .lexicon import words_of
from .respell import prefetch
from .synth import FESTIVAL_VOICES, FOREIGN_ENGINES, gnuspeech_voice, install_tools
from .textgen import sentences

SEED = 555_000
VAL_ACCENTS = ["en-029", "en-gb-scotland"]
#: Engine groups a stream's voice is drawn from (equal chance each).
GROUPS = ["espeak", "gnuspeech", "foreign"]


def val_voice(rng: random.Random, variants: list[str]) -> dict:
    group = rng.choice(GROUPS)
    v = {"tempo": None, "cents": None, "lang": "en", "params": None}
    if group == "espeak":
        v.update(engine="espeak", voice=f"{rng.choice(VAL_ACCENTS)}+{rng.choice(variants)}",
                 rate=float(rng.randint(130, 200)), pitch=float(rng.randint(25, 75)))
    elif group == "gnuspeech":
        voice, rate, pitch, params = gnuspeech_voice(rng)
        v.update(engine="gnuspeech", voice=voice, rate=rate, pitch=pitch, params=params)
    else:
        engine = rng.choice(FOREIGN_ENGINES)
        fn, lang, f0 = FESTIVAL_VOICES[engine]
        v.update(engine=engine, voice=fn, lang=lang, rate=rng.uniform(0.9, 1.2),
                 pitch=rng.uniform(*f0) if f0 else 0.0)
        if f0 is None:
            v["cents"] = rng.uniform(-200, 300)
    return v


VAL = CorpusSpec("val", SEED, val_voice, (0.5, 1.0))


def val_sentences(n: int = 4000) -> tuple[list[str], list[str]]:
    """(plain, near-word) sentences of the validation split."""
    return (sentences(n, f"{SEED}:plain", "val", near_p=0.0),
            sentences(n, f"{SEED}:near", "val", near_p=1.0))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("data"), help="synthesized data dir (background tracks)")
    p.add_argument("--pos-minutes", type=float, default=15.0)
    p.add_argument("--neg-minutes", type=float, default=60.0)
    p.add_argument("--near-minutes", type=float, default=15.0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args(argv)
    install_tools(gnuspeech=True)
    sents = val_sentences()
    # Phonemes of every word for the foreign voices' respellings, once (the workers inherit the cache).
    prefetch({w.lower() for pool in sents for t in pool for w in words_of(t)} | set(KEYWORDS))
    generate(VAL, a.out, a.data, plan_jobs(a.pos_minutes, a.neg_minutes, a.near_minutes), sents, a.workers)


if __name__ == "__main__":
    main()
