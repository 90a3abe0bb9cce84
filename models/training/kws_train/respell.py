"""Respellings of English words for the festival voices of other languages.

A foreign voice reads text with its own letter-to-sound rules, so an English word is first turned
into English phonemes (espeak-ng, US English) and those are written back in the orthography the
voice reads, choosing for every English sound the closest sound that voice can make:

- it (lp, pc): Italian spelling, ISO-8859-1; the stressed vowel carries a grave/acute accent.
- cs (dita, krb, machac, ph): Czech spelling, ISO-8859-2; long vowels for stressed tense vowels,
  "dy/ty/ny" against palatalization, syllabic r for unstressed -er (stress is always initial).
- fi (lj, mv): Finnish spelling, ISO-8859-1; double vowels for stressed tense vowels, ä for /æ/,
  s for /ʃ/ (the lj voice has no ʃ diphones).
- ca (ona): Catalan spelling, ISO-8859-1; accent on the stressed vowel, unstressed a/e give schwa.
- ru (msu nsh): Cyrillic, UTF-8; "+" before the stressed vowel (the voice's own stress mark).
- hi, mr (NSK): Devanagari, UTF-8, every inherent vowel explicit (virama on bare consonants).
- te (NSK): Telugu script, UTF-8, same scheme.

Consonants a language lacks take the usual substitute of its speakers (th -> t/d, or s/z in
Russian; w -> v/u; h is dropped where it is silent). Some choices avoid gaps in a voice's diphone
inventory (noted inline). The encodings are what each voice's Scheme files expect (see
`synth.FESTIVAL_ENCODINGS`). English voices read the word as is. The rule output for the ten
keywords was checked against the phones each voice produces; `KEYWORD_RESPELLINGS` holds the
exceptions.

`respell_for` is a pure function of (language, word, installed espeak-ng); results are cached.
"""

from __future__ import annotations

import functools
import re
import subprocess

LANGUAGES = ("it", "cs", "fi", "ru", "ca", "hi", "mr", "te")

VOWELS = frozenset("AA AE AH AO AW AX AXR AY EH ER EY IH IY OW OY UH UW".split())

# ---------------------------------------------------------------------------------------------
# English phonemes (espeak-ng -x, en-us) -> ARPAbet-like phones with stress 1/2/0 on vowels.

_ESPEAK = {
    # r-coloured and complex vowels first (longest match wins)
    "aI@": ("AY", "AX"), "aI3": ("AY", "AXR"), "aU@": ("AW", "AX"), "i@3": ("IH", "R"),
    "A@": ("AA", "R"), "O@": ("AO", "R"), "o@": ("AO", "R"), "e@": ("EH", "R"), "i@": ("IY", "AX"),
    "U@": ("UH", "R"), "3:": ("ER",), "3": ("AXR",),
    "aI": ("AY",), "aU": ("AW",), "eI": ("EY",), "OI": ("OY",), "oU": ("OW",),
    "A:": ("AA",), "O:": ("AO",), "i:": ("IY",), "u:": ("UW",),
    "@L": ("AX", "L"), "@2": ("AX",), "@5": ("AX",), "a#": ("AX",), "@": ("AX",),
    "I#": ("IH",), "I2": ("IH",), "I": ("IH",), "i": ("IY",),
    "E2": ("EH",), "E": ("EH",), "e": ("EH",),
    "aa": ("AE",), "a": ("AE",), "0": ("AA",), "A": ("AA",),
    "O2": ("AO",), "O": ("AO",), "o": ("OW",), "V": ("AH",), "U": ("UH",), "u": ("UW",),
    # consonants
    "tS": ("CH",), "dZ": ("JH",), "t#": ("DX",), "t2": ("T",), "d#": ("D",), "l#": ("L",),
    "n-": ("AX", "N"), "l-": ("AX", "L"), "m-": ("AX", "M"), "r-": ("R",),
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "f": ("F",),
    "v": ("V",), "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",),
    "h": ("HH",), "x": ("HH",), "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",), "r": ("R",),
    "w": ("W",), "j": ("Y",), "?": ("T",),
}
_ESPEAK_KEYS = sorted(_ESPEAK, key=len, reverse=True)


