"""Second-stage verifier (research, detection-quality issue, levers 4/5): a small head on a pretrained
real-speech embedding re-scores the candidates of the first stage (TC-ResNet8 + the shipped decoder).

Feature models: `melspectrogram.onnx` and `embedding_model.onnx` from the `openwakeword==0.4.0` wheel
(ONNX ports of Google's `speech_embedding`, trained on real speech). Only these two files are used;
openWakeWord's wake-word heads are not. `unpack` copies the two files out of the wheel and checks their
sha256.

Input/output contract (read from the wheel's `openwakeword/utils.py`, `AudioFeatures`, and checked on
the models):
- `melspectrogram.onnx`: input `input` float32 [batch, samples], 16 kHz audio on the int16 scale
  (±32767, *not* ±1); output [batch, 1, frames, 32] with frames = ceil(samples / 160 - 3) (10-ms hop);
  openWakeWord then applies `spec / 10 + 2`, which we do too.
- `embedding_model.onnx`: input `input_1` float32 [n, 76, 32, 1] (76 mel frames, ~0.78 s); output
  [n, 1, 1, 96]. openWakeWord takes one embedding every 8 mel frames (80 ms).

Here the verifier sees `WINDOW_EMB` = 9 consecutive embeddings (1.4 s of mel frames, a 1.5-s audio
window) centred on the candidate: embedding j of a stream covers mel frames [8 j, 8 j + 76), its
centre is at ~`80 j + EMB_CENTRE_MS` ms. Training windows are `LONG_S` = 2.3 s long (19 embeddings);
each training step takes 9 consecutive ones at a random offset, so the keyword sits anywhere within
±400 ms of the verifier window's centre (the first stage's event time is not the keyword's centre).

Subcommands (run from models/training with the training venv):
  unpack    --wheel openwakeword-0.4.0-py3-none-any.whl --out data/oww
  windows   --data data --out runs/verifier/win-0.npz --count 3000 --seed 0 [--mined data/mined/x.jsonl]
  train     --windows runs/verifier/win-*.npz --out runs/verifier
  average   --heads runs/a/head.pt runs/b/head.pt --out runs/avg  (one head: the mean of several seeds' probabilities)
  embed     --manifest data/valcorpus/manifest.jsonl --cache runs/verifier/val-cache (first stage + embeddings)
  cascade   --cache runs/verifier/val-cache --head runs/verifier/head.pt --json cascade.json
  clips     --data data --head ../tc-resnet8/verifier/head.onnx --model-dir ../tc-resnet8  (held-out awb clips;
            per first-stage keyword, the share of right and wrong ones the verifier accepts)
  cost      --head runs/verifier/head.pt  (ms per candidate, ONNX Runtime, 1 thread)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from . import CLASSES, KEYWORDS, SAMPLE_RATE, SILENCE, UNKNOWN

FEATURE_FILES = {
    "melspectrogram.onnx": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model.onnx": "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
}
MEL_BINS, EMB_FRAMES, EMB_STEP, EMB_DIM = 32, 76, 8, 96
EMB_MS = EMB_STEP * 10  # 80 ms between embeddings
EMB_CENTRE_MS = 400  # centre of embedding 0 (mel frames 0..75, 10-ms hop, ~25-ms frames)
WINDOW_EMB = 9  # embeddings per verifier input (1.5 s of audio)
LONG_S = 2.3  # training window; 19 embeddings
LONG = int(LONG_S * SAMPLE_RATE)
LONG_EMB = 19
KW_IDS = list(range(len(KEYWORDS)))
UNK_ID, SIL_ID = CLASSES.index(UNKNOWN), CLASSES.index(SILENCE)


def find_feature_models(explicit: Path | None = None) -> Path | None:
    """Directory holding both feature models: `explicit`, $KWS_OWW_MODELS, data/oww or models/speech-embedding;
    None if absent."""
    cands = [explicit] if explicit else []
    if os.environ.get("KWS_OWW_MODELS"):
        cands.append(Path(os.environ["KWS_OWW_MODELS"]))
    cands.append(Path(__file__).resolve().parent.parent / "data" / "oww")
    cands.append(Path(__file__).resolve().parents[2] / "speech-embedding")  # the shipped copy
    for c in cands:
        if c and all((c / f).exists() for f in FEATURE_FILES):
            return c
    return None


def unpack(wheel: Path, out: Path) -> None:
    """Copy the two feature models (only those) out of the openwakeword wheel; check their sha256."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name, digest in FEATURE_FILES.items():
            data = z.read(f"openwakeword/resources/models/{name}")
            got = hashlib.sha256(data).hexdigest()
            if got != digest:
                raise ValueError(f"{name}: sha256 {got}, expected {digest}")
            (out / name).write_bytes(data)


class Embedder:
    """speech_embedding features of 16 kHz float audio in [-1, 1] (ONNX Runtime)."""

    def __init__(self, model_dir: Path, threads: int = 1):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        prov = ["CPUExecutionProvider"]
        self.mel_session = ort.InferenceSession(str(model_dir / "melspectrogram.onnx"), so, providers=prov)
        self.emb_session = ort.InferenceSession(str(model_dir / "embedding_model.onnx"), so, providers=prov)

    def mel(self, x: np.ndarray) -> np.ndarray:
        """[samples] or [batch, samples] float in [-1, 1] -> [(batch,) frames, 32] (openWakeWord's scaling)."""
        x2 = np.atleast_2d(np.asarray(x, np.float32)) * 32767.0
        spec = self.mel_session.run(None, {"input": x2})[0][:, 0]  # [batch, frames, 32]
        spec = spec / 10.0 + 2.0
        return spec if np.ndim(x) == 2 else spec[0]

    def embed_mel(self, spec: np.ndarray, batch: int = 64) -> np.ndarray:
        """[frames, 32] -> [n, 96]: one embedding per 76-frame window, every 8 frames."""
        starts = range(0, spec.shape[0] - EMB_FRAMES + 1, EMB_STEP)
        wins = np.stack([spec[s:s + EMB_FRAMES] for s in starts])[..., None].astype(np.float32)
        out = [self.emb_session.run(None, {"input_1": wins[i:i + batch]})[0].reshape(-1, EMB_DIM)
               for i in range(0, len(wins), batch)]
        return np.concatenate(out)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """[samples] -> [n, 96]."""
        return self.embed_mel(self.mel(x))


def view_start(t_ms: float, offset_ms: float = 0.0) -> int:
    """First embedding of the 9-embedding view centred at stream time t_ms + offset_ms."""
    centre = int(round((t_ms + offset_ms - EMB_CENTRE_MS) / EMB_MS))
    return centre - WINDOW_EMB // 2


def take_view(emb: np.ndarray, j0: int) -> np.ndarray:
    """emb[j0 : j0 + 9], edge rows repeated where the view runs off the stream."""
    idx = np.clip(np.arange(j0, j0 + WINDOW_EMB), 0, len(emb) - 1)
    return emb[idx]


# ---------------------------------------------------------------------------------------------------
# Training windows: 2.3-s augmented audio -> 19 embeddings.


