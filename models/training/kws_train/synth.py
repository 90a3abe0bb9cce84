"""Deterministic synthesis of keyword / unknown-word audio from the allowed TTS voices.

Every clip is described up front by a `Rendition` (engine, voice, word, prosody, post-processing) drawn
from a seeded RNG, so the data set is a pure function of (config, seed) whatever the worker count.
Engines and voices are the ones the model issue allows; any other voice is reserved for independent
evaluation and must not be added here.

Output layout (under `--out`, never committed):
    shards/<engine>.npz     int16 audio of every clip of that engine, concatenated (`audio`, `offsets`)
    shards/<engine>.jsonl   one JSON object per clip, same order (word, label, voice, prosody, ...)
    background/<name>.npy   float32 16 kHz background tracks (sox noise colours + allowed music)

Usage: python -m kws_train.synth --out data [--engines espeak,flite-awb,...] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

from . import KEYWORDS, SAMPLE_RATE, UNKNOWN
from .respell import respell_for, respell_for_espeak

APT_PACKAGES = [
    "espeak-ng", "flite", "festival", "festvox-kallpc16k", "freetts", "default-jre-headless", "sox",
    "wamerican", "asterisk-moh-opsound-wav",
    # Festival voices of other languages (generalization issue): they read respelled English words.
    "festvox-italp16k", "festvox-itapc16k", "festvox-czech-dita", "festvox-czech-krb",
    "festvox-czech-machac", "festvox-czech-ph", "festvox-suopuhe-lj", "festvox-suopuhe-mv",
    "festvox-ru", "festvox-ca-ona-hts", "festvox-hi-nsk", "festvox-mr-nsk", "festvox-te-nsk",
]

ESPEAK_ACCENTS = ["en-us", "en-us-nyc", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-029"]
ESPEAK_VARIANT_DIR = Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data/voices/!v")
FREETTS_JARS = ["freetts.jar", "cmu_us_kal.jar", "cmulex.jar", "en_us.jar", "cmudict04.jar"]

#: Festival voices: engine name -> (voice function, language used for respelling, f0 range in Hz).
#: f0 None: pitch varied with sox instead. That includes the Italian, Czech and Finnish voices:
#: their intonation modules ignore int_lr_params (measured f0 unchanged for target 90 vs 250 Hz).
FESTIVAL_VOICES = {
    "festival-kal": ("voice_kal_diphone", "en", (80, 160)),
    "festival-it-lp": ("voice_lp_diphone", "it", None),
    "festival-it-pc": ("voice_pc_diphone", "it", None),
    "festival-cs-dita": ("voice_czech_dita", "cs", None),
    "festival-cs-krb": ("voice_czech_krb", "cs", None),
    "festival-cs-machac": ("voice_czech_machac", "cs", None),
    "festival-cs-ph": ("voice_czech_ph", "cs", None),
    "festival-fi-lj": ("voice_suo_fi_lj_diphone", "fi", None),
    "festival-fi-mv": ("voice_hy_fi_mv_diphone", "fi", None),
    "festival-ru": ("voice_msu_ru_nsh_clunits", "ru", None),
    "festival-ca-ona": ("voice_upc_ca_ona_hts", "ca", None),
    "festival-hi": ("voice_hindi_NSK_diphone", "hi", None),
    "festival-mr": ("voice_marathi_NSK_diphone", "mr", None),
    "festival-te": ("voice_telugu_NSK_diphone", "te", None),
}
#: Text encoding each festival front end reads (from the voices' Scheme files); default UTF-8.
#: With UTF-8 the Czech voices say "neznámý", the Finnish ones spell out "tuntematon merkki" and
#: the Italian one aborts on accented letters; Russian, Hindi, Marathi and Telugu want UTF-8.
FESTIVAL_ENCODINGS = {"it": "iso-8859-1", "ca": "iso-8859-1", "fi": "iso-8859-1", "cs": "iso-8859-2"}
#: Festival voices whose synthesis ignores Duration_Stretch (the Russian cluster-unit voice; the
#: Catalan HTS voice, whose hts_engine "-r" speed only stretches the pauses): their `rate` is
#: applied with sox tempo on the raw clip instead.
FESTIVAL_SOX_RATE = {"festival-ru", "festival-ca-ona"}
FLITE_VOICES = {"flite-kal16": "kal16", "flite-awb": "awb", "flite-rms": "rms"}
#: GnuSpeech (articulatory synthesizer, npm `@echogarden/gnuspeech-wasm`, pinned in
#: `models/training/gnuspeech/package-lock.json`, run under node by `gnuspeech/synth.mjs`): one engine,
#: one voice family, four voices whose vocal tract length, glottal pitch and breathiness are varied.
GNUSPEECH_VOICES = ["male", "female", "large_child", "baby"]
GNUSPEECH_DIR = Path(__file__).resolve().parents[1] / "gnuspeech"

#: Engines of the model issue (English voices) and the extra ones of the generalization issue.
BASE_ENGINES = ["espeak", "flite-kal16", "flite-awb", "flite-rms", "festival-kal", "freetts-kevin16"]
FOREIGN_ENGINES = [e for e in FESTIVAL_VOICES if e != "festival-kal"]
#: espeak-ng's voices of the festival voices' other languages reading the same respelled English words
#: (engine `espeak-foreign`, one family): English with eight accents, from an allowed synthesizer.
#: Added for the verifier's training windows (models/RESEARCH.md round 9); `voice` is "<lang>+<variant>".
ESPEAK_FOREIGN_LANGS = ["it", "cs", "fi", "ru", "ca", "hi", "mr", "te"]
#: Engines of the detection-quality issue.
NEW_ENGINES = ["gnuspeech", "espeak-foreign"]
ALL_ENGINES = BASE_ENGINES + FOREIGN_ENGINES + NEW_ENGINES

#: Renditions per keyword for each engine at --scale 1; unknown words get UNKNOWN_FACTOR times that.
PER_KEYWORD = {"espeak": 400, "flite-kal16": 80, "flite-awb": 80, "flite-rms": 80, "festival-kal": 80,
               "freetts-kevin16": 80, "gnuspeech": 200, "espeak-foreign": 320}
PER_KEYWORD_FOREIGN = 40
UNKNOWN_FACTOR = 3
REVERB_P = 0.3
MAX_CLIP_S = 1.0
UNKNOWN_POOL = 2000
KEYWORD_LIKE_SHARE = 0.25


@dataclasses.dataclass
class Rendition:
    uid: str
    engine: str
    voice: str
    word: str
    label: str
    text: str  # what the engine is asked to say (respelled for foreign voices)
    rate: float  # espeak: words per minute; flite/festival: duration stretch (>1 = slower)
    pitch: float  # espeak: -p 0-99; flite: f0_shift factor; festival: target f0 mean in Hz
    tempo: float | None  # sox tempo (FreeTTS has no prosody flags)
    cents: float | None  # sox pitch shift in cents (FreeTTS)
    reverb: list[int] | None  # sox reverb: reverberance, hf-damping, room-scale
    # Engine-specific settings (GnuSpeech: vocal tract length factor "vtl", "breathiness" in %);
    # None for the other engines, and then not written to the shard metadata.
    params: dict | None = None


def rendition_meta(r: Rendition) -> dict:
    """A rendition as shard metadata (JSON); `params` only when set, so older shards read the same."""
    d = dataclasses.asdict(r)
    if d["params"] is None:
        del d["params"]
    return d


def is_keyword_like(word: str) -> bool:
    """Shares a keyword's onset or rhyme and is at most 4 letters longer ("yet", "upper", "gone")."""
    return any((word.startswith(k) or word.endswith(k)) and len(word) <= len(k) + 4 for k in KEYWORDS)