def _espeak_lines(words: list[str]) -> list[str]:
    """espeak-ng phoneme mnemonics, one line per word (each word is its own sentence)."""
    text = "".join(re.sub(r"[^A-Za-z']", " ", w).strip() + ".\n" for w in words)
    r = subprocess.run(["espeak-ng", "-q", "-x", "-v", "en-us"], input=text, capture_output=True,
                       text=True, check=True)
    lines = r.stdout.splitlines()
    if len(lines) != len(words):
        raise RuntimeError(f"espeak-ng returned {len(lines)} lines for {len(words)} words")
    return lines


def parse_espeak(x: str) -> tuple[tuple[str, int | None], ...]:
    """Parse `espeak-ng -x` output into ((phone, stress), ...); stress is None for consonants."""
    x = re.sub(r"\([a-z-]+\)", "", x)  # language-switch markers, if any
    out: list[tuple[str, int | None]] = []
    stress = 0
    i = 0
    while i < len(x):
        c = x[i]
        if c == "'":
            stress, i = 1, i + 1
            continue
        if c == ",":
            stress, i = 2, i + 1
            continue
        for key in _ESPEAK_KEYS:
            if x.startswith(key, i):
                break
        else:
            i += 1  # boundaries and marks: _ - ; % = ~ space, unknown symbols
            continue
        # "aI@L" is aI + @L, not aI@ + L
        if key in ("aI@", "aU@") and x.startswith("L", i + len(key)):
            key = key[:2]
        for ph in _ESPEAK[key]:
            if ph == "R" and out and out[-1][0] in ("R", "AXR", "ER"):
                continue  # "3r-", "A@r": one r
            if ph in VOWELS:
                out.append((ph, stress))
                stress = 0
            else:
                out.append((ph, None))
        i += len(key)
    # exactly one primary stress: the first one, or the first secondary, or the first vowel
    vowels = [k for k, (p, _) in enumerate(out) if p in VOWELS]
    if vowels:
        prim = [k for k in vowels if out[k][1] == 1] or [k for k in vowels if out[k][1] == 2] or vowels
        out = [(p, None if p not in VOWELS else (1 if k == prim[0] else (2 if s else 0)))
               for k, (p, s) in enumerate(out)]
    return tuple(out)


@functools.lru_cache(maxsize=None)
def english_phones(word: str) -> tuple[tuple[str, int | None], ...]:
    """US English phones of `word` from espeak-ng, e.g. "stop" -> (S, T, AA/1, P)."""
    return parse_espeak(_espeak_lines([word])[0])


def prefetch(words) -> None:
    """Fill the phoneme cache for many words with one espeak-ng call (same results, faster)."""
    todo = sorted({w for w in words} - set(_prefetched))
    for i in range(0, len(todo), 5000):
        chunk = todo[i:i + 5000]
        for w, line in zip(chunk, _espeak_lines(chunk)):
            _prefetched[w] = parse_espeak(line)


_prefetched: dict[str, tuple[tuple[str, int | None], ...]] = {}


def _phones(word: str) -> tuple[tuple[str, int | None], ...]:
    ph = _prefetched.get(word)
    return ph if ph is not None else english_phones(word)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the renderers.

class _Ctx:
    """Phone sequence with look-around helpers."""

    def __init__(self, phones):
        self.p = [ph for ph, _ in phones]
        self.s = [st for _, st in phones]
        self.n = len(self.p)

    def at(self, i: int) -> str:
        return self.p[i] if 0 <= i < self.n else "#"

    def vowel(self, i: int) -> bool:
        return self.at(i) in VOWELS


# ---------------------------------------------------------------------------------------------
# Italian (ISO-8859-1). Accents: à è é ì ò ó ù mark the stressed vowel.