def _bg_crop(bg: dict, n: int, rng: np.random.Generator, cfg) -> np.ndarray:
    from .data import MUSIC, NOISES

    name = rng.choice(NOISES + MUSIC)
    src = bg[name]
    s = int(rng.integers(0, len(src) - n + 1))
    x = src[s:s + n].astype(np.float32)
    if rng.random() < cfg.music_noise_mix_p:
        other = rng.choice(NOISES if name in MUSIC else MUSIC)
        s = int(rng.integers(0, len(bg[other]) - n + 1))
        x = x + rng.uniform(0.1, 1.0) * bg[other][s:s + n]
    return x


def augment_long(fg: np.ndarray, speech_rms: float, bg: dict, cfg, rng: np.random.Generator) -> np.ndarray:
    """The training augmentation of `data.make_window` (gain, EQ, background at SNR, compression, codec)
    on a window of any length; the speed warp is applied by the caller to the speech before placement."""
    from .data import _biquad_eq, _compress, _mulaw, _rms

    gain = 10 ** (rng.uniform(*cfg.gain_db) / 20)
    fg = fg * gain
    if rng.random() < cfg.eq_p:
        fg = _biquad_eq(fg, rng)
    if rng.random() < cfg.background_p:
        noise = _bg_crop(bg, len(fg), rng, cfg)
        if cfg.background_mode == "volume":
            fg = fg + noise * rng.uniform(0, cfg.volume_max)
        else:
            fg = fg + noise * (speech_rms * gain / _rms(noise) / 10 ** (rng.uniform(*cfg.snr_db) / 20))
    if rng.random() < cfg.compress_p:
        fg = _compress(fg, rng)
    if rng.random() < cfg.codec_p:
        fg = _mulaw(fg)
    return np.clip(fg, -1, 1).astype(np.float32)


def place_long(run: np.ndarray, centre: int, shift_ms: float, rng: np.random.Generator) -> np.ndarray:
    """A LONG window of `run` with run sample `centre` at the window's centre ± shift."""
    out = np.zeros(LONG, np.float32)
    start = LONG // 2 + int(rng.uniform(-shift_ms, shift_ms) * SAMPLE_RATE / 1000) - centre
    lo, hi = max(0, start), min(LONG, start + len(run))
    if hi > lo:
        out[lo:hi] = run[lo - start:hi - start]
    return out


@dataclasses.dataclass
class WindowMix:
    """Shares of the training windows (normalized)."""

    keyword: float = 0.45
    negspeech: float = 0.25
    mined: float = 0.12
    unknown: float = 0.06
    partial: float = 0.04
    silence: float = 0.08