def unknown_word_pool(seed: int) -> tuple[list[str], list[str]]:
    """Word pool for `_unknown_`: random `wamerican` words plus keyword-like words.

    Keyword-like words (sharing a keyword's onset or rhyme, e.g. "yet", "upper", "gone") teach the
    model that near misses are not keywords. Plain inflections of keywords ("stops", "going") are
    excluded: a user saying them often means the keyword.
    """
    words = Path("/usr/share/dict/words").read_text(encoding="utf-8").split()
    inflections = {k + s for k in KEYWORDS for s in ("", "s", "es", "ed", "ing", "'s")}
    ok = sorted({w for w in words if re.fullmatch(r"[a-z]{2,10}", w) and w not in inflections})
    like = sorted({w for w in ok if is_keyword_like(w)})
    rng = random.Random(seed)
    plain = rng.sample([w for w in ok if w not in set(like)], UNKNOWN_POOL)
    return plain, like


def espeak_variants() -> list[str]:
    return sorted(p.name for p in ESPEAK_VARIANT_DIR.iterdir() if " " not in p.name)


def plan(engines: list[str], scale: float, seed: int) -> list[Rendition]:
    """All renditions for `engines`, deterministic in (engines, scale, seed)."""
    plain, like = unknown_word_pool(seed)
    variants = espeak_variants()
    out: list[Rendition] = []
    for engine in engines:
        rng = random.Random(f"{seed}:{engine}")
        per_kw = round(PER_KEYWORD.get(engine, PER_KEYWORD_FOREIGN) * scale)
        items = [(k, k) for k in KEYWORDS for _ in range(per_kw)]
        for _ in range(per_kw * UNKNOWN_FACTOR):
            pool = like if rng.random() < KEYWORD_LIKE_SHARE else plain
            items.append((rng.choice(pool), UNKNOWN))
        for i, (word, label) in enumerate(items):
            reverb = None
            if rng.random() < REVERB_P:
                reverb = [rng.randint(20, 80), rng.randint(20, 80), rng.randint(20, 100)]
            tempo = cents = None
            if engine == "espeak":
                voice = f"{rng.choice(ESPEAK_ACCENTS)}+{rng.choice(variants)}"
                rate, pitch = float(rng.randint(120, 220)), float(rng.randint(20, 80))
                text = word
            elif engine == "espeak-foreign":
                lang = rng.choice(ESPEAK_FOREIGN_LANGS)
                voice = f"{lang}+{rng.choice(variants)}"
                rate, pitch = float(rng.randint(120, 220)), float(rng.randint(20, 80))
                text = respell_for_espeak(lang, word)
            elif engine in FLITE_VOICES:
                voice = FLITE_VOICES[engine]
                rate, pitch = rng.uniform(0.8, 1.35), rng.uniform(0.75, 1.4)
                text = word
                if voice == "rms":  # rms ignores f0_shift: shift its pitch with sox instead
                    cents = rng.uniform(-300, 400)
            elif engine in FESTIVAL_VOICES:
                fn, lang, f0 = FESTIVAL_VOICES[engine]
                voice = fn
                rate = rng.uniform(0.8, 1.35)
                pitch = rng.uniform(*f0) if f0 else 0.0
                text = respell_for(lang, word)
                if f0 is None:  # voices without an int_lr f0 model: vary pitch with sox instead
                    cents = rng.uniform(-250, 350)
            elif engine == "freetts-kevin16":
                voice = "kevin16"
                rate, pitch = 1.0, 0.0
                tempo, cents = rng.uniform(0.8, 1.25), rng.uniform(-300, 400)
                text = word
            elif engine == "gnuspeech":
                voice, rate, pitch, params = gnuspeech_voice(rng)
                text = word
            else:
                raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ALL_ENGINES)}")
            out.append(Rendition(f"{engine}:{i:05d}", engine, voice, word, label, text, rate, pitch,
                                 tempo, cents, reverb, params if engine == "gnuspeech" else None))
    return out


