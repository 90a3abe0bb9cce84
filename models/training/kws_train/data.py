"""Synthesized clips in memory, voice/engine splits, and waveform augmentation into 1-s windows.

Splits are by engine family and by voice, never by clip: a voice is either in training or not.
Engines built on the same recorded speaker form one family (flite kal16, festival kal_diphone and
FreeTTS kevin16 are all the CMU "kal" diphone set), so holding one of them out while training on the
others would leak the speaker into the "unseen" score.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from . import CLASSES, KEYWORDS, SAMPLE_RATE, SILENCE, UNKNOWN

FAMILIES = {
    "espeak": "espeak",
    "flite-kal16": "kal", "festival-kal": "kal", "freetts-kevin16": "kal",
    "flite-awb": "awb", "flite-rms": "rms",
    "festival-it-lp": "it-lp", "festival-it-pc": "it-pc",
    "festival-cs-dita": "cs-dita", "festival-cs-krb": "cs-krb", "festival-cs-machac": "cs-machac",
    "festival-cs-ph": "cs-ph", "festival-fi-lj": "fi-lj", "festival-fi-mv": "fi-mv",
    "festival-ru": "ru", "festival-ca-ona": "ca-ona",
    # The Hindi, Marathi and Telugu voices are one speaker ("NSK": byte-identical diphones).
    "festival-hi": "nsk", "festival-mr": "nsk", "festival-te": "nsk",
    # GnuSpeech: one articulatory model behind all four voices (male, female, large_child, baby).
    "gnuspeech": "gnuspeech",
    # espeak-ng's voices of eight other languages reading respelled English (synth.ESPEAK_FOREIGN_LANGS).
    "espeak-foreign": "espeak-foreign",
}
MUSIC = ["macroform-cold_day", "macroform-robot_dity", "macroform-the_simplicity"]
NOISES = ["whitenoise", "pinknoise", "brownnoise"]
LABEL_INDEX = {c: i for i, c in enumerate(CLASSES)}


@dataclasses.dataclass
class Clips:
    """Variable-length clips (float32, 16 kHz, peak 0.7) with their metadata."""

    audio: list[np.ndarray]
    meta: list[dict]

    def select(self, keep) -> "Clips":
        idx = [i for i, m in enumerate(self.meta) if keep(m)]
        return Clips([self.audio[i] for i in idx], [self.meta[i] for i in idx])

    def labels(self) -> np.ndarray:
        return np.array([LABEL_INDEX[m["label"]] for m in self.meta], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.meta)


def load_clips(data: Path, engines: list[str], sub: str = "shards") -> Clips:
    """Clips of `engines` from data/<sub> (`shards`: synthesized; `vc`: voice-converted copies)."""
    audio, meta = [], []
    for engine in engines:
        z = np.load(data / sub / f"{engine}.npz")
        pcm, off = z["audio"], z["offsets"]
        lines = (data / sub / f"{engine}.jsonl").read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = json.loads(line)
            m["family"] = FAMILIES[engine]
            meta.append(m)
            audio.append(pcm[off[i]:off[i + 1]].astype(np.float32) / 32768.0)
    return Clips(audio, meta)


@dataclasses.dataclass
class Tracks:
    """Long negative-speech tracks (`negspeech.py`): int16 16 kHz audio (kept as int16: hours of it)."""

    audio: list[np.ndarray]
    meta: list[dict]

    def select(self, keep) -> "Tracks":
        idx = [i for i, m in enumerate(self.meta) if keep(m)]
        return Tracks([self.audio[i] for i in idx], [self.meta[i] for i in idx])

    def __len__(self) -> int:
        return len(self.meta)


def load_negspeech(data: Path, engines: list[str]) -> Tracks:
    """Tracks of `engines` under data/negspeech (engines without tracks are skipped)."""
    audio, meta = [], []
    for engine in engines:
        path = data / "negspeech" / f"{engine}.npz"
        if not path.exists():
            continue
        z = np.load(path)
        pcm, off = z["audio"], z["offsets"]
        lines = (data / "negspeech" / f"{engine}.jsonl").read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = json.loads(line)
            m["family"] = FAMILIES[engine]
            meta.append(m)
            audio.append(pcm[off[i]:off[i + 1]])
    return Tracks(audio, meta)


NEGATIVE_CROP_S = 1.2  # a crop this long survives the speed warp (x1.15) as a full 1-s window


def negative_crop(tracks: Tracks, rng: np.random.Generator) -> np.ndarray:
    """A 1.2-s stretch of negative speech at a random offset (tracks weighted by length)."""
    lens = np.array([len(a) for a in tracks.audio], dtype=np.float64)
    n = int(NEGATIVE_CROP_S * SAMPLE_RATE)
    i = int(rng.choice(len(lens), p=lens / lens.sum()))
    x = tracks.audio[i]
    if len(x) <= n:
        return x.astype(np.float32) / 32768.0
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start:start + n].astype(np.float32) / 32768.0


def load_mined(path: Path, tracks: Tracks) -> list[tuple[int, int]]:
    """Mined windows (`mine.py` JSON lines) as (track index in `tracks`, first sample); windows of
    tracks not in `tracks` (held out, other engines) are dropped."""
    index = {m["uid"]: i for i, m in enumerate(tracks.meta)}
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        w = json.loads(line)
        if w["uid"] in index:
            out.append((index[w["uid"]], int(w["start"])))
    return out


def mined_crop(tracks: Tracks, track: int, start: int) -> np.ndarray:
    """1.2 s of a track centred on the mined 1-s window starting at `start` (zero-padded at the ends)."""
    n = int(NEGATIVE_CROP_S * SAMPLE_RATE)
    x = tracks.audio[track]
    a = start + SAMPLE_RATE // 2 - n // 2
    out = np.zeros(n, np.float32)
    lo, hi = max(0, a), min(len(x), a + n)
    if hi > lo:
        out[lo - a:hi - a] = x[lo:hi].astype(np.float32) / 32768.0
    return out


def load_background(data: Path) -> dict[str, np.ndarray]:
    return {name: np.load(data / "background" / f"{name}.npy") for name in NOISES + MUSIC}


def espeak_accent(m: dict) -> str | None:
    return m["voice"].split("+")[0] if m["engine"] == "espeak" else None


# ---------------------------------------------------------------------------------------------------
# Augmentation. Everything is drawn from an explicit numpy Generator so a run is reproducible.


@dataclasses.dataclass
class AugmentConfig:
    shift_ms: float = 100.0  # placement: centre of the window ± shift
    gain_db: tuple[float, float] = (-20.0, 0.0)  # foreground gain relative to the stored peak 0.7
    background_p: float = 0.8
    background_mode: str = "volume"  # "volume": scale U(0, volume_max); "snr": U(snr_db) re speech
    volume_max: float = 0.1
    snr_db: tuple[float, float] = (0.0, 30.0)
    music_noise_mix_p: float = 0.0  # chance a background is music + noise together
    silence_volume_max: float = 1.0
    eq_p: float = 0.0  # random EQ / band-limiting (telephone band, cheap microphones)
    compress_p: float = 0.0  # dynamic range compression
    codec_p: float = 0.0  # 8-bit mu-law round trip (codec-like degradation)
    speed_p: float = 0.0  # resample-based speed/pitch/formant warp (vocal tract length perturbation)
    speed_range: tuple[float, float] = (0.85, 1.15)


def _crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    start = rng.integers(0, len(x) - n + 1)
    return x[start:start + n]


def background_window(bg: dict[str, np.ndarray], cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One 1-s background crop with unit-ish level: a noise colour, music, or (optionally) both."""
    name = rng.choice(NOISES + MUSIC)
    x = _crop(bg[name], SAMPLE_RATE, rng).astype(np.float32)
    if rng.random() < cfg.music_noise_mix_p:
        other = rng.choice(NOISES if name in MUSIC else MUSIC)
        x = x + rng.uniform(0.1, 1.0) * _crop(bg[other], SAMPLE_RATE, rng)
    return x


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-12))