class WindowMaker:
    def __init__(self, clips, tracks, bg, cfg, mined: list[tuple[int, int]] | None, rng: np.random.Generator):
        from .data import LABEL_INDEX

        self.clips, self.tracks, self.bg, self.cfg, self.rng = clips, tracks, bg, cfg, rng
        self.mined = mined or []
        labels = clips.labels()
        self.by_class = {c: np.nonzero(labels == LABEL_INDEX[c])[0] for c in KEYWORDS + [UNKNOWN]}
        self.unk_by_engine: dict[str, list[int]] = {}
        for j in self.by_class[UNKNOWN]:
            self.unk_by_engine.setdefault(clips.meta[j]["engine"], []).append(j)
        self.tracks_by_engine: dict[str, list[int]] = {}
        for i, m in enumerate(tracks.meta):
            self.tracks_by_engine.setdefault(m["engine"], []).append(i)

    def _track_crop(self, i: int, n: int, start: int | None = None) -> np.ndarray:
        x = self.tracks.audio[i]
        if start is None:
            start = int(self.rng.integers(0, max(1, len(x) - n + 1)))
        out = np.zeros(n, np.float32)
        lo, hi = max(0, start), min(len(x), start + n)
        if hi > lo:
            out[lo - start:hi - start] = x[lo:hi].astype(np.float32) / 32768.0
        return out

    def _warp(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        from .data import speed_warp

        if self.rng.random() < self.cfg.speed_p:
            f = self.rng.uniform(*self.cfg.speed_range)
            return speed_warp(x, f), f
        return x, 1.0

    def _speech(self, run: np.ndarray, centre: int, shift_ms: float) -> np.ndarray:
        from .data import _rms

        run, f = self._warp(run)
        fg = place_long(run, int(centre / f), shift_ms, self.rng)
        nz = np.abs(fg) > 1e-4
        level = _rms(fg[nz]) if nz.any() else 1e-3
        x = augment_long(fg, level, self.bg, self.cfg, self.rng)
        if self.rng.random() < 0.1:  # only the middle 1 s kept (clip-test windows are zero-padded 1-s ones)
            m = np.zeros(LONG, np.float32)
            a = (LONG - SAMPLE_RATE) // 2
            m[a:a + SAMPLE_RATE] = x[a:a + SAMPLE_RATE]
            x = m
        return x

    def keyword(self, kw: str) -> np.ndarray:
        from .data import word_run

        i = int(self.rng.choice(self.by_class[kw]))
        clip = self.clips.audio[i]
        eng = self.clips.meta[i]["engine"]
        u = self.rng.random()
        if u < 0.4:
            run, a, b = clip, 0, len(clip)
        elif u < 0.7 or eng not in self.tracks_by_engine:  # between unknown words of the same engine
            pool = self.unk_by_engine.get(eng, self.by_class[UNKNOWN])
            pick = lambda k: [self.clips.audio[j] for j in self.rng.choice(pool, k)]  # noqa: E731
            run, a, b = word_run(clip, pick(int(self.rng.integers(1, 4))), pick(int(self.rng.integers(1, 4))),
                                 (50.0, 400.0), self.rng)
        else:  # inside negative speech of the same engine (sentence before and after)
            tr = self.tracks_by_engine[eng]
            left = self._track_crop(int(self.rng.choice(tr)), SAMPLE_RATE + SAMPLE_RATE // 5)
            right = self._track_crop(int(self.rng.choice(tr)), SAMPLE_RATE + SAMPLE_RATE // 5)
            left *= 0.7 / max(np.abs(left).max(), 1e-3)
            right *= 0.7 / max(np.abs(right).max(), 1e-3)
            run, a, b = word_run(clip, [left], [right], (50.0, 400.0), self.rng)
        return self._speech(run, (a + b) // 2, 100.0)

    def make(self, kind: str) -> tuple[np.ndarray, int]:
        rng = self.rng
        if kind == "keyword":
            k = int(rng.integers(len(KEYWORDS)))
            return self.keyword(KEYWORDS[k]), k
        if kind == "silence":
            x = _bg_crop(self.bg, LONG, rng, self.cfg) * rng.uniform(0, self.cfg.silence_volume_max)
            return np.clip(x, -1, 1).astype(np.float32), SIL_ID
        if kind == "negspeech" or (kind == "mined" and not self.mined):
            x = self._track_crop(int(rng.integers(len(self.tracks))), LONG)
            x *= 0.7 / max(np.abs(x).max(), 1e-3)
            return self._speech(x, LONG // 2, 0.0), UNK_ID
        if kind == "mined":  # centred on a window the first stage fired on (± 200 ms)
            t, s = self.mined[int(rng.integers(len(self.mined)))]
            c = s + SAMPLE_RATE // 2 + int(rng.uniform(-200, 200) * SAMPLE_RATE / 1000)
            x = self._track_crop(t, LONG, c - LONG // 2)
            x *= 0.7 / max(np.abs(x).max(), 1e-3)
            return self._speech(x, LONG // 2, 0.0), UNK_ID
        if kind == "unknown":
            i = int(rng.choice(self.by_class[UNKNOWN]))
            clip = self.clips.audio[i]
            return self._speech(clip, len(clip) // 2, 300.0), UNK_ID
        if kind == "partial":
            kw = KEYWORDS[int(rng.integers(len(KEYWORDS)))]
            clip = self.clips.audio[int(rng.choice(self.by_class[kw]))]
            n = max(1, int(len(clip) * rng.uniform(0.3, 0.6)))
            part = clip[:n] if rng.random() < 0.5 else clip[-n:]
            return self._speech(part, len(part) // 2, 300.0), UNK_ID
        raise ValueError(kind)


def training_data(data: Path, config: Path, mined_file: Path | None):
    """Clips (with the recipe's voice-converted copies), negative tracks, background and augmentation of
    the recipe (held-out families and the validation espeak accents excluded, as in `train`)."""
    from .data import espeak_accent, load_background, load_clips, load_mined, load_negspeech
    from .recipe import held_out, load_recipe
    from .train import add_converted, trainable

    r = load_recipe(config)
    clips = load_clips(data, [e for e in r.engines if (data / "shards" / f"{e}.npz").exists()])
    clips = add_converted(clips.select(lambda m: trainable(m, r)), data, r)
    tracks = load_negspeech(data, r.negative_engines or r.engines)
    tracks = tracks.select(lambda m: not held_out(m, r) and espeak_accent(m) not in r.val_espeak_accents)
    mined = load_mined(mined_file, tracks) if mined_file else None
    return r, clips, tracks, load_background(data), mined


def cmd_windows(a) -> None:
    r, clips, tracks, bg, mined = training_data(a.data, a.config, a.mined)
    if not len(tracks):
        raise SystemExit("no negative-speech tracks (python -m kws_train.negspeech)")
    rng = np.random.default_rng(a.seed)
    maker = WindowMaker(clips, tracks, bg, r.augment, mined, rng)
    emb = Embedder(find_feature_models(a.features), a.threads)
    mix = dataclasses.asdict(WindowMix())
    kinds = list(mix)
    p = np.array([mix[k] for k in kinds])
    p /= p.sum()
    X = np.zeros((a.count, LONG_EMB, EMB_DIM), np.float16)
    y = np.zeros(a.count, np.int64)
    kind_ids = rng.choice(len(kinds), size=a.count, p=p)
    t0, c0 = time.time(), time.process_time()
    for n0 in range(0, a.count, 32):
        batch = [maker.make(kinds[k]) for k in kind_ids[n0:n0 + 32]]
        # One mel run per window: the mel model floors at 80 dB below the loudest value of its whole
        # input, so a batch would floor every window by its loudest neighbour (the Rust verifier runs
        # it per candidate clip; see models/speech-embedding/README.md).
        specs = [emb.mel(b[0]) for b in batch]
        for i, (spec, (_, lab)) in enumerate(zip(specs, batch)):
            X[n0 + i] = emb.embed_mel(spec)[:LONG_EMB]
            y[n0 + i] = lab
        if (n0 // 32) % 10 == 0:
            print(f"{n0 + len(batch)}/{a.count} {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, x=X, y=y, kind=kind_ids, kinds=np.array(kinds))
    print(json.dumps({"windows": a.count, "wall_s": round(time.time() - t0, 1),
                      "cpu_s": round(time.process_time() - c0, 1), "tracks": len(tracks),
                      "mined": len(mined or []), "clips": len(clips)}))


# ---------------------------------------------------------------------------------------------------
# The head.


def make_head(hidden: int = 128, dropout: float = 0.3, arch: str = "mlp"):
    """`mlp`: flattened 9 x 96 -> 2 hidden layers -> 12. `conv`: two 1-D convolutions over the 9
    embeddings, max over time (shift-tolerant), -> 12."""
    import torch.nn as nn

    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.LayerNorm(WINDOW_EMB * EMB_DIM),
                             nn.Linear(WINDOW_EMB * EMB_DIM, hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, len(CLASSES)))
    if arch == "conv":
        class Transpose(nn.Module):
            def forward(self, x):
                return x.transpose(1, 2)

        class MaxTime(nn.Module):
            def forward(self, x):
                return x.amax(dim=2)

        return nn.Sequential(nn.LayerNorm(EMB_DIM), Transpose(), nn.Dropout(dropout / 2),
                             nn.Conv1d(EMB_DIM, hidden, 3, padding=1), nn.ReLU(),
                             nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), MaxTime(), nn.Dropout(dropout),
                             nn.Linear(hidden, len(CLASSES)))
    raise ValueError(arch)


def random_views(X: np.ndarray, rng: np.random.Generator, jitter: int = 5) -> np.ndarray:
    """One 9-embedding view per long window, centred ± `jitter` embeddings (80 ms each)."""
    mid = (LONG_EMB - WINDOW_EMB) // 2
    j0 = mid + rng.integers(-jitter, jitter + 1, size=len(X))
    idx = j0[:, None] + np.arange(WINDOW_EMB)[None, :]
    return X[np.arange(len(X))[:, None], idx]


def cmd_train(a) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    files = sorted(f for pat in a.windows for f in glob.glob(str(pat)))
    zs = [np.load(f) for f in files]
    X = np.concatenate([z["x"] for z in zs]).astype(np.float32)
    y = np.concatenate([z["y"] for z in zs])
    rng = np.random.default_rng(a.seed)
    Xv = yv = None
    if a.val_frac > 0:  # held-out training windows: a sanity check of fit, not a selection criterion
        perm = rng.permutation(len(X))
        nv = int(len(X) * a.val_frac)
        Xv, yv, X, y = X[perm[:nv]], y[perm[:nv]], X[perm[nv:]], y[perm[nv:]]
    net = make_head(a.hidden, a.dropout, a.arch)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-2)
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(CLASSES), 0.0)
    w[UNK_ID] *= a.reject_weight  # negatives are the point: weight `_unknown_` up
    weight = torch.tensor(w, dtype=torch.float32)
    t0, steps = time.time(), a.epochs * max(1, len(X) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)
    net.train()
    step = 0
    for ep in range(a.epochs):
        perm = rng.permutation(len(X))
        tot = 0.0
        for i in range(0, len(X) - a.batch + 1, a.batch):
            b = perm[i:i + a.batch]
            xb = torch.from_numpy(random_views(X[b], rng, a.jitter))
            xb = xb + a.noise * torch.randn_like(xb)
            loss = F.cross_entropy(net(xb), torch.from_numpy(y[b]), weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += float(loss)
        print(f"epoch {ep + 1}/{a.epochs} loss {tot / max(1, len(X) // a.batch):.4f}", file=sys.stderr, flush=True)
    net.eval()
    held = {}
    if Xv is not None:
        pv = head_probs(net, random_views(Xv, np.random.default_rng(0), a.jitter))
        kw = yv < len(KEYWORDS)
        held = {"heldout_keyword_acc": float((pv.argmax(1)[kw] == yv[kw]).mean()),
                "heldout_unknown_acc": float((pv.argmax(1)[yv == UNK_ID] == UNK_ID).mean()),
                "heldout_windows": int(len(yv))}
    a.out.mkdir(parents=True, exist_ok=True)
    torch.save({"state": net.state_dict(), "hidden": a.hidden, "dropout": a.dropout, "arch": a.arch}, a.out / "head.pt")
    export_head(net, a.out / "head.onnx")
    print(json.dumps({"windows": len(X), "class_counts": counts.astype(int).tolist(), "epochs": a.epochs,
                      "train_s": round(time.time() - t0, 1), **held}))


def export_head(net, path: Path) -> None:
    """Head as ONNX (input `embeddings` [N, 9, 96] -> `probs` [N, 12]); skipped without the onnx package.
    An averaged head (`HeadMean`) is exported as the mean of its members' probabilities."""
    import torch

    try:
        import onnx  # noqa: F401
    except ImportError:
        print("onnx not installed: head.onnx not written", file=sys.stderr)
        return
    wrapped = net.probs_module() if isinstance(net, _head_mean_class()) else torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
    torch.onnx.export(wrapped, torch.zeros(1, WINDOW_EMB, EMB_DIM), str(path), input_names=["embeddings"],
                      output_names=["probs"], dynamic_axes={"embeddings": {0: "n"}, "probs": {0: "n"}},
                      opset_version=17, dynamo=False)


@functools.cache
def _head_mean_class():
    import torch

    class HeadMean(torch.nn.Module):
        """Heads trained alike from different seeds, averaged: the mean of their class probabilities.
        `forward` returns its log (the logits convention of a single head: softmax gives the mean back)."""

        def __init__(self, members):
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def mean_probs(self, x):
            return torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)

        def forward(self, x):
            return torch.log(self.mean_probs(x).clamp_min(1e-30))

        def probs_module(self):
            outer = self

            class Probs(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.inner = outer

                def forward(self, x):
                    return self.inner.mean_probs(x)

            return Probs()

    return HeadMean


def load_head(path: Path):
    """A head checkpoint (`head.pt`): one network, or the members of an averaged head (`verifier average`)."""
    import torch

    ck = torch.load(path, map_location="cpu")
    if "members" in ck:
        net = _head_mean_class()([_net_of(m) for m in ck["members"]])
    else:
        net = _net_of(ck)
    net.eval()
    return net


def _net_of(ck: dict):
    net = make_head(ck["hidden"], ck["dropout"], ck.get("arch", "mlp"))
    net.load_state_dict(ck["state"])
    return net


def cmd_average(a) -> None:
    """One head from several checkpoints of the same recipe (other seeds): the mean of their probabilities, as
    one ONNX graph with the single head's input and output (the Rust verifier runs it unchanged)."""
    import torch

    cks = [torch.load(p, map_location="cpu") for p in a.heads]
    if len(cks) < 2 or any("members" in c for c in cks):
        raise SystemExit("average: give two or more single-head checkpoints (head.pt)")
    members = [{k: c[k] for k in ("state", "hidden", "dropout", "arch") if k in c} for c in cks]
    a.out.mkdir(parents=True, exist_ok=True)
    torch.save({"members": members, "sources": [str(p) for p in a.heads]}, a.out / "head.pt")
    net = load_head(a.out / "head.pt")
    export_head(net, a.out / "head.onnx")
    print(json.dumps({"members": len(members), "out": str(a.out / "head.onnx")}))


def head_file_probs(path: Path, views: np.ndarray) -> np.ndarray:
    """A head's probabilities from its file: `head.onnx` (what ships) through ONNX Runtime, 1 thread;
    a training checkpoint (`head.pt`) through PyTorch."""
    if path.suffix != ".onnx":
        return head_probs(load_head(path), views)
    import onnxruntime as ort

    if len(views) == 0:
        return np.zeros((0, len(CLASSES)), np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    v = np.asarray(views, np.float32)
    return np.concatenate([sess.run(["probs"], {"embeddings": v[i:i + 256]})[0] for i in range(0, len(v), 256)])


def acceptance_by_keyword(p1: np.ndarray, p2: np.ndarray, y: np.ndarray,
                          thresholds: dict[str, float]) -> dict[str, dict]:
    """What the cascade's verifier does to isolated keyword clips, per keyword: of the clips whose first-stage
    keyword (the highest of the ten keywords, as a candidate is labelled) is k, how many are right and how
    many wrong, and which share of each the verifier accepts (its probability of k >= `thresholds[k]`).
    A verifier that rejects the right ones is the recall limit of its keyword on these voices; one that
    accepts the wrong ones lets confusions through as false alarms."""
    kw = np.isin(y, KW_IDS)
    first = np.asarray(KW_IDS)[p1[:, KW_IDS].argmax(1)]
    out = {}
    for k, name in enumerate(KEYWORDS):
        said = kw & (first == k)
        right, wrong = said & (y == k), said & (y != k)
        ok = p2[:, k] >= np.float32(thresholds[name])
        out[name] = {"first_stage": int(said.sum()), "right": int(right.sum()), "wrong": int(wrong.sum()),
                     "accepted_right": round(float(ok[right].mean()), 4) if right.any() else None,
                     "accepted_wrong": round(float(ok[wrong].mean()), 4) if wrong.any() else None}
    return out


def head_probs(net, views: np.ndarray) -> np.ndarray:
    import torch

    if len(views) == 0:
        return np.zeros((0, len(CLASSES)), np.float32)
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(np.asarray(views, np.float32))), dim=1).numpy()


# ---------------------------------------------------------------------------------------------------
# Streams: first stage + embeddings once per file (cache), then any cascade grid.


def cmd_embed(a) -> None:
    from .streameval import load_model, read_wav, score_file, smoothed_fast
    from .stream import smoothing_windows

    session, dec = load_model(argparse.Namespace(model_dir=a.model_dir, model=None, variant=a.variant, threads=1,
                                                 smoothing_ms=None, refractory_ms=None, hop_frames=None))
    emb = None if a.first_stage_only else Embedder(find_feature_models(a.features), 1)
    a.cache.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in a.manifest.read_text(encoding="utf-8").splitlines()
            if x.strip() and not x.startswith("#")]
    cpu = {"first": 0.0, "embed": 0.0}
    secs = 0.0
    for n, r in enumerate(rows):
        out = a.cache / (r["wav"].replace("/", "_").rsplit(".", 1)[0] + ".npz")
        if out.exists():
            continue
        x = read_wav(a.manifest.parent / r["wav"])
        c0 = time.process_time()
        probs, st, en = score_file(session, x, dec)
        sm = smoothed_fast(probs, smoothing_windows(dec))
        c1 = time.process_time()
        e = emb.embed(x) if emb else np.zeros((0, EMB_DIM), np.float32)
        c2 = time.process_time()
        cpu["first"] += c1 - c0
        cpu["embed"] += c2 - c1
        secs += len(x) / SAMPLE_RATE
        labels = [(KEYWORDS.index(l["keyword"]), l["start_ms"], l["end_ms"]) for l in r.get("labels", [])
                  if l["keyword"] in KEYWORDS]
        meta = r.get("meta", {})
        cat = meta.get("category") or ("negative" if r.get("negative") else "labelled")
        np.savez(out, sm=sm, start=st, end=en, emb=e.astype(np.float32), labels=np.array(labels, np.int64).reshape(-1, 3),
                 seconds=len(x) / SAMPLE_RATE, category=cat, wav=r["wav"])
        print(f"{n + 1}/{len(rows)} {r['wav']} {cat} {len(x) / SAMPLE_RATE:.0f} s", file=sys.stderr, flush=True)
    (a.cache / "decoder.json").write_text(json.dumps({**dataclasses.asdict(dec), "model_dir": str(a.model_dir),
                                                      "variant": a.variant}))
    if secs:
        print(json.dumps({"audio_s": round(secs, 1), "cpu_first_stage_s": round(cpu["first"], 1),
                          "cpu_embedding_s": round(cpu["embed"], 1)}))


#: How the first stage proposes candidates (manifest `verifier.candidate_rule`; `best_keyword` when absent).
CANDIDATE_RULES = ("best_keyword", "keyword_mass")


def candidate_scores(sm: np.ndarray, rule: str = "best_keyword") -> tuple[np.ndarray, np.ndarray]:
    """Per window of smoothed posteriors: the first stage's keyword (highest smoothed keyword score,
    ties: lowest index) and the score a candidate needs >= t1. `best_keyword`: that keyword's score.
    `keyword_mass`: the sum of all keywords' smoothed scores, added in float64 in keyword order and
    rounded to float32 (as `kws_models::cascade` does), so a window whose keyword probability is split
    between confusable keywords (go/no, on/off) is still proposed; the verifier then checks the
    first stage's keyword."""
    kw = sm[:, :len(KEYWORDS)]
    best = np.argmax(kw, axis=1)
    if rule == "best_keyword":
        return best, kw[np.arange(len(kw)), best]
    if rule == "keyword_mass":
        mass = np.zeros(len(kw), np.float64)
        for k in range(kw.shape[1]):
            mass += kw[:, k].astype(np.float64)
        return best, mass.astype(np.float32)
    raise ValueError(f"unknown candidate rule {rule!r} (known: {', '.join(CANDIDATE_RULES)})")


def cascade_events(sm: np.ndarray, end_ms: np.ndarray, t1: float, verify, v: float, refractory_ms: int,
                   reject_gap_ms: int, relabel: bool, rule: str = "best_keyword") -> tuple[list[tuple[int, int]], int]:
    """First stage: a window whose candidate score (`candidate_scores`: by default the highest smoothed
    keyword) is >= t1 proposes a candidate at the centre of its window, unless the deadline runs;
    `verify(i)` (window index -> 12 probabilities) accepts it when
    the verifier's probability of the first stage's keyword (`relabel`: of its own best keyword, which
    then becomes the event's label) is >= v. An accepted event starts the refractory period; a rejected
    candidate only blocks new candidates for `reject_gap_ms`. Returns (events, candidates)."""
    best, score = candidate_scores(sm, rule)
    cand = np.nonzero(score >= np.float32(t1))[0]
    ev, deadline, ncand = [], -1, 0
    for i in cand:
        if end_ms[i] < deadline:
            continue
        ncand += 1
        p = verify(int(i))
        if relabel:
            k = int(np.argmax(p[:len(KEYWORDS)]))
        else:
            k = int(best[i])
        if p[k] >= v:
            ev.append((k, int(i)))
            deadline = int(end_ms[i]) + refractory_ms
        else:
            deadline = int(end_ms[i]) + reject_gap_ms
    return ev, ncand


def load_cache(cache: Path) -> list[dict]:
    files = []
    for f in sorted(cache.glob("*.npz")):
        z = np.load(f)
        files.append({k: z[k] for k in z.files})
    return files


def lazy_verifier(files: list[dict], net, offset_ms: float = 0.0, clips: dict | None = None):
    """`verifier_for(file)` -> `verify(window index)` -> the head's 12 probabilities for the view
    centred on that window's event time (+ `offset_ms`), computed on first use and kept per file.

    Without `clips` the view is cut from the stream's embeddings (`embed` cache: mel over the whole
    stream). With `clips` (`load_clip_table`: per stream, first embedding -> probabilities) the
    probabilities are those of the candidate's own clip, mel run on the clip alone — what the Rust
    verifier computes; `net` is then unused."""
    for f in files:
        f["j0"] = np.array([view_start(t, offset_ms) for t in (f["start"] + f["end"]) // 2])
        f["vp"] = {}

    def verifier_for(f):
        table = clips[str(f["wav"])] if clips is not None else None

        def verify(i):
            if i not in f["vp"]:
                if table is not None:
                    f["vp"][i] = table[int(f["j0"][i])]
                else:
                    f["vp"][i] = head_probs(net, take_view(f["emb"], int(f["j0"][i]))[None])[0]
            return f["vp"][i]
        return verify

    return verifier_for


def cmd_clip_table(a) -> None:
    """Per-clip verifier probabilities of every window that can be a candidate (candidate score of
    `--candidate-rule` >= --min-t1) of the cached streams: one mel + embedding + head run per distinct view
    (four consecutive 20-ms windows share a view), as the Rust verifier runs it; with --view-shifts N the
    clip holds the 2N + 1 views shifted by -N..N embeddings and the probabilities are their per-class
    minimum (`verifier_golden.view_probs`). Written to --out (npz: per stream `<wav>|first` and
    `<wav>|probs`, N as `VIEW_SHIFTS_KEY` and --offset-ms as `OFFSET_KEY`), read by `load_clip_table`,
    `clip_table_view_shifts` and `clip_table_offset_ms`."""
    import onnxruntime as ort

    from .streameval import read_wav
    from .verifier_golden import clip_view, combine_views, shifted_views

    shifts = a.view_shifts
    emb = Embedder(find_feature_models(a.features), 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    head = ort.InferenceSession(str(a.head), so, providers=["CPUExecutionProvider"])
    files = load_cache(a.cache)
    out, n_clips, c0 = {}, 0, time.process_time()
    for n, f in enumerate(files):
        _, score = candidate_scores(f["sm"], a.candidate_rule)
        t = (f["start"] + f["end"]) // 2
        firsts = sorted({view_start(int(ti), a.offset_ms) for ti in t[score >= np.float32(a.min_t1)]})
        probs = np.zeros((len(firsts), len(CLASSES)), np.float32)
        if firsts:
            x = read_wav(a.audio_dir / str(f["wav"]))
            views = []
            for j0 in firsts:
                _, s, e, lead = clip_range_of(j0 - shifts, WINDOW_EMB + 2 * shifts)
                views.append(shifted_views(clip_view(emb, x[s:e], lead, WINDOW_EMB + 2 * shifts), shifts))
            per = 2 * shifts + 1
            for i in range(0, len(views), 64):
                p = head.run(None, {"embeddings": np.concatenate(views[i:i + 64])})[0]
                probs[i:i + 64] = combine_views(p.reshape(-1, per, len(CLASSES)))
        out[f"{f['wav']}|first"] = np.array(firsts, np.int64)
        out[f"{f['wav']}|probs"] = probs
        n_clips += len(firsts)
        print(f"{n + 1}/{len(files)} {f['wav']} {len(firsts)} clips", file=sys.stderr, flush=True)
    out[VIEW_SHIFTS_KEY] = np.array(shifts, np.int64)
    out[OFFSET_KEY] = np.array(a.offset_ms, np.float64)
    np.savez(a.out, **out)
    print(json.dumps({"clips": n_clips, "view_shifts": shifts, "cpu_s": round(time.process_time() - c0, 1),
                      "ms_per_clip": round(1000 * (time.process_time() - c0) / max(1, n_clips), 2)}))


def clip_range_of(j0: int, n: int = WINDOW_EMB) -> tuple[int, int, int, int]:
    """`verifier_golden.clip_range` from a view's first embedding instead of a time."""
    from .verifier_golden import MEL_HOP, clip_samples

    lead = min(max(0, -j0), n - 1)
    start = max(j0, 0) * EMB_STEP * MEL_HOP
    return j0, start, start + clip_samples(n - lead), lead


#: The npz key of a clip table's `--view-shifts` (tables without it were made with 0).
VIEW_SHIFTS_KEY = "meta|view_shifts"


#: The npz key of a clip table's `--offset-ms` (tables without it were made with 0).
OFFSET_KEY = "meta|offset_ms"


def clip_table_view_shifts(path: Path) -> int:
    z = np.load(path)
    return int(z[VIEW_SHIFTS_KEY]) if VIEW_SHIFTS_KEY in z.files else 0


def clip_table_offset_ms(path: Path) -> float:
    """The view-centre offset the table's clips were cut at: a table only answers for views at that offset."""
    z = np.load(path)
    return float(z[OFFSET_KEY]) if OFFSET_KEY in z.files else 0.0


def load_clip_table(path: Path) -> dict:
    """`clip-table` output -> {wav: {first: probabilities}}."""
    z = np.load(path)
    out: dict = {}
    for k in z.files:
        wav, what = k.rsplit("|", 1)
        if what == "first":
            out[wav] = dict(zip(z[k].tolist(), z[f"{wav}|probs"]))
    return out


def cmd_cascade(a) -> None:
    from .streameval import grid_events, match_events

    dec = json.loads((a.cache / "decoder.json").read_text())
    files = load_cache(a.cache)
    clips = load_clip_table(a.clip_table) if a.clip_table else None
    if clips is not None and clip_table_offset_ms(a.clip_table) != a.offset_ms:
        raise SystemExit(f"{a.clip_table} was cut at --offset-ms {clip_table_offset_ms(a.clip_table):g}, "
                         f"not {a.offset_ms:g}")
    net = None if clips is not None else load_head(a.head)
    hours = sum(float(f["seconds"]) for f in files) / 3600
    verifier_for = lazy_verifier(files, net, a.offset_ms, clips)

    def tally(events_per_file) -> dict:
        tp = fp = fn = 0
        per_kw = np.zeros((len(KEYWORDS), 3), np.int64)
        cat_fp: dict[str, list[float]] = {}
        for f, ev in zip(files, events_per_file):
            labels = [tuple(map(int, l)) for l in f["labels"]]
            m = match_events(ev, labels, len(KEYWORDS), a.tolerance_ms)
            per_kw += np.array([m["tp"], m["fp"], m["fn"]]).T
            c = str(f["category"])
            cat_fp.setdefault(c, [0, 0.0])
            cat_fp[c][0] += sum(m["fp"])
            cat_fp[c][1] += float(f["seconds"])
        tp, fp, fn = per_kw.sum(0)
        return {"recall": tp / max(1, tp + fn), "fa_per_h": fp / hours, "tp": int(tp), "fp": int(fp), "fn": int(fn),
                "keywords": {k: {"recall": int(per_kw[i, 0]) / max(1, int(per_kw[i, 0] + per_kw[i, 2])),
                                 "fa_per_h": int(per_kw[i, 1]) / hours} for i, k in enumerate(KEYWORDS)},
                "fa_per_h_by_category": {c: v[0] / (v[1] / 3600) for c, v in cat_fp.items()}}

    out = {"hours": hours, "files": len(files), "offset_ms": a.offset_ms, "reject_gap_ms": a.reject_gap_ms,
           "first_stage": [], "cascade": []}
    grid = a.first_grid
    evs = [grid_events(f["sm"], f["start"], f["end"], grid, dec["refractory_ms"]) for f in files]
    for g, t in enumerate(grid):
        out["first_stage"].append({"t1": t, **tally([e[g] for e in evs])})
    for relabel in (False, True) if a.relabel else (False,):
        for t1 in a.t1:
            for v in a.v:
                evf, ncand = [], 0
                for f in files:
                    times = (f["start"] + f["end"]) // 2
                    ev, nc = cascade_events(f["sm"], f["end"], t1, verifier_for(f), v, dec["refractory_ms"],
                                            a.reject_gap_ms, relabel, a.candidate_rule)
                    evf.append([(k, int(times[i])) for k, i in ev])
                    ncand += nc
                out["cascade"].append({"t1": t1, "v": v, "relabel": relabel,
                                       "candidates_per_h": ncand / hours, **tally(evf)})
    out["verifier_calls"] = sum(len(f["vp"]) for f in files)
    out["operating_points"] = summarize(out)
    print_cascade(out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=float))


def summarize(out: dict) -> dict:
    """Recall at <= 1 FA/h (and 0.1), and the lowest FA/h at >= 90 % / 95 % recall, over each family of points."""
    fams = {"first_stage": out["first_stage"]}
    for p in out["cascade"]:
        fams.setdefault(f"cascade t1={p['t1']}" + (" relabel" if p["relabel"] else ""), []).append(p)
    fams["cascade (all t1, v)"] = [p for p in out["cascade"] if not p["relabel"]]
    res = {}
    for name, pts in fams.items():
        r = {}
        for m in (1.0, 0.1):
            ok = [p for p in pts if p["fa_per_h"] <= m]
            b = max(ok, key=lambda p: p["recall"]) if ok else None
            r[f"recall@fa<={m}"] = None if b is None else {"recall": b["recall"], "fa_per_h": b["fa_per_h"],
                                                             "t1": b.get("t1"), "v": b.get("v")}
        for rc in (0.9, 0.95):
            ok = [p for p in pts if p["recall"] >= rc]
            b = min(ok, key=lambda p: p["fa_per_h"]) if ok else None
            r[f"fa@recall>={rc}"] = None if b is None else {"recall": b["recall"], "fa_per_h": b["fa_per_h"],
                                                              "t1": b.get("t1"), "v": b.get("v")}
        res[name] = r
    return res


def print_cascade(out: dict) -> None:
    print(f"{out['files']} files, {out['hours']:.3f} h; offset {out['offset_ms']} ms, reject gap {out['reject_gap_ms']} ms")
    print("\nfirst stage alone\n\n| t1 | recall | FA/h | " + " | ".join(out["first_stage"][0]["fa_per_h_by_category"]) + " |")
    for p in out["first_stage"]:
        print(f"| {p['t1']} | {100 * p['recall']:.1f} % | {p['fa_per_h']:.1f} | "
              + " | ".join(f"{v:.1f}" for v in p["fa_per_h_by_category"].values()) + " |")
    print("\ncascade\n\n| t1 | v | relabel | candidates/h | recall | FA/h | "
          + " | ".join(out["first_stage"][0]["fa_per_h_by_category"]) + " |")
    for p in out["cascade"]:
        print(f"| {p['t1']} | {p['v']} | {p['relabel']} | {p['candidates_per_h']:.0f} | {100 * p['recall']:.1f} % | "
              f"{p['fa_per_h']:.1f} | " + " | ".join(f"{v:.1f}" for v in p["fa_per_h_by_category"].values()) + " |")
    print("\noperating points")
    for name, r in out["operating_points"].items():
        print(f"- {name}: " + "; ".join(
            f"{k}: " + ("none" if v is None else f"{100 * v['recall']:.1f} % / {v['fa_per_h']:.2f} FA/h (t1 {v['t1']}, v {v['v']})")
            for k, v in r.items()))


# ---------------------------------------------------------------------------------------------------
# Held-out clips and cost.


def centred_views(emb: Embedder, clips, shifts: int, batch: int = 32) -> np.ndarray:
    """Head inputs of isolated clips (each at most 1 s), as the head was trained: every clip centred in a
    2.3-s window of silence, mel over the whole window, and the `2 * shifts + 1` views of 9 embeddings
    around its centre, 80 ms apart (`shifted_views`). Returns [clips, views, 9, 96].

    The mel runs on `batch` windows at once, so each window is floored by its batch's loudest one
    (see `cmd_windows`): close to, not equal to, the per-clip mel of `clip-table` and the Rust
    verifier. Kept as `verifier clips` has always measured (models/RESEARCH.md rounds 8-12)."""
    from .verifier_golden import shifted_views

    first = (LONG_EMB - WINDOW_EMB) // 2 - shifts
    views = []
    for i in range(0, len(clips), batch):
        part = clips[i:i + batch]
        pad = np.zeros((len(part), LONG), np.float32)
        for k, x in enumerate(part):
            x = np.asarray(x, np.float32)[:SAMPLE_RATE]
            o = (LONG - len(x)) // 2
            pad[k, o:o + len(x)] = x
        for spec in emb.mel(pad):
            views.append(shifted_views(emb.embed_mel(spec)[first:first + WINDOW_EMB + 2 * shifts], shifts))
    if not views:
        return np.zeros((0, 2 * shifts + 1, WINDOW_EMB, EMB_DIM), np.float32)
    return np.stack(views)


def cmd_clips(a) -> None:
    import onnxruntime as ort

    from .data import load_background, load_clips
    from .evaluate import eval_sets_for
    from .verifier_golden import combine_views
    from .frontend import mfcc
    from .recipe import load_recipe

    r = load_recipe(a.config)
    bg = load_background(a.data)
    fams = set(r.holdout_families)
    engines = [e for e in r.engines if (a.data / "shards" / f"{e}.npz").exists()]
    clips = load_clips(a.data, engines).select(lambda m: m["family"] in fams)
    sets = eval_sets_for(clips, bg, r)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    m = json.loads((a.model_dir / "manifest.json").read_text())
    sess = ort.InferenceSession(str(a.model_dir / m["files"][a.variant]["path"]), so, providers=["CPUExecutionProvider"])
    emb = Embedder(find_feature_models(a.features), 1)
    verifier = m.get("verifier") or {}
    thresholds = {k: float(verifier.get("thresholds", {}).get(k, a.v)) for k in KEYWORDS}
    res = {}
    for name, (x, y) in sets.items():
        if not name.startswith("test-"):
            continue
        feats = np.stack([mfcc(w) for w in x]).astype(np.float32)
        p1 = np.concatenate([sess.run(["probs"], {"features": feats[i:i + 256]})[0] for i in range(0, len(feats), 256)])
        views = centred_views(emb, x, a.view_shifts)
        p2 = combine_views(head_file_probs(a.head, views.reshape(-1, WINDOW_EMB, EMB_DIM)).reshape(views.shape[:2] + (-1,)))
        kw = np.isin(y, KW_IDS)
        a1, a2 = p1.argmax(1), p2.argmax(1)
        res[name] = {"n_keyword": int(kw.sum()), "n": int(len(y)),
                     "tc_resnet8_keyword_acc": float((a1[kw] == y[kw]).mean()),
                     "verifier_keyword_acc": float((a2[kw] == y[kw]).mean()),
                     "both_agree_keyword_acc": float(((a1[kw] == y[kw]) & (a2[kw] == y[kw])).mean()),
                     "tc_resnet8_acc": float((a1 == y).mean()), "verifier_acc": float((a2 == y).mean()),
                     "verifier_p_of_label_on_tc_hits": float(np.median(p2[kw & (a1 == y), y[kw & (a1 == y)]]))
                     if (kw & (a1 == y)).any() else None,
                     "verifier_thresholds": thresholds,
                     "by_first_stage_keyword": acceptance_by_keyword(p1, p2, y, thresholds)}
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


def cmd_cost(a) -> None:
    import onnxruntime as ort

    emb = Embedder(find_feature_models(a.features), 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    head = ort.InferenceSession(str(a.head), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(24000) * 0.1).astype(np.float32)  # 1.5 s -> 147 mel frames -> 9 embeddings
    for _ in range(3):
        e = emb.embed(x)
    n = a.repeats
    t = {"mel": 0.0, "embedding": 0.0, "head": 0.0}
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        spec = emb.mel(x)
        t1 = time.perf_counter()
        e = emb.embed_mel(spec)
        t2 = time.perf_counter()
        head.run(None, {"embeddings": e[None, :WINDOW_EMB].astype(np.float32)})
        t3 = time.perf_counter()
        t["mel"] += t1 - t0
        t["embedding"] += t2 - t1
        t["head"] += t3 - t2
    cpu = time.process_time() - c0
    # Continuous alternative: one embedding every 80 ms of a stream (mel for 80 ms + one embedding).
    y = (rng.standard_normal(SAMPLE_RATE * 10) * 0.1).astype(np.float32)
    t0 = time.perf_counter()
    emb.embed(y)
    stream_ms_per_s = (time.perf_counter() - t0) * 1000 / 10
    out = {"embeddings_per_candidate": int(e.shape[0]), **{f"{k}_ms": round(v * 1000 / n, 2) for k, v in t.items()},
           "total_ms_per_candidate": round(sum(t.values()) * 1000 / n, 2), "cpu_ms_per_candidate": round(cpu * 1000 / n, 2),
           "continuous_ms_per_audio_s": round(stream_ms_per_s, 2), "load_avg": os.getloadavg()[0]}
    print(json.dumps(out))


def curve(path: Path, kind: str) -> list[dict]:
    """(recall, FA/h, label) points of a `cascade` JSON (kind `first`, `cascade`, `relabel`) or of a
    `streameval` JSON (kind `streameval`, overall points)."""
    d = json.loads(path.read_text())
    if kind == "streameval":
        return [{"recall": p["recall"], "fa_per_h": p["fa_per_h"], "at": f"t {p['threshold']}"} for p in d["overall"]]
    if kind == "first":
        return [{"recall": p["recall"], "fa_per_h": p["fa_per_h"], "at": f"t {p['t1']}"} for p in d["first_stage"]]
    rel = kind == "relabel"
    return [{"recall": p["recall"], "fa_per_h": p["fa_per_h"], "at": f"t1 {p['t1']} v {p['v']}"}
            for p in d["cascade"] if p["relabel"] == rel]


def best_at(points: list[dict], max_fa: float) -> dict | None:
    ok = [p for p in points if p["fa_per_h"] <= max_fa]
    return max(ok, key=lambda p: (p["recall"], -p["fa_per_h"])) if ok else None


def fa_at(points: list[dict], min_recall: float) -> dict | None:
    ok = [p for p in points if p["recall"] >= min_recall]
    return min(ok, key=lambda p: p["fa_per_h"]) if ok else None


def cmd_table(a) -> None:
    """Markdown rows: highest recall at <= each FA/h budget, lowest FA/h at >= 90 / 95 % recall."""
    budgets = [1.0, 5.0, 10.0, 20.0, 50.0]
    print("| arm | " + " | ".join(f"recall @ <= {b:g} FA/h" for b in budgets) + " | FA/h @ 90 % | FA/h @ 95 % | max recall |")
    print("|---" * (len(budgets) + 4) + "|")
    for spec in a.curves:
        name, kind, path = spec.split(":", 2)
        pts = curve(Path(path), kind)
        cells = []
        for b in budgets:
            p = best_at(pts, b)
            cells.append("-" if p is None else f"{100 * p['recall']:.1f} % ({p['fa_per_h']:.1f}; {p['at']})")
        for r in (0.9, 0.95):
            p = fa_at(pts, r)
            cells.append("not reached" if p is None else f"{p['fa_per_h']:.1f} ({p['at']})")
        m = max(pts, key=lambda p: p["recall"])
        cells.append(f"{100 * m['recall']:.1f} % ({m['fa_per_h']:.0f} FA/h)")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("unpack")
    s.add_argument("--wheel", type=Path, required=True)
    s.add_argument("--out", type=Path, default=Path("data/oww"))
    s = sub.add_parser("windows")
    s.add_argument("--data", type=Path, default=Path("data"))
    s.add_argument("--config", type=Path, default=Path("configs/research/e1-negatives.toml"))
    s.add_argument("--mined", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--count", type=int, default=2000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("train")
    s.add_argument("--windows", nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--epochs", type=int, default=60)
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--hidden", type=int, default=128)
    s.add_argument("--dropout", type=float, default=0.3)
    s.add_argument("--arch", default="mlp", choices=["mlp", "conv"])
    s.add_argument("--val-frac", type=float, default=0.0)
    s.add_argument("--jitter", type=int, default=5, help="view offset ± this many embeddings (80 ms)")
    s.add_argument("--noise", type=float, default=0.0)
    s.add_argument("--reject-weight", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("average")
    s.add_argument("--heads", nargs="+", type=Path, required=True, help="head.pt of each member")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("embed")
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--model-dir", type=Path, default=Path("../tc-resnet8"))
    s.add_argument("--variant", default="int8", choices=["fp32", "int8"])
    s.add_argument("--cache", type=Path, required=True)
    s.add_argument("--first-stage-only", action="store_true", help="no embeddings (for calibrating the first stage)")
    s = sub.add_parser("cascade")
    s.add_argument("--cache", type=Path, required=True)
    s.add_argument("--head", type=Path, required=True)
    s.add_argument("--offset-ms", type=float, default=0.0, help="verifier window centre = event time + offset")
    s.add_argument("--reject-gap-ms", type=int, default=200)
    s.add_argument("--tolerance-ms", type=int, default=500)
    fl = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    s.add_argument("--first-grid", type=fl, default=[0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999])
    s.add_argument("--t1", type=fl, default=[0.3, 0.5, 0.7, 0.9])
    s.add_argument("--v", type=fl, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999])
    s.add_argument("--relabel", action="store_true")
    s.add_argument("--candidate-rule", choices=CANDIDATE_RULES, default="best_keyword",
                   help="what the first stage compares with t1 (`candidate_scores`)")
    s.add_argument("--clip-table", type=Path, help="per-clip probabilities (`clip-table`) instead of stream embeddings")
    s.add_argument("--json", type=Path)
    s = sub.add_parser("clips")
    s.add_argument("--data", type=Path, default=Path("data"))
    s.add_argument("--config", type=Path, default=Path("configs/tc-resnet8.toml"))
    s.add_argument("--model-dir", type=Path, default=Path("../tc-resnet8"))
    s.add_argument("--variant", default="int8", choices=["fp32", "int8"])
    s.add_argument("--head", type=Path, required=True, help="head.onnx (or a training checkpoint head.pt)")
    s.add_argument("--v", type=float, default=0.3,
                   help="verifier threshold for keywords the model's manifest gives none")
    s.add_argument("--view-shifts", type=int, default=0,
                   help="the verdict is the per-class minimum over the views shifted -N..N embeddings (manifest "
                        "`verifier.view_shifts`)")
    s.add_argument("--json", type=Path)
    s = sub.add_parser("clip-table")
    s.add_argument("--cache", type=Path, required=True, help="`embed` cache (--first-stage-only is enough)")
    s.add_argument("--audio-dir", type=Path, required=True, help="directory the cache's wav paths are relative to")
    s.add_argument("--head", type=Path, required=True, help="head.onnx")
    s.add_argument("--min-t1", type=float, default=0.5, help="lowest first-stage threshold the table serves")
    s.add_argument("--candidate-rule", choices=CANDIDATE_RULES, default="best_keyword",
                   help="the rule the table serves (`keyword_mass` needs more windows than `best_keyword`)")
    s.add_argument("--offset-ms", type=float, default=0.0)
    s.add_argument("--view-shifts", type=int, default=0,
                   help="verdict = per class the minimum of the head over the views shifted -N..N embeddings (80 ms "
                        "each), cut from one clip (manifest `verifier.view_shifts`)")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("cost")
    s.add_argument("--head", type=Path, required=True, help="head.onnx")
    s.add_argument("--repeats", type=int, default=50)
    s = sub.add_parser("table")
    s.add_argument("curves", nargs="+", help="name:kind:path, kind = first | cascade | relabel | streameval")
    for s in sub.choices.values():
        if "--features" not in s._option_string_actions:
            s.add_argument("--features", type=Path, help="directory with the two feature models (default data/oww)")
    a = p.parse_args(argv)
    {"unpack": lambda: unpack(a.wheel, a.out), "windows": lambda: cmd_windows(a), "train": lambda: cmd_train(a),
     "average": lambda: cmd_average(a), "embed": lambda: cmd_embed(a), "cascade": lambda: cmd_cascade(a), "clips": lambda: cmd_clips(a),
     "cost": lambda: cmd_cost(a), "clip-table": lambda: cmd_clip_table(a), "table": lambda: cmd_table(a)}[a.cmd]()


if __name__ == "__main__":
    main()
