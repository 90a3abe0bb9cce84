"""Reference streaming semantics: windows over a 16 kHz stream, the score trace, and the event decoder.

This is the executable form of `models/README.md` § Streaming and § Decoder; the golden stream trace
and events are produced here and the Rust `Spotter` must reproduce them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import CLASSES, KEYWORDS
from .frontend import HOP_LENGTH, FRAME_LENGTH, WINDOW_FRAMES, mfcc

MS_PER_FRAME = HOP_LENGTH * 1000 // 16000  # 10


def frame_end_ms(frame: int) -> int:
    """End of frame `frame` in ms of the stream clock: its last sample is 160 f + 479."""
    return (frame * HOP_LENGTH + FRAME_LENGTH) * 1000 // 16000


def windows(samples: np.ndarray, hop_frames: int) -> list[tuple[int, int, np.ndarray]]:
    """All scoring windows of a stream: (start_ms, end_ms, features [98, 40]).

    The first window is scored as soon as 98 frames exist (16000 samples), then every `hop_frames`
    frames. A window spans frames [e - 97, e]; start_ms = 10 (e - 97), end_ms = 10 e + 30.
    """
    feats = mfcc(samples)
    out = []
    for end in range(WINDOW_FRAMES - 1, len(feats), hop_frames):
        first = end - WINDOW_FRAMES + 1
        out.append((first * MS_PER_FRAME, frame_end_ms(end), feats[first:end + 1]))
    return out


@dataclasses.dataclass
class DecoderConfig:
    smoothing_ms: int = 60  # moving average of posteriors over the windows of this span (>= 1 window)
    refractory_ms: int = 1000  # after an event no event (of any keyword) for this long
    hop_frames: int = 2


@dataclasses.dataclass
class Event:
    keyword: str
    score: float
    start_ms: int
    end_ms: int


def smoothing_windows(cfg: DecoderConfig) -> int:
    return max(1, round(cfg.smoothing_ms / (cfg.hop_frames * MS_PER_FRAME)))


def smoothed(trace: list[tuple[int, int, np.ndarray]], cfg: DecoderConfig) -> np.ndarray:
    """The smoothed posteriors the decoder compares with thresholds: [windows, classes] float32."""
    s = smoothing_windows(cfg)
    probs = np.asarray([p for _, _, p in trace], dtype=np.float64)
    out = np.empty_like(probs)
    for i in range(len(probs)):
        out[i] = probs[max(0, i - s + 1):i + 1].mean(axis=0)
    return out.astype(np.float32)


def decode(trace: list[tuple[int, int, np.ndarray]], thresholds: dict[str, float],
           cfg: DecoderConfig) -> list[Event]:
    """Events from a score trace [(start_ms, end_ms, probs[12])].

    For each window in order: smoothed = mean of the probs of the last S windows (fewer at stream
    start), S = max(1, round(smoothing_ms / hop_ms)), rounded to float32. Among keywords whose smoothed
    score >= their float32 threshold, the highest (ties: lowest class index) fires if end_ms >= the refractory deadline; the
    event spans the firing window [start_ms, end_ms] and the deadline becomes end_ms + refractory_ms.
    Keywords missing from `thresholds` are disabled.
    """
    s = smoothing_windows(cfg)
    history: list[np.ndarray] = []
    deadline = -1
    events = []
    for start_ms, end_ms, probs in trace:
        history.append(np.asarray(probs, dtype=np.float64))
        if len(history) > s:
            history.pop(0)
        # Mean in float64, then compared in float32 against float32 thresholds (as the Rust side does).
        smoothed = np.mean(history, axis=0).astype(np.float32)
        best, best_score = None, np.float32(-1.0)
        for i, kw in enumerate(KEYWORDS):
            th = thresholds.get(kw)
            if th is not None and smoothed[i] >= np.float32(th) and smoothed[i] > best_score:
                best, best_score = kw, smoothed[i]
        if best is not None and end_ms >= deadline:
            events.append(Event(best, float(best_score), start_ms, end_ms))
            deadline = end_ms + cfg.refractory_ms
    return events


assert CLASSES[: len(KEYWORDS)] == KEYWORDS