def place(clip: np.ndarray, shift_ms: float, rng: np.random.Generator) -> np.ndarray:
    """Put a clip into a 1-s window centred, shifted by U(-shift, shift) ms; crop what falls outside."""
    out = np.zeros(SAMPLE_RATE, dtype=np.float32)
    shift = int(rng.uniform(-shift_ms, shift_ms) * SAMPLE_RATE / 1000)
    start = (SAMPLE_RATE - len(clip)) // 2 + shift
    a, b = max(0, start), min(SAMPLE_RATE, start + len(clip))
    if b > a:
        out[a:b] = clip[a - start:b - start]
    return out


def speed_warp(clip: np.ndarray, factor: float) -> np.ndarray:
    """Play `clip` `factor` times faster by linear-interpolation resampling: duration / factor, pitch
    and formants x factor (a crude vocal-tract-length and speaking-rate perturbation)."""
    n = len(clip)
    pos = np.arange(0.0, n - 1, factor)
    return np.interp(pos, np.arange(n), clip).astype(np.float32)


def _biquad_eq(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random spectral tilt/band-limit in the FFT domain: telephone band, cheap-mic peaks and dips."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    gain_db = np.zeros_like(f)
    if rng.random() < 0.3:  # telephone / narrow band
        lo, hi = rng.uniform(150, 400), rng.uniform(3000, 5000)
        gain_db -= 24 * np.log2(np.maximum(lo / (f + 1.0), 1.0))  # 24 dB/octave below `lo`
        gain_db -= 24 * np.log2(np.maximum(f / hi, 1.0))  # and above `hi`
    for _ in range(rng.integers(1, 4)):  # peaks and dips
        fc, bw, g = rng.uniform(200, 6000), rng.uniform(0.2, 1.0), rng.uniform(-12, 12)
        gain_db += g * np.exp(-0.5 * (np.log2((f + 1) / fc) / bw) ** 2)
    gain_db += rng.uniform(-6, 6) * np.log2((f + 50) / 1000) / 3  # tilt
    return np.fft.irfft(spec * 10 ** (gain_db / 20), n=len(x)).astype(np.float32)


def _compress(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    drive = rng.uniform(2, 10)
    return (np.tanh(drive * x) / np.tanh(drive) * np.max(np.abs(x))).astype(np.float32)


def _mulaw(x: np.ndarray) -> np.ndarray:
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(np.clip(x, -1, 1))) / np.log1p(mu)
    y = np.round(y * 127) / 127
    return (np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu).astype(np.float32)


def word_run(centre: np.ndarray, left: list[np.ndarray], right: list[np.ndarray],
             gap_ms: tuple[float, float], rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Words joined by random pauses, as in a sentence: `left` words, `centre`, `right` words.

    Returns the run and the [start, end) sample span of `centre` in it.
    """
    def gap() -> np.ndarray:
        return np.zeros(int(rng.uniform(*gap_ms) * SAMPLE_RATE / 1000), dtype=np.float32)

    parts: list[np.ndarray] = []
    for w in left:
        parts += [w, gap()]
    a = sum(len(x) for x in parts)
    parts.append(centre)
    b = a + len(centre)
    for w in right:
        parts += [gap(), w]
    return np.concatenate(parts), a, b


def place_span(run: np.ndarray, a: int, b: int, shift_ms: float, rng: np.random.Generator) -> np.ndarray:
    """A 1-s window of `run` with its span [a, b) centred ± shift (what falls outside is cropped)."""
    out = np.zeros(SAMPLE_RATE, dtype=np.float32)
    shift = int(rng.uniform(-shift_ms, shift_ms) * SAMPLE_RATE / 1000)
    start = (SAMPLE_RATE - (b - a)) // 2 + shift - a  # window sample 0 = run sample -start
    lo, hi = max(0, start), min(SAMPLE_RATE, start + len(run))
    if hi > lo:
        out[lo:hi] = run[lo - start:hi - start]
    return out


def make_window(clip: np.ndarray | None, bg: dict[str, np.ndarray], cfg: AugmentConfig,
                rng: np.random.Generator, context: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
                gap_ms: tuple[float, float] = (20.0, 250.0), run_crop: bool = False) -> np.ndarray:
    """A 1-s training window: a placed, gain-scaled clip over background (None = `_silence_`).

    With `context` (words before, words after) the clip is said inside a run of words of the same
    voice; with `run_crop` the window is a random 1-s stretch of that run instead of centred on the clip.
    """
    if clip is None:
        x = background_window(bg, cfg, rng) * rng.uniform(0, cfg.silence_volume_max)
        return np.clip(x, -1, 1)
    warp = rng.uniform(*cfg.speed_range) if rng.random() < cfg.speed_p else None
    if warp is not None:
        clip = speed_warp(clip, warp)
    gain = 10 ** (rng.uniform(*cfg.gain_db) / 20)
    if context is None:
        fg = place(clip, cfg.shift_ms, rng) * gain
    else:
        left, right = ([speed_warp(w, warp) for w in ws] if warp is not None else ws for ws in context)
        run, a, b = word_run(clip, left, right, gap_ms, rng)
        if run_crop:
            a = int(rng.integers(0, max(1, len(run) - SAMPLE_RATE + 1)))
            b = a + min(SAMPLE_RATE, len(run))
            fg = place_span(run, a, b, 0.0, rng) * gain
        else:
            fg = place_span(run, a, b, cfg.shift_ms, rng) * gain
    if rng.random() < cfg.eq_p:
        fg = _biquad_eq(fg, rng)
    if rng.random() < cfg.background_p:
        noise = background_window(bg, cfg, rng)
        if cfg.background_mode == "volume":
            fg = fg + noise * rng.uniform(0, cfg.volume_max)
        else:
            # SNR against the level of the (trimmed) speech itself, not of the zero-padded window.
            speech = _rms(clip) * gain
            fg = fg + noise * (speech / _rms(noise) / 10 ** (rng.uniform(*cfg.snr_db) / 20))
    if rng.random() < cfg.compress_p:
        fg = _compress(fg, rng)
    if rng.random() < cfg.codec_p:
        fg = _mulaw(fg)
    return np.clip(fg, -1, 1).astype(np.float32)


def build_eval_set(clips: Clips, bg: dict[str, np.ndarray], seed: int,
                   silence_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fixed 1-s windows for evaluation, identical for every recipe (independent of training augment).

    Each clip is placed with a shift of ±100 ms; half get a background (noise, music or both) at an SNR
    of 10-30 dB. Unknown clips are capped at one keyword's count (Speech Commands test balance), and as
    many `_silence_` windows are added: noise colours, music and music+noise mixtures, at levels from
    near-digital-silence up to loud.
    """
    rng = np.random.default_rng(seed)
    eval_cfg = AugmentConfig(shift_ms=100, gain_db=(-12, 0), background_p=0.5, background_mode="snr",
                             snr_db=(10, 30), music_noise_mix_p=0.5)
    labels = clips.labels()
    kw_counts = [int(np.sum(labels == LABEL_INDEX[k])) for k in KEYWORDS]
    per_class = max(1, int(np.mean([c for c in kw_counts if c > 0]))) if any(kw_counts) else 1
    unk = np.nonzero(labels == LABEL_INDEX[UNKNOWN])[0]
    keep = np.concatenate([np.nonzero(labels != LABEL_INDEX[UNKNOWN])[0],
                           rng.permutation(unk)[:per_class]])
    keep.sort()
    xs = [make_window(clips.audio[i], bg, eval_cfg, rng) for i in keep]
    ys = [labels[i] for i in keep]
    for _ in range(silence_count if silence_count is not None else per_class):
        xs.append(make_window(None, bg, eval_cfg, rng))
        ys.append(LABEL_INDEX[SILENCE])
    return np.stack(xs), np.array(ys, dtype=np.int64)