_IT_V = {"AA": ("a", "à"), "AE": ("e", "è"), "AH": ("a", "à"), "AX": ("e", "è"), "AO": ("o", "ò"),
         "AW": ("au", "àu"), "AY": ("ai", "ài"), "EH": ("e", "è"), "ER": ("er", "èr"),
         "AXR": ("er", "èr"), "EY": ("ei", "éi"), "IH": ("i", "ì"), "IY": ("i", "ì"),
         "OW": ("ou", "óu"), "OY": ("oi", "òi"), "UH": ("u", "ù"), "UW": ("u", "ù")}
_IT_C = {"P": "p", "B": "b", "T": "t", "D": "d", "DX": "d", "K": "k", "G": "g", "F": "f", "V": "v",
         "TH": "t", "DH": "d", "S": "s", "Z": "s", "SH": "\x01", "ZH": "\x02", "CH": "\x03",
         "JH": "\x02", "HH": "", "M": "m", "N": "n", "L": "l", "R": "r", "W": "w", "Y": "j"}


def _render_it(phones) -> str:
    c = _Ctx(phones)
    out = []
    for i, ph in enumerate(c.p):
        if ph in VOWELS:
            un, st = _IT_V[ph]
            v = st if c.s[i] == 1 else un
            if ph == "AX" and i == c.n - 1:
                v = "a"
            out.append(v)
        elif ph == "NG":
            out.append("n" if c.at(i + 1) in ("K", "G") else "ng")
        elif ph == "S" and c.vowel(i - 1) and c.vowel(i + 1):
            out.append("ss")  # a single intervocalic s is voiced in Italian
        else:
            out.append(_IT_C[ph])
    s = "".join(out)
    front = "eèéiì"
    # soft/hard c, g, sc before front vowels; sh/ch/j elsewhere need an "i"
    s = re.sub(rf"g(?=[{front}n])", "gh", s)
    s = re.sub(rf"\x01(?=[{front}])", "sc", s)
    s = s.replace("\x01", "sci")
    s = re.sub(rf"\x03(?=[{front}])", "c", s)
    s = s.replace("\x03", "ci")
    s = re.sub(rf"\x02(?=[{front}])", "g", s)
    s = s.replace("\x02", "gi")
    return s


# ---------------------------------------------------------------------------------------------
# Czech (ISO-8859-2). Stress is always on the first syllable; stressed tense vowels are long.

_CS_V = {"AA": ("a", "á"), "AE": ("e", "e"), "AH": ("a", "a"), "AX": ("e", "e"), "AO": ("o", "ó"),
         "AW": ("au", "au"), "AY": ("aj", "aj"), "EH": ("e", "e"), "ER": ("er", "er"),
         "AXR": ("er", "er"), "EY": ("ej", "ej"), "IH": ("i", "i"), "IY": ("i", "í"),
         "OW": ("ou", "ou"), "OY": ("oj", "oj"), "UH": ("u", "u"), "UW": ("u", "ú")}
_CS_C = {"P": "p", "B": "b", "T": "t", "D": "d", "DX": "d", "K": "k", "G": "g", "F": "f", "V": "v",
         "TH": "t", "DH": "d", "S": "s", "Z": "z", "SH": "š", "ZH": "ž", "CH": "č", "JH": "dž",
         "HH": "h", "M": "m", "N": "n", "L": "l", "R": "r", "W": "u", "Y": "j"}


def _render_cs(phones) -> str:
    c = _Ctx(phones)
    out = []
    for i, ph in enumerate(c.p):
        if ph in VOWELS:
            un, st = _CS_V[ph]
            v = st if c.s[i] and i > 0 else un  # no diphones for word-initial long vowels
            if ph == "AX" and i == c.n - 1:
                v = "a"
            if ph == "AXR" and not c.vowel(i - 1) and i > 0 and not c.vowel(i + 1):
                v = "r"  # syllabic r, as in Czech "krk"
            if ph in ("IH", "IY") and out and out[-1] in ("d", "t", "n"):
                v = {"i": "y", "í": "ý"}[v]  # "di/ti/ni" would be palatal
            out.append(v)
        elif ph == "NG":
            out.append("n" if c.at(i + 1) in ("K", "G") else "ng")
        elif ph == "N" and c.at(i + 1) in ("F", "V"):
            out.append("m")  # the Czech voices have no n-f / n-v diphones
        elif ph == "W" and c.at(i + 1) in ("UW", "UH"):
            out.append("v")  # no u-u diphones
        else:
            out.append(_CS_C[ph])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Finnish (ISO-8859-1). Stress is always initial; double vowels are long.

