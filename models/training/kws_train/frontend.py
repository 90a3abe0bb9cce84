"""MFCC frontend: the numpy reference (float64) and a batched torch twin used in training.

The specification is `models/README.md` § Frontend; this module is its executable form and the source of
the golden feature vectors that the Rust crate must reproduce to 1e-4. Keep the two in sync.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 480  # 30 ms
HOP_LENGTH = 160  # 10 ms
FFT_SIZE = 512
NUM_MEL = 64
MEL_LOW_HZ = 80.0
MEL_HIGH_HZ = 7600.0
NUM_MFCC = 40
LOG_OFFSET = 1e-6
WINDOW_FRAMES = 98  # 1 s: 1 + (16000 - 480) // 160
NUM_BINS = FFT_SIZE // 2 + 1

FRONTEND_PARAMS = {
    "sample_rate": SAMPLE_RATE, "frame_length": FRAME_LENGTH, "hop_length": HOP_LENGTH,
    "fft_size": FFT_SIZE, "window": "hann_periodic", "spectrum": "power", "num_mel": NUM_MEL,
    "mel_low_hz": MEL_LOW_HZ, "mel_high_hz": MEL_HIGH_HZ, "mel_scale": "htk_1127_ln",
    "log_offset": LOG_OFFSET, "dct": "dct2_ortho", "num_mfcc": NUM_MFCC, "window_frames": WINDOW_FRAMES,
}


def hann_periodic(n: int = FRAME_LENGTH) -> np.ndarray:
    """w[k] = 0.5 - 0.5 cos(2πk/n), k = 0..n-1 (periodic: w[0] = 0, no trailing zero)."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)


def hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """[257, 64] weights, built like TensorFlow's `linear_to_mel_weight_matrix` (in float64)."""
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, NUM_BINS)[1:]  # DC bin gets weight 0 (padded below)
    bins_mel = hz_to_mel(freqs)[:, None]
    edges = np.linspace(hz_to_mel(MEL_LOW_HZ), hz_to_mel(MEL_HIGH_HZ), NUM_MEL + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slope = (bins_mel - lower) / (center - lower)
    upper_slope = (upper - bins_mel) / (upper - center)
    w = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    return np.concatenate([np.zeros((1, NUM_MEL)), w], axis=0)


def dct_matrix() -> np.ndarray:
    """[64, 40] orthonormal DCT-II: c[k] = s_k Σ_n x[n] cos(π k (2n+1) / 2N), s_0 = √(1/N), s_k = √(2/N)."""
    n = np.arange(NUM_MEL, dtype=np.float64)[:, None]
    k = np.arange(NUM_MFCC, dtype=np.float64)[None, :]
    m = np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * NUM_MEL)) * np.sqrt(2.0 / NUM_MEL)
    m[:, 0] *= np.sqrt(0.5)
    return m


def num_frames(num_samples: int) -> int:
    """Frames of a signal: frame i covers samples [160 i, 160 i + 480); partial frames are not formed."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // HOP_LENGTH


def mfcc(samples: np.ndarray) -> np.ndarray:
    """Reference MFCC of 16 kHz float samples in [-1, 1]: [num_frames, 40] float32 (computed in float64)."""
    x = np.asarray(samples, dtype=np.float64)
    t = num_frames(len(x))
    if t == 0:
        return np.zeros((0, NUM_MFCC), dtype=np.float32)
    idx = np.arange(FRAME_LENGTH)[None, :] + HOP_LENGTH * np.arange(t)[:, None]
    frames = x[idx] * hann_periodic()[None, :]
    spec = np.fft.rfft(frames, n=FFT_SIZE, axis=1)
    power = spec.real ** 2 + spec.imag ** 2
    logmel = np.log(power @ mel_matrix() + LOG_OFFSET)
    return (logmel @ dct_matrix()).astype(np.float32)


class TorchFrontend:
    """The same frontend for batches on torch (float32), split at log-mel so augmentation can sit there."""

    def __init__(self):
        import torch

        self.torch = torch
        self.window = torch.tensor(hann_periodic(), dtype=torch.float32)
        self.mel = torch.tensor(mel_matrix(), dtype=torch.float32)
        self.dct = torch.tensor(dct_matrix(), dtype=torch.float32)

    def logmel(self, x):
        """[B, S] samples -> [B, T, 64] log-mel."""
        frames = x.unfold(1, FRAME_LENGTH, HOP_LENGTH) * self.window
        spec = self.torch.fft.rfft(frames, n=FFT_SIZE, dim=-1)
        power = spec.real ** 2 + spec.imag ** 2
        return self.torch.log(power @ self.mel + LOG_OFFSET)

    def mfcc_from_logmel(self, logmel):
        return logmel @ self.dct

    def __call__(self, x):
        return self.mfcc_from_logmel(self.logmel(x))