def gnuspeech_voice(rng: random.Random) -> tuple[str, float, float, dict]:
    """A GnuSpeech voice: (voice, tempo (>1 faster), glottal pitch shift in semitones, params)."""
    voice = rng.choice(GNUSPEECH_VOICES)
    tempo, semitones = rng.uniform(0.8, 1.25), rng.uniform(-4.0, 4.0)
    params = {"vtl": round(rng.uniform(0.9, 1.1), 4), "breathiness": round(rng.uniform(0.5, 4.0), 3)}
    return voice, tempo, semitones, params


def _run(cmd: list[str], **kw) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({r.returncode}): {r.stderr[-500:]}")


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1 and w.getframerate() == SAMPLE_RATE
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write mono float [-1, 1] (or int16) audio as 16-bit PCM WAV."""
    if x.dtype != np.int16:
        x = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype("<i2").tobytes())


def trim(x: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """Cut leading/trailing silence: keep 10 ms frames within `floor_db` of the loudest frame, ±20 ms."""
    hop = SAMPLE_RATE // 100
    n = len(x) // hop
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = np.nonzero(rms >= max(rms.max() * 10 ** (floor_db / 20), 1e-4))[0]
    if len(active) == 0:
        return x[:0]
    a = max(0, (active[0] - 2) * hop)
    b = min(len(x), (active[-1] + 3) * hop)
    return x[a:b]


def _postprocess(raw: Path, r: Rendition, tmp: Path) -> np.ndarray:
    """Resample to 16 kHz mono 16-bit, apply tempo/pitch/reverb with sox, trim and peak-normalize."""
    out = tmp / f"{r.uid.replace(':', '_')}.16k.wav"
    effects: list[str] = []
    if r.tempo is not None:
        effects += ["tempo", "-s", f"{r.tempo:.4f}"]
    if r.cents is not None:
        effects += ["pitch", f"{r.cents:.1f}"]
    if r.reverb is not None:
        effects += ["reverb", *map(str, r.reverb)]
    # -R: repeatable randomness, -D: no dither, so the output is a pure function of the rendition.
    _run(["sox", "-R", "-D", str(raw), "-c", "1", "-b", "16", str(out), *effects, "rate", "-v",
          str(SAMPLE_RATE)])
    x = trim(_read_wav(out))
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return x * (0.7 / peak) if peak > 0 else x


#: Scheme helper for the foreign festival voices: `kws_save_span` writes the start of the first and
#: the end of the last non-silent segment. The NSK voices pad words with over a second of noisy
#: "silence", the Catalan HTS and Finnish mv voices with a -25..-35 dB noise floor, and `trim`
#: (40 dB below the peak) keeps all of that; the clip is cut to the span (±30/50 ms) first.
_FESTIVAL_FOREIGN_SCM = """
(define (kws_save_span u file)
  (let ((s nil) (e nil) (fd (fopen file "w")))
    (mapcar (lambda (seg)
              (if (not (phone_is_silence (item.name seg)))
                  (begin
                    (if (not s) (set! s (item.feat seg 'segment_start)))
                    (set! e (item.feat seg 'end)))))
            (utt.relation.items u 'Segment))
    (if s (format fd "%f %f\\n" s e))
    (fclose fd)))
"""


def _cut_to_speech(raw: Path, stretch: float | None) -> None:
    """Cut a foreign festival clip to its speech span (±margin) and optionally time-stretch it."""
    span = Path(f"{raw}.span")
    if not raw.exists() or not span.exists() or not span.read_text().split():
        return
    a, b = map(float, span.read_text().split())
    out = raw.with_suffix(".cut.wav")
    effects = ["trim", f"{max(0.0, a - 0.03):.4f}", f"={b + 0.05:.4f}"]
    if stretch is not None:
        effects += ["tempo", "-s", f"{1 / stretch:.4f}"]
    _run(["sox", "-R", "-D", str(raw), str(out), *effects])
    out.replace(raw)


def _synth_batch(args: tuple[list[Rendition], str] | tuple[list[Rendition], str, float | None]
                 ) -> list[tuple[str, np.ndarray | None, str]]:
    """Synthesize one batch of renditions of a single engine. Returns (uid, audio or None, reason).
    `args` = (batch, engine[, max_seconds]); clips longer than max_seconds (default MAX_CLIP_S; None = no
    limit) are dropped."""
    batch = args[0]
    max_s = args[2] if len(args) > 2 else MAX_CLIP_S
    results = []
    with tempfile.TemporaryDirectory(prefix="kws-synth-") as d:
        tmp = Path(d)
        engine = batch[0].engine
        raws: dict[str, Path] = {}
        if engine in ("espeak", "espeak-foreign"):
            for r in batch:
                raw = tmp / f"{r.uid.replace(':', '_')}.raw.wav"
                _run(["espeak-ng", "-v", r.voice, "-s", str(int(r.rate)), "-p", str(int(r.pitch)),
                      "-w", str(raw), r.text])
                raws[r.uid] = raw
        elif engine in FLITE_VOICES:
            for r in batch:
                raw = tmp / f"{r.uid.replace(':', '_')}.raw.wav"
                _run(["flite", "-voice", r.voice, "-t", r.text, "-o", str(raw),
                      "--setf", f"duration_stretch={r.rate:.4f}",
                      "--setf", f"f0_shift={r.pitch:.4f}"])
                raws[r.uid] = raw
        elif engine in FESTIVAL_VOICES:
            foreign = FESTIVAL_VOICES[engine][1] != "en"
            lines = [f"({batch[0].voice})"]
            if foreign:
                lines.append(_FESTIVAL_FOREIGN_SCM)
            for r in batch:
                raw = tmp / f"{r.uid.replace(':', '_')}.raw.wav"
                raws[r.uid] = raw
                text = r.text.replace("\\", "").replace('"', "")
                lines.append(f"(Parameter.set 'Duration_Stretch {r.rate:.4f})")
                if FESTIVAL_VOICES[engine][2] is not None:
                    lines.append(f"(set! int_lr_params (cons (list 'target_f0_mean {r.pitch:.1f}) "
                                 "int_lr_params))")
                lines.append(f'(set! u (Utterance Text "{text}"))')
                lines.append("(utt.synth u)")
                lines.append(f'(utt.save.wave u "{raw}" \'riff)')
                if foreign:
                    lines.append(f'(kws_save_span u "{raw}.span")')
            script = tmp / "batch.scm"
            encoding = FESTIVAL_ENCODINGS.get(FESTIVAL_VOICES[engine][1], "utf-8")
            script.write_text("\n".join(lines) + "\n", encoding=encoding)
            _run(["festival", "-b", str(script)])
            if foreign:
                for r in batch:
                    _cut_to_speech(raws[r.uid], r.rate if engine in FESTIVAL_SOX_RATE else None)
        elif engine == "freetts-kevin16":
            words = sorted({r.text for r in batch})
            (tmp / "lines.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
            cp = ":".join(f"/usr/share/java/{j}" for j in FREETTS_JARS)
            _run(["java", "-cp", cp, "com.sun.speech.freetts.FreeTTS", "-voice", "kevin16",
                  "-dumpMultiAudio", str(tmp / "ft.wav"), "-lines", str(tmp / "lines.txt")])
            for r in batch:
                raws[r.uid] = tmp / f"ft{words.index(r.text)}.wav"
        elif engine == "gnuspeech":
            jobs = []
            for r in batch:
                raws[r.uid] = tmp / f"{r.uid.replace(':', '_')}.raw.wav"
                jobs.append({"text": r.text, "voice": r.voice, "tempo": r.rate, "pitch": r.pitch,
                             "vtl": r.params["vtl"], "breathiness": r.params["breathiness"],
                             "out": str(raws[r.uid])})
            (tmp / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
            _run(["node", str(GNUSPEECH_DIR / "synth.mjs"), str(tmp / "jobs.json")], cwd=GNUSPEECH_DIR)
        for r in batch:
            raw = raws[r.uid]
            if not raw.exists() or raw.stat().st_size < 100:
                results.append((r.uid, None, "engine produced no audio"))
                continue
            x = _postprocess(raw, r, tmp)
            if len(x) < SAMPLE_RATE // 20:
                results.append((r.uid, None, "shorter than 50 ms after trimming"))
            elif max_s is not None and len(x) > max_s * SAMPLE_RATE:
                results.append((r.uid, None, f"longer than {max_s} s after trimming"))
            else:
                results.append((r.uid, x, ""))
    return results


def render(renditions: list[Rendition], max_seconds: float | None = MAX_CLIP_S) -> list[np.ndarray | None]:
    """Synthesize renditions (any engines) in this process, in order: trimmed, peak-normalized 16 kHz
    float audio, or None where the engine produced nothing usable."""
    out: dict[str, np.ndarray | None] = {}
    by_engine: dict[str, list[Rendition]] = {}
    for r in renditions:
        by_engine.setdefault(r.engine, []).append(r)
    for engine, rs in by_engine.items():
        for i in range(0, len(rs), 100):
            for uid, x, _ in _synth_batch((rs[i:i + 100], engine, max_seconds)):
                out[uid] = x
    return [out.get(r.uid) for r in renditions]


def synth_engine(engine: str, renditions: list[Rendition], out: Path, workers: int) -> dict:
    """Synthesize all renditions of one engine into `out/shards/<engine>.{npz,jsonl}`."""
    batch = 100 if engine.startswith("festival") or engine.startswith("freetts") else 50
    batches = [(renditions[i:i + batch], engine) for i in range(0, len(renditions), batch)]
    by_uid = {r.uid: r for r in renditions}
    audio, offsets, meta, dropped = [], [0], [], {}
    with multiprocessing.Pool(workers) as pool:
        for results in pool.imap(_synth_batch, batches):
            for uid, x, reason in results:
                if x is None:
                    dropped[reason] = dropped.get(reason, 0) + 1
                    continue
                pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
                audio.append(pcm)
                offsets.append(offsets[-1] + len(pcm))
                meta.append(rendition_meta(by_uid[uid]))
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    np.savez(shards / f"{engine}.npz", audio=np.concatenate(audio), offsets=np.array(offsets))
    with open(shards / f"{engine}.jsonl", "w", encoding="utf-8") as f:
        for m in meta:
            f.write(json.dumps(m) + "\n")
    return {"engine": engine, "clips": len(meta), "dropped": dropped}


BACKGROUND_MUSIC = ["macroform-cold_day", "macroform-robot_dity", "macroform-the_simplicity"]


def make_background(out: Path) -> None:
    """Noise colours from sox (5 min each, repeatable) and the three allowed music tracks at 16 kHz."""
    bg = out / "background"
    bg.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kws-bg-") as d:
        for colour in ("whitenoise", "pinknoise", "brownnoise"):
            wav = Path(d) / f"{colour}.wav"
            _run(["sox", "-R", "-D", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav),
                  "synth", "300", colour, "vol", "0.5"])
            np.save(bg / f"{colour}.npy", _read_wav(wav))
        for name in BACKGROUND_MUSIC:
            wav = Path(d) / f"{name}.wav"
            _run(["sox", "-R", "-D", f"/usr/share/asterisk/moh/{name}.wav", "-c", "1", "-b", "16",
                  str(wav), "rate", "-v", str(SAMPLE_RATE)])
            x = _read_wav(wav)
            np.save(bg / f"{name}.npy", x * (0.5 / max(float(np.max(np.abs(x))), 1e-9)))


def install_tools(gnuspeech: bool = True) -> None:
    """Install the synthesizers with apt (Debian), if any is missing, and GnuSpeech with npm."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not (all(shutil.which(t) for t in ("espeak-ng", "flite", "festival", "sox", "java")) and
            Path("/usr/share/festival/voices/telugu").exists()):
        _run(["apt-get", "update", "-q"], env=env)
        _run(["apt-get", "install", "-y", "-q", *APT_PACKAGES], env=env)
    if gnuspeech:
        install_gnuspeech()


def install_gnuspeech() -> None:
    """`npm ci` the pinned GnuSpeech package into models/training/gnuspeech/node_modules (node >= 18)."""
    if (GNUSPEECH_DIR / "node_modules" / "@echogarden" / "gnuspeech-wasm" / "package.json").exists():
        return
    if not shutil.which("npm"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-q"], env=env)
        _run(["apt-get", "install", "-y", "-q", "nodejs", "npm"], env=env)
    _run(["npm", "ci", "--no-audit", "--no-fund"], cwd=GNUSPEECH_DIR)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--engines", default=",".join(ALL_ENGINES))
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the renditions per engine")
    p.add_argument("--seed", type=int, default=20261127)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="re-synthesize engines already present")
    a = p.parse_args(argv)
    install_tools(gnuspeech="gnuspeech" in a.engines.split(","))
    if a.force or not (a.out / "background" / "pinknoise.npy").exists():
        make_background(a.out)
    engines = [e for e in a.engines.split(",") if e]
    for engine in engines:
        if not a.force and (a.out / "shards" / f"{engine}.jsonl").exists():
            print(f"{engine}: present, skipped", flush=True)
            continue
        stats = synth_engine(engine, plan([engine], a.scale, a.seed), a.out, a.workers)
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    sys.exit(main())