_FI_V = {"AA": ("a", "aa"), "AE": ("ä", "ä"), "AH": ("a", "a"), "AX": ("e", "e"), "AO": ("o", "oo"),
         "AW": ("au", "au"), "AY": ("ai", "ai"), "EH": ("e", "e"), "ER": ("ör", "öör"),
         "AXR": ("ör", "ör"), "EY": ("ei", "ei"), "IH": ("i", "i"), "IY": ("i", "ii"),
         "OW": ("ou", "ou"), "OY": ("oi", "oi"), "UH": ("u", "u"), "UW": ("u", "uu")}
_FI_C = {"P": "p", "B": "b", "T": "t", "D": "d", "DX": "d", "K": "k", "G": "g", "F": "f", "V": "v",
         "TH": "t", "DH": "d", "S": "s", "Z": "s", "SH": "s", "ZH": "s", "CH": "ts", "JH": "dj",
         "HH": "h", "M": "m", "N": "n", "L": "l", "R": "r", "W": "v", "Y": "j"}


def _render_fi(phones) -> str:
    c = _Ctx(phones)
    out = []
    for i, ph in enumerate(c.p):
        if ph in VOWELS:
            un, st = _FI_V[ph]
            v = st if c.s[i] else un
            if ph == "AX" and i == c.n - 1:
                v = "a"
            out.append(v)
        elif ph == "NG":
            # final "ng" and "d": the lj voice has no N-# / d-# diphones ("-in", "-t" as Finns say)
            out.append("n" if c.at(i + 1) in ("K", "G", "#") else "ng")
        elif ph == "D" and i == c.n - 1:
            out.append("t")
        else:
            out.append(_FI_C[ph])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Catalan (ISO-8859-1). Accent on the stressed vowel (à è é í ò ó ú); unstressed a/e -> schwa.

_CA_V = {"AA": ("a", "à"), "AE": ("e", "è"), "AH": ("a", "à"), "AX": ("a", "à"), "AO": ("o", "ò"),
         "AW": ("au", "àu"), "AY": ("ai", "ài"), "EH": ("e", "è"), "ER": ("er", "èr"),
         "AXR": ("er", "èr"), "EY": ("ei", "éi"), "IH": ("i", "í"), "IY": ("i", "í"),
         "OW": ("ou", "óu"), "OY": ("oi", "òi"), "UH": ("u", "ú"), "UW": ("u", "ú")}
_CA_C = {"P": "p", "B": "b", "T": "t", "D": "d", "DX": "d", "K": "k", "G": "g", "F": "f", "V": "v",
         "TH": "t", "DH": "d", "S": "s", "Z": "z", "SH": "x", "ZH": "j", "CH": "tx", "JH": "tj",
         "HH": "", "M": "m", "N": "n", "L": "l", "R": "r", "W": "u", "Y": "i"}


def _render_ca(phones) -> str:
    c = _Ctx(phones)
    out = []
    for i, ph in enumerate(c.p):
        if ph in VOWELS:
            un, st = _CA_V[ph]
            v = st if c.s[i] == 1 else un
            if ph in ("ER", "AXR") and i == c.n - 1 and c.s[i] == 1:
                v += "r"  # keep a stressed final r audible
            out.append(v)
        elif ph == "NG":
            out.append("n")
        elif ph == "S" and (i == c.n - 1 or (c.vowel(i - 1) and c.vowel(i + 1))):
            out.append("ss")  # a single s between vowels or word-finally comes out voiced
        elif ph == "G" and c.at(i + 1) in ("EH", "AE", "IH", "IY", "EY", "ER", "AXR"):
            out.append("gh")  # "ge/gi" would be /ʒ/; "gue" often gets a /u/ from this voice
        elif ph == "JH" and i == c.n - 1:
            out.append("tx")
        elif ph == "R" and i == c.n - 1 and c.vowel(i - 1):
            out.append("rr")  # a single final r is mute in Catalan
        elif ph == "L" and c.at(i + 1) == "L":
            out.append("l·")
        else:
            out.append(_CA_C[ph])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Russian (UTF-8 Cyrillic). "+" before the stressed vowel is the msu_ru voice's stress mark.

