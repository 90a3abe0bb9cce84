"""Which words are keywords, which sound like one (homophones), and which contain one (near-words).

Used by the evaluation corpus (negatives must not contain a keyword or a homophone of one; near-words
are reported as their own category), the streaming validation set and the negative-speech
synthesizer (keyword-free speech with near-words in context).

- **Homophones**: words that sound exactly like a keyword ("know" = "no", "write"/"rite"/"wright" =
  "right"). Saying one *is* saying the keyword as far as audio goes, so they can be neither a
  negative nor a miss. The curated list below is always applied; with espeak-ng installed every word
  whose US-English phones equal a keyword's (stress ignored) is a homophone too.
- **Near-words**: words that contain a keyword's sound or spelling but are not it: inflections and
  compounds ("going", "stopped", "knows", "downtown", "lefty", "yesterday", "often", "upon"), words
  starting or ending with a keyword's phones ("note", "ago", "setup", "bright"). A detector should stay
  quiet on them; they are the hardest negatives.

Clitics are stripped before matching ("right's" is "right", "no'll" is "no").
"""

from __future__ import annotations

import re
import shutil

from . import KEYWORDS

#: Words pronounced like a keyword in (US and UK) English. "awn" = "on" for speakers with the
#: cot-caught merger.
KEYWORD_HOMOPHONES: dict[str, tuple[str, ...]] = {
    "no": ("know", "noh", "knowe"),
    "right": ("write", "rite", "wright", "wrighte"),
    "on": ("awn",),
    "yes": (), "up": (), "down": (), "left": (), "off": (), "stop": (), "go": (),
}
HOMOPHONE_OF = {h: k for k, hs in KEYWORD_HOMOPHONES.items() for h in hs}

#: Near-words named in the detection-quality issue and other common ones the spelling rules below miss
#: (2-letter keywords are too short for prefix/suffix spelling rules: "one", "not", "got" are not
#: near-words, "note", "goal" are).
NEAR_WORDS_LISTED = frozenset("""
going gone goes goer goers ago cargo ego tango lego goal goals goat gold golden ghost ghosts gopher
upon often knows known knowing knowledge knowledgeable nobody nowhere nope note notes noted nose
noses snow snowy onto online ongoing anon yeah yet yesterday yesterdays downtown lefty lefties
stopped stopping stopper stops writes writing written writer rites wrights
""".split())

_LISTED_OF = {"often": "off", "writing": "right", "written": "right", "ghost": "go", "ghosts": "go", "yet": "yes", "yeah": "yes"}
#: Spelling rules: keyword/homophone of 3+ letters + one of these suffixes is an inflection ("stopped",
#: "downs"); for the 2-letter keywords the rule would make "god", "ones", "none" near-words, so their
#: inflections are listed ("goes", "going") or found by their phones.
_SUFFIXES = ("s", "es", "ed", "d", "ing", "er", "ers", "n", "ne", "ped", "ping", "per", "pers", "y",
             "ty", "ies", "ward", "wards")
#: Keywords/homophones of 3+ letters (and "up") whose spelling at the start ("downtown", "yesterday",
#: "upon", "offer", "leftover") or end ("countdown", "bright", "nonstop", "takeoff", "setup") marks a
#: near-word.
_PREFIX_STEMS = ("yes", "down", "left", "right", "stop", "off", "up", "know", "write")
_SUFFIX_STEMS = ("down", "left", "right", "stop", "off", "up")
_CLITIC = re.compile(r"'(s|ll|d|re|ve|m|t)$")


def normalize(word: str) -> str:
    """Lower case, outer apostrophes and clitics removed: "Right's" -> "right"."""
    w = word.lower().strip("'")
    return _CLITIC.sub("", w)


def _phones(word: str) -> tuple[str, ...] | None:
    """US English phones without stress (espeak-ng), or None when espeak-ng is not installed."""
    if not shutil.which("espeak-ng"):
        return None
    from .respell import _phones as phones_of

    return tuple(p for p, _ in phones_of(word))


_KEYWORD_PHONES: dict[str, tuple[str, ...]] = {}


def keyword_phones() -> dict[str, tuple[str, ...]]:
    if not _KEYWORD_PHONES and shutil.which("espeak-ng"):
        _KEYWORD_PHONES.update({k: _phones(k) for k in KEYWORDS})
    return _KEYWORD_PHONES


def keyword_of(word: str, phonetic: bool = True) -> str | None:
    """The keyword `word` is or sounds exactly like (homophone), else None."""
    w = normalize(word)
    if w in KEYWORDS:
        return w
    if w in HOMOPHONE_OF:
        return HOMOPHONE_OF[w]
    if phonetic and w and re.fullmatch(r"[a-z]+", w):
        ph = _phones(w)
        if ph is not None:
            for k, kp in keyword_phones().items():
                if ph == kp:
                    return k
    return None


def near_keyword_of(word: str, phonetic: bool = True) -> str | None:
    """The keyword `word` is a near-word of ("going" -> "go"), else None (also for keywords and
    homophones themselves: see `keyword_of`)."""
    w = normalize(word)
    if not w or keyword_of(w, phonetic) is not None:
        return None
    stems = {**{k: k for k in KEYWORDS}, **HOMOPHONE_OF}
    for s, k in stems.items():
        if len(s) >= 3 and any(w == s + suf for suf in _SUFFIXES):
            return k
    for s in _PREFIX_STEMS:
        if w.startswith(s) and len(w) > len(s):
            return stems[s]
    for s in _SUFFIX_STEMS:
        if w.endswith(s) and len(w) > len(s) and not (s == "up" and w.endswith("oup")):  # not "group", "soup"
            return stems[s]
    if w in NEAR_WORDS_LISTED:
        for s in sorted(stems, key=len, reverse=True):
            if w.startswith(s) or w.endswith(s):
                return stems[s]
        return _LISTED_OF.get(w) or next(k for k in KEYWORDS if k in w)  # "snow", "anon"
    if phonetic and re.fullmatch(r"[a-z]+", w):
        ph = _phones(w)
        if ph is not None:
            for k, kp in keyword_phones().items():
                if len(ph) > len(kp) and (ph[:len(kp)] == kp or ph[-len(kp):] == kp):
                    return k
    return None


def is_near_word(word: str, phonetic: bool = True) -> bool:
    return near_keyword_of(word, phonetic) is not None


def words_of(text: str) -> list[str]:
    """Word tokens of a sentence ("no-one" is "no" + "one"; "don't" stays one word)."""
    return re.findall(r"[A-Za-z']+", text)


def keywords_in(text: str, phonetic: bool = True) -> list[str]:
    """Keywords (or homophones of one) said in `text`, as the keywords they sound like."""
    return [k for k in (keyword_of(w, phonetic) for w in words_of(text)) if k is not None]


def near_words_in(text: str, phonetic: bool = True) -> list[str]:
    """Near-words in `text` (normalized spelling), in order."""
    return [normalize(w) for w in words_of(text) if near_keyword_of(w, phonetic) is not None]
