"""Keyword-free text for synthesized negative speech: sentences from a small template grammar over
Debian's `wamerican` word list, word sequences, and near-words in context.

Not the `fortune-mod` texts of the evaluation corpus. Content words are split by a hash of their
spelling into a training part (9/10) and a validation part (1/10), so the streaming validation set
(`valcorpus.py`) says content words training never heard; function words and near-words are shared
(there are too few to split). No generated sentence contains a keyword or a homophone of one
(`lexicon.keyword_of`); `near_p` of them contain a near-word ("going", "often", "upon", ...).

Parts of speech are guessed from spelling (-ly adverbs, -ed verbs, -ing gerunds, -ous/-ful/... adjectives,
the rest nouns): the sentences are grammatical in shape, not in meaning, which is all a keyword
detector needs to hear.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import subprocess
import tempfile
import zlib
from pathlib import Path

from .lexicon import NEAR_WORDS_LISTED, is_near_word, keyword_of, keywords_in

WORDS_FILE = Path("/usr/share/dict/words")

DETERMINERS = "the a this that every some my your his her our their each another one".split()
PRONOUNS = "I we they she he you someone everybody".split()
PREPOSITIONS = ("in at with from into over under near behind beside across through around for of by "
                "after before without between along beyond toward inside").split()
CONJUNCTIONS = "and but while because although so when until since unless".split()
AUXILIARIES = ["was", "is", "were", "will be", "has been", "had been", "seemed", "kept", "might be"]
ADJ_SUFFIXES = ("ous", "ful", "ive", "able", "ible", "al", "ic", "less", "ish", "ary")

TEMPLATES = [
    "{det} {adj} {noun} {verb} {prep} {det} {noun}",
    "{pron} {verb} {det} {noun} {conj} {pron} {verb} {adv}",
    "{det} {noun} {aux} {ger} {prep} {det} {adj} {noun}",
    "{adv} {det} {noun} {verb} {det} {adj} {noun}",
    "{pron} {aux} {adj} {conj} {det} {noun} {verb}",
    "{det} {noun} {prep} {det} {noun} {aux} {adj}",
    "{pron} {verb} {prep} {det} {noun} {prep} {det} {noun}",
]


def _bucket(word: str) -> int:
    return zlib.crc32(word.encode()) % 10


#: Bump when the classification below changes (invalidates the on-disk cache).
LEXICON_VERSION = 2


@functools.lru_cache(maxsize=4)
def lexicon(split: str, phonetic: bool = True) -> dict[str, list[str]]:
    """Content words of `split` ("train": hash bucket 1-9, "val": bucket 0) by guessed part of speech,
    plus "near" (near-words, both splits). Keywords and homophones are removed.

    With `phonetic`, espeak-ng phonemizes the whole word list (~1 min); the result is cached in the
    temp directory, keyed by the word list, the espeak-ng version and LEXICON_VERSION."""
    if split not in ("train", "val"):
        raise ValueError(split)
    cache = None
    if phonetic:
        ver = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
        key = hashlib.sha256(WORDS_FILE.read_bytes() + ver.encode() + str(LEXICON_VERSION).encode()).hexdigest()[:16]
        cache = Path(tempfile.gettempdir()) / f"kws-lexicon-{split}-{key}.json"
        if cache.exists():
            return json.loads(cache.read_text(encoding="utf-8"))
    pos = _lexicon(split, phonetic)
    if cache is not None:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(pos), encoding="utf-8")
        tmp.replace(cache)
    return pos


def _lexicon(split: str, phonetic: bool) -> dict[str, list[str]]:
    words = sorted({w for w in WORDS_FILE.read_text(encoding="utf-8").split()
                    if re.fullmatch(r"[a-z]{3,11}", w)})
    if phonetic:
        from .respell import prefetch

        prefetch(words)
    pos: dict[str, list[str]] = {"noun": [], "adj": [], "adv": [], "verb": [], "ger": [], "near": []}
    for w in words:
        if keyword_of(w, phonetic) is not None:
            continue
        if is_near_word(w, phonetic):
            pos["near"].append(w)
            continue
        if (_bucket(w) == 0) != (split == "val"):
            continue
        if w.endswith("ly"):
            pos["adv"].append(w)
        elif w.endswith("ed"):
            pos["verb"].append(w)
        elif w.endswith("ing"):
            pos["ger"].append(w)
        elif w.endswith(ADJ_SUFFIXES):
            pos["adj"].append(w)
        else:
            pos["noun"].append(w)
    pos["near"] = sorted(set(pos["near"]) | {w for w in NEAR_WORDS_LISTED if keyword_of(w, phonetic) is None})
    return pos


def sentence(rng: random.Random, lex: dict[str, list[str]], near_p: float = 0.3) -> str:
    """One keyword-free sentence: a template (70 %) or a run of 3-8 content words (30 %); with
    probability `near_p` a near-word is put in at a random position."""
    if rng.random() < 0.7:
        t = rng.choice(TEMPLATES)
        fill = {"det": lambda: rng.choice(DETERMINERS), "pron": lambda: rng.choice(PRONOUNS),
                "prep": lambda: rng.choice(PREPOSITIONS), "conj": lambda: rng.choice(CONJUNCTIONS),
                "aux": lambda: rng.choice(AUXILIARIES)}
        words = []
        for slot in re.findall(r"\{(\w+)\}", t):
            words.append(fill[slot]() if slot in fill else rng.choice(lex[slot]))
    else:
        kinds = ["noun"] * 4 + ["adj", "verb", "adv", "ger"]
        words = [rng.choice(lex[rng.choice(kinds)]) for _ in range(rng.randint(3, 8))]
    if rng.random() < near_p:
        words.insert(rng.randint(0, len(words)), rng.choice(lex["near"]))
    s = " ".join(words)
    return s[0].upper() + s[1:] + "."


def sentences(n: int, seed: int | str, split: str = "train", near_p: float = 0.3,
              phonetic: bool = True) -> list[str]:
    """`n` sentences, deterministic in (n, seed, split, near_p, word list)."""
    lex = lexicon(split, phonetic)
    rng = random.Random(seed)
    out = [sentence(rng, lex, near_p) for _ in range(n)]
    assert not any(keywords_in(s, phonetic=False) for s in out)
    return out