_RU_V = {"AA": "а", "AE": "э", "AH": "а", "AX": "а", "AO": "о", "AW": "ау", "AY": "ай", "EH": "э",
         "ER": "эр", "AXR": "эр", "EY": "эй", "IH": "и", "IY": "и", "OW": "оу", "OY": "ой",
         "UH": "у", "UW": "у"}
_RU_C = {"P": "п", "B": "б", "T": "т", "D": "д", "DX": "д", "K": "к", "G": "г", "F": "ф", "V": "в",
         "TH": "с", "DH": "з", "S": "с", "Z": "з", "SH": "ш", "ZH": "ж", "CH": "ч", "JH": "дж",
         "HH": "х", "M": "м", "N": "н", "L": "л", "R": "р", "W": "у", "Y": "й"}


def _render_ru(phones) -> str:
    c = _Ctx(phones)
    out = []
    for i, ph in enumerate(c.p):
        if ph in VOWELS:
            out.append(("+" if c.s[i] == 1 else "") + _RU_V[ph])
        elif ph == "NG":
            out.append("н" if c.at(i + 1) in ("K", "G") else "нг")
        else:
            out.append(_RU_C[ph])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Hindi, Marathi, Telugu: the three NSK voices share one diphone set; their letter-to-sound rules
# map each akshara to phones with no schwa deletion, so every vowel is written explicitly.

_NSK_V = {"AA": "aa", "AE": "eh", "AH": "a", "AX": "a", "AO": "oh", "AW": "aw", "AY": "ay",
          "EH": "eh", "ER": "a r", "AXR": "a r", "EY": "ee", "IH": "ih", "IY": "iy", "OW": "oo",
          "OY": "oh y", "UH": "uh", "UW": "uw"}
_NSK_C = {"P": "p", "B": "b", "T": "T", "D": "D", "DX": "D", "K": "k", "G": "g", "F": "f", "V": "v",
          "TH": "tth", "DH": "dh", "S": "s", "Z": "s", "SH": "sh", "ZH": "sh", "CH": "ch", "JH": "j",
          "HH": "h", "M": "m", "N": "n", "L": "l", "R": "r", "W": "v", "Y": "y"}

_DEVANAGARI = {
    "cons": {"k": "क", "g": "ग", "ch": "च", "j": "ज", "T": "ट", "D": "ड", "th": "त", "dh": "द",
             "tth": "थ", "n": "न", "p": "प", "f": "फ", "b": "ब", "m": "म", "y": "य", "r": "र",
             "l": "ल", "v": "व", "sh": "श", "s": "स", "h": "ह"},
    "indep": {"a": "अ", "aa": "आ", "ih": "इ", "iy": "ई", "uh": "उ", "uw": "ऊ", "eh": "ए",
              "ee": "ए", "ay": "ऐ", "oh": "ओ", "oo": "ऑ", "aw": "औ"},
    "matra": {"a": "", "aa": "ा", "ih": "ि", "iy": "ी", "uh": "ु", "uw": "ू", "eh": "े",
              "ee": "ॅ", "ay": "ै", "oh": "ो", "oo": "ॉ", "aw": "ौ"},
    "virama": "्",
}
_TELUGU = {
    "cons": {"k": "క", "g": "గ", "ch": "చ", "j": "జ", "T": "ట", "D": "డ", "th": "త", "dh": "ద",
             "tth": "థ", "n": "న", "p": "ప", "f": "ఫ", "b": "బ", "m": "మ", "y": "య", "r": "ర",
             "l": "ల", "v": "వ", "sh": "శ", "s": "స", "h": "హ"},
    "indep": {"a": "అ", "aa": "ఆ", "ih": "ఇ", "iy": "ఈ", "uh": "ఉ", "uw": "ఊ", "eh": "ఎ",
              "ee": "ఏ", "ay": "ఐ", "oh": "ఒ", "oo": "ఓ", "aw": "ఔ"},
    "matra": {"a": "", "aa": "ా", "ih": "ి", "iy": "ీ", "uh": "ు", "uw": "ూ", "eh": "ె",
              "ee": "ే", "ay": "ై", "oh": "ొ", "oo": "ో", "aw": "ౌ"},
    "virama": "్",
}
_NSK_VOWELS = frozenset(_DEVANAGARI["indep"])


def nsk_phones(phones) -> list[str]:
    """English phones -> NSK phone names (the voices' phone set)."""
    c = _Ctx(phones)
    out: list[str] = []
    for i, ph in enumerate(c.p):
        if ph in VOWELS:
            out += _NSK_V[ph].split()
        elif ph == "NG":
            out += ["n"] if c.at(i + 1) in ("K", "G") else ["n", "g"]
        else:
            out.append(_NSK_C[ph])
    return out


def _abugida(nsk: list[str], script: dict) -> str:
    s = []
    for i, ph in enumerate(nsk):
        prev_cons = i > 0 and nsk[i - 1] not in _NSK_VOWELS
        if ph in _NSK_VOWELS:
            s.append(script["matra"][ph] if prev_cons else script["indep"][ph])
        else:
            s.append(script["cons"][ph])
            if i + 1 == len(nsk) or nsk[i + 1] not in _NSK_VOWELS:
                s.append(script["virama"])
    return "".join(s)


def _render_hi(phones) -> str:
    return _abugida(nsk_phones(phones), _DEVANAGARI)


def _render_te(phones) -> str:
    return _abugida(nsk_phones(phones), _TELUGU)


_RENDER = {"it": _render_it, "cs": _render_cs, "fi": _render_fi, "ca": _render_ca, "ru": _render_ru,
           "hi": _render_hi, "mr": _render_hi, "te": _render_te}

#: Keyword respellings that differ from the rules. The rule output of every keyword was checked
#: against the phones each voice produces (festival Segment relation), e.g. it "stàp" -> s t a1 p,
#: cs "stáp" -> s t a: p, ru "ст+ап" -> s t aa p, hi "स्टाप्" -> s T aa p. Catalan: an accented
#: diphthong is read as two stressed vowels ("ràit" -> rr a1 i1 t), unaccented "rait" -> rr a1 j t.
KEYWORD_RESPELLINGS: dict[str, dict[str, str]] = {"ca": {"right": "rait"}}


#: What espeak-ng's voice of a language reads differently from the festival voice the respelling was
#: made for: espeak-ng's Italian says "j" as /dZ/ (the festival voices as /j/), its Russian reads the
#: festival stress mark "+" as the word "plus" (it places the stress itself), and its Hindi and
#: Marathi read "ॉ" as /O/ (so "no" and "go" become "naw", "gaw"; the NSK voice needs the sign).
_ESPEAK_FIXUPS = {
    "it": lambda t: t.replace("j", "i"),
    "ru": lambda t: t.replace("+", ""),
    "hi": lambda t: t.replace("ॉ", "ो"),
    "mr": lambda t: t.replace("ॉ", "ो"),
}


def respell_for_espeak(lang: str, word: str) -> str:
    """Text for espeak-ng's voice of language `lang` (engine `espeak-foreign`): the festival
    respelling with the fixes that voice needs."""
    text = respell_for(lang, word)
    fix = _ESPEAK_FIXUPS.get(lang)
    return fix(text) if fix else text


@functools.lru_cache(maxsize=None)
def respell_for(lang: str, word: str) -> str:
    """Text for a voice of language `lang` that sounds as much as possible like English `word`."""
    if lang == "en":
        return word
    if lang not in _RENDER:
        raise NotImplementedError(f"no respelling rules for {lang!r}")
    fixed = KEYWORD_RESPELLINGS.get(lang, {}).get(word)
    if fixed is not None:
        return fixed
    phones = _phones(word)
    if not phones:
        raise ValueError(f"espeak-ng gave no phonemes for {word!r}")
    return _RENDER[lang](phones)
