"""int8 quantization that gives the same answers on every CPU the product runs on.

ONNX Runtime picks its int8 GEMM kernels by CPU (see `models/src/cpu.rs`). With uint8 activations and
8-bit int8 weights (U8S8), the AVX2 and AVX-512-without-VNNI kernels add products in pairs in int16
(`vpmaddubsw`) and saturate, so the same model answers differently there than on VNNI x86 or arm64.
This module:

- quantizes a float model (static QDQ, per-channel weights, float softmax) with a chosen scheme and
  calibration method (`QuantSpec`), on a calibration set drawn from every training voice family, as
  isolated augmented windows and as windows cut from continuous streams (`calibration_windows`);
- scores the same features on each instruction-set path with the served Rust scorer
  (`examples/score_features.rs`): natively, under `qemu-x86_64 -cpu Haswell-v4` (the AVX2 path, which
  qemu's TCG emulates on any x86-64 host) and under `qemu-aarch64` (arm64 NEON); TCG has no AVX-512, so
  the VNNI path is measured natively on a VNNI host;
- `compare`: the method comparison table of `models/README.md` (accuracy per held-out set and per path,
  agreement between paths, speed);
- `apply`: re-quantizes a shipped model with the chosen spec and rewrites its int8 file, manifest
  entries and int8 golden vectors, checking that every golden smoothed score stays clear of its
  threshold on every path measured.
- `golden`: the goldens anew at the manifest's thresholds, model files unchanged (after
  `kws_train.calibrate --write-manifest` has set new streaming thresholds), checked the same way.

Usage (from models/training, training venv; the Rust example built for x86-64 and aarch64 first, see
`models/README.md` "int8 across CPUs"):
    python -m kws_train.quant compare --model-dir ../tc-resnet8 --config configs/tc-resnet8.toml
    python -m kws_train.quant apply --model-dir ../tc-resnet8 --config configs/tc-resnet8.toml
    python -m kws_train.quant golden --model-dir ../tc-resnet8 --config configs/tc-resnet8.toml [--version X]
    python -m kws_train.quant latency --model-dir ../tc-resnet8      # on an otherwise idle machine
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from . import SAMPLE_RATE, UNKNOWN
from .data import (AugmentConfig, Clips, background_window, espeak_accent, load_background, load_clips,
                   make_window)
from .frontend import NUM_MFCC, WINDOW_FRAMES, mfcc
from .recipe import Recipe, load_recipe
from .stream import DecoderConfig, windows

ROOT = Path(__file__).resolve().parents[3]
#: Largest int8 posterior difference from the goldens any path may show (models/tests/golden.rs).
GOLDEN_TOLERANCE = 2e-3


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How a float model becomes int8."""

    #: "u8s8": uint8 activations, int8 weights (8 bits); "u8s8-rr": the same with 7-bit weights
    #: (`reduce_range`), so no int16 pair sum can saturate; "u8u8": uint8 weights.
    scheme: str = "u8s8-rr"
    #: onnxruntime calibration: "minmax" or "percentile" (99.999th percentile of |x|).
    method: str = "minmax"
    #: Which ops run in int8: "all" that onnxruntime quantizes (convolutions, the linear layer and
    #: the residual additions), or "conv" (convolutions and the linear layer; the residual additions
    #: stay float). ONNX Runtime's int8 addition rounds differently on arm64 than on x86-64.
    ops: str = "all"

    @property
    def name(self) -> str:
        return f"{self.scheme}/{self.method}" + ("" if self.ops == "all" else f"/{self.ops}")

    @staticmethod
    def parse(text: str) -> "QuantSpec":
        """`scheme/method[/ops]`, e.g. `u8s8-rr/percentile/conv`."""
        parts = text.split("/")
        if not 2 <= len(parts) <= 3:
            raise ValueError(f"quantization spec {text!r}: expected scheme/method[/ops]")
        return QuantSpec(*parts)


#: The spec the shipped models use (chosen by `compare`; the table is in models/README.md).
DEFAULT_SPEC = QuantSpec("u8s8-rr", "percentile", "conv")
SCHEMES = ("u8s8", "u8s8-rr", "u8u8")
METHODS = ("minmax", "percentile")
OPS = {"all": None, "conv": ["Conv", "Gemm"]}


def quantize(fp32: Path, int8: Path, calib: np.ndarray, spec: QuantSpec = DEFAULT_SPEC) -> None:
    """Static QDQ int8 of `fp32` into `int8`: per-channel weights, softmax kept in float."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quant_pre_process, quantize_static)

    if spec.scheme not in SCHEMES or spec.method not in METHODS or spec.ops not in OPS:
        raise ValueError(f"unknown quantization spec {spec}")

    # Whole batches of 64 only: onnxruntime's histogram calibrators stack the batches' outputs.
    batches = max(1, len(calib) // 64)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i * 64:(i + 1) * 64] for i in range(batches))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"features": b}

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[spec.method]
    extra = {"CalibPercentile": 99.999} if spec.method == "percentile" else {}
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        # The softmax stays float: quantizing its output would round every posterior to 1/255 steps,
        # which the thresholds and the smoothing would see.
        keep_float = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QUInt8 if spec.scheme == "u8u8" else QuantType.QInt8,
                        per_channel=True, reduce_range=spec.scheme == "u8s8-rr",
                        calibrate_method=method, nodes_to_exclude=keep_float, extra_options=extra,
                        op_types_to_quantize=OPS[spec.ops])


def describe(spec: QuantSpec, calibration: dict) -> dict:
    """The manifest's `quantization` record of a model quantized with `spec`."""
    return {
        "format": "onnxruntime static QDQ, per-channel weights, softmax in float",
        "scheme": spec.scheme, "calibration_method": spec.method,
        "int8_ops": {"all": "convolutions, linear layer, residual additions",
                     "conv": "convolutions and the linear layer (residual additions in float)"}[spec.ops],
        "activations": "uint8",
        "weights": {"u8s8": "int8", "u8s8-rr": "int8, 7-bit range (reduce_range)", "u8u8": "uint8"}[spec.scheme],
        "calibration": calibration,
    }


# ------------------------------------------------------------------------------------------------
# Calibration data


def training_clips(clips: Clips, r: Recipe) -> Clips:
    """What the recipe trains on: its engines minus held-out families and validation accents."""
    return clips.select(lambda m: m["engine"] in r.engines and m["family"] not in r.holdout_families
                        and espeak_accent(m) not in r.val_espeak_accents)


def _stream(clips: Clips, idx: np.ndarray, bg, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Words of one family one after another (pauses of 50-600 ms) over noise/music at 5-30 dB SNR."""
    n = int(seconds * SAMPLE_RATE)
    speech = np.zeros(n, dtype=np.float32)
    at = int(rng.integers(0, SAMPLE_RATE // 2))
    while True:
        c = clips.audio[int(rng.choice(idx))] * float(10 ** (rng.uniform(-12, 0) / 20))
        if at + len(c) > n:
            break
        speech[at:at + len(c)] += c
        at += len(c) + int(rng.uniform(0.05, 0.6) * SAMPLE_RATE)
    cfg = AugmentConfig(music_noise_mix_p=0.5)
    noise = np.concatenate([background_window(bg, cfg, rng) for _ in range(int(np.ceil(seconds)))])[:n]
    level = np.sqrt(np.mean(speech ** 2) + 1e-12) / np.sqrt(np.mean(noise ** 2) + 1e-12)
    x = speech + noise * level / 10 ** (rng.uniform(5, 30) / 20)
    return np.clip(x, -1, 1).astype(np.float32)


def calibration_windows(clips: Clips, bg, r: Recipe, per_family: int = 120, stream_s_per_family: float = 24.0,
                        seed: int = 20261130) -> tuple[np.ndarray, dict]:
    """Calibration features [N, 98, 40]: for every training voice family, `per_family` isolated windows
    (keywords, unknown words and silence, augmented as in training) and windows cut every 200 ms from
    `stream_s_per_family` seconds of continuous speech of that family over noise and music."""
    rng = np.random.default_rng(seed)
    train = training_clips(clips, r)
    families = sorted({m["family"] for m in train.meta})
    feats, counts = [], {}
    for fam in families:
        idx = np.array([i for i, m in enumerate(train.meta) if m["family"] == fam])
        labels = [train.meta[i]["label"] for i in idx]
        kw = idx[[lab != UNKNOWN for lab in labels]]
        unk = idx[[lab == UNKNOWN for lab in labels]]
        n_iso = 0
        for k in range(per_family):
            kind = k % 6  # 4 keyword : 1 unknown : 1 silence
            clip = None if kind == 5 else train.audio[int(rng.choice(unk if kind == 4 and len(unk) else kw))]
            feats.append(mfcc(make_window(clip, bg, r.augment, rng)))
            n_iso += 1
        x = _stream(train, idx, bg, rng, stream_s_per_family)
        wins = windows(x, 20)  # a window every 200 ms
        feats.extend(w[2] for w in wins)
        counts[fam] = {"isolated": n_iso, "stream": len(wins)}
    desc = {"families": counts, "windows": len(feats), "seed": seed,
            "isolated_per_family": per_family, "stream_seconds_per_family": stream_s_per_family}
    return np.stack(feats).astype(np.float32), desc


# ------------------------------------------------------------------------------------------------
# Scoring on each instruction-set path


@dataclasses.dataclass(frozen=True)
class IsaPath:
    name: str
    runner: tuple[str, ...]  # command prefix (empty: native)
    binary: Path
    ort_lib: Path


def paths(repo: Path = ROOT) -> list[IsaPath]:
    """The paths this machine can run: native x86-64; on an x86-64 host also AVX2 under qemu-x86_64
    and arm64 under qemu-aarch64 with each int8 kernel family of ONNX Runtime for aarch64 (qemu's
    CPU models set the hardware-capability bits ONNX Runtime reads: `max` has i8mm, Neoverse-N1 the
    dot product only, Cortex-A53 neither)."""
    x86 = repo / "target" / "release" / "examples" / "score_features"
    arm = repo / "target" / "aarch64-unknown-linux-gnu" / "release" / "examples" / "score_features"
    lib = lambda a: repo / ".ort" / a / "libonnxruntime.so"  # noqa: E731
    out = [IsaPath("native", (), x86, lib(platform.machine()))]
    if platform.machine() == "x86_64":
        out.append(IsaPath("x86-avx2", ("qemu-x86_64", "-cpu", "Haswell-v4"), x86, lib("x86_64")))
        sysroot = ("-L", "/usr/aarch64-linux-gnu")
        for name, cpu in (("arm64-i8mm", "max"), ("arm64-dotprod", "neoverse-n1"), ("arm64-neon", "cortex-a53")):
            out.append(IsaPath(name, ("qemu-aarch64", "-cpu", cpu, *sysroot), arm, lib("aarch64")))
    return out


def score_on(path: IsaPath, model_dir: Path, variant: str, feats: np.ndarray) -> tuple[np.ndarray, str]:
    """Posteriors of `feats` from the Rust scorer on `path`, and the kernel line it printed."""
    if not path.binary.is_file():
        raise FileNotFoundError(f"{path.binary}: build it (models/README.md, 'int8 across CPUs')")
    with tempfile.TemporaryDirectory() as d:
        fin, fout = Path(d) / "x.f32", Path(d) / "p.f32"
        np.ascontiguousarray(feats, dtype="<f4").tofile(fin)
        env = dict(os.environ, KWS_ORT_LIB=str(path.ort_lib))
        r = subprocess.run([*path.runner, str(path.binary), str(model_dir), variant, str(fin), str(fout)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{path.name}: score_features failed: {r.stderr.strip()}")
        probs = np.fromfile(fout, dtype="<f4").reshape(len(feats), -1)
    kernels = [ln for ln in r.stderr.splitlines() if ln.startswith("score_features:")]
    return probs, kernels[-1] if kernels else ""


def candidate_dir(model_dir: Path, int8: Path, into: Path) -> Path:
    """A copy of `model_dir`'s manifest whose int8 file is `int8` (for the Rust scorer's sha check)."""
    into.mkdir(parents=True, exist_ok=True)
    m = json.loads((model_dir / "manifest.json").read_text())
    for variant, f in m["files"].items():
        src = int8 if variant == "int8" else model_dir / f["path"]
        shutil.copyfile(src, into / f["path"])
        data = (into / f["path"]).read_bytes()
        f["sha256"], f["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (into / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    return into


# ------------------------------------------------------------------------------------------------
# Evaluation


def eval_sets(clips: Clips, bg, r: Recipe) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The held-out clip sets of the export (held-out family, espeak validation accents, silence)."""
    from .evaluate import eval_sets_for

    out = {}
    for name, (x, y) in eval_sets_for(clips, bg, r).items():
        out[name] = (np.stack([mfcc(w) for w in x]).astype(np.float32), y)
    return out


def accuracy(probs: np.ndarray, y: np.ndarray) -> dict:
    from .evaluate import scores

    s = scores(probs, y)
    return {"keyword_acc": round(float(s["keyword_acc"]), 4) if s["keyword_acc"] == s["keyword_acc"] else None,
            "acc": round(float(s["acc"]), 4), "n": int(s["n"])}


def bench(path: Path, batch: int, seconds: float = 2.0) -> float:
    """Mean µs of CPU time per window at `batch` (onnxruntime Python, 1 intra-op thread, after
    warm-up). CPU time, not wall time: on a machine shared with other work it still measures the
    model's cost (wall time also counts the waits for a core)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(batch, WINDOW_FRAMES, NUM_MFCC)).astype(np.float32) * 5
    for _ in range(20):
        sess.run(["probs"], {"features": x})
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        sess.run(["probs"], {"features": x})
        n += 1
    return (time.process_time() - t0) / n / batch * 1e6


def latency(path: Path, rounds: int = 3) -> dict:
    """µs per window at batch 1 and per item at batch 64: the best of `rounds` 2-s measurements (the
    least disturbed by other work on the machine)."""
    return {"batch1_us": round(min(bench(path, 1) for _ in range(rounds)), 1),
            "batch64_per_item_us": round(min(bench(path, 64) for _ in range(rounds)), 1)}


def relatency(a) -> None:
    """Measure the latency of both variants of a model again and write it into its manifest."""
    m = json.loads((a.model_dir / "manifest.json").read_text())
    for variant, f in m["files"].items():
        m["metrics"]["latency"][variant] = latency(a.model_dir / f["path"])
    (a.model_dir / "manifest.json").write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(json.dumps(m["metrics"]["latency"]))


def _load(a) -> tuple[Recipe, Clips, dict]:
    r = load_recipe(a.config)
    engines = sorted(p.stem for p in (a.data / "shards").glob("*.jsonl"))
    return r, load_clips(a.data, engines), load_background(a.data)


def evaluate_paths(model_dir: Path, variant: str, sets: dict, isa: list[IsaPath]) -> tuple[dict, dict, dict]:
    """Accuracy per set and path, the largest posterior difference of each path from the first, and
    the kernel line each path printed."""
    allx = np.concatenate([x for x, _ in sets.values()])
    probs, kernels = {}, {}
    for p in isa:
        probs[p.name], kernels[p.name] = score_on(p, model_dir, variant, allx)
    acc, off = {}, 0
    for name, (x, y) in sets.items():
        acc[name] = {p: accuracy(probs[p][off:off + len(x)], y) for p in probs}
        off += len(x)
    ref = probs[isa[0].name]
    diff = {p: float(np.abs(v - ref).max()) for p, v in probs.items()}
    return acc, diff, kernels


def compare(a) -> None:
    r, clips, bg = _load(a)
    sets = eval_sets(clips, bg, r)
    calib, desc = calibration_windows(clips, bg, r)
    print(f"calibration: {desc['windows']} windows from {len(desc['families'])} families", flush=True)
    isa = [p for p in paths() if p.name in a.paths]
    specs = [QuantSpec.parse(x) for x in a.specs]
    report = {"model": a.model_dir.name, "calibration": desc, "paths": [p.name for p in isa], "rows": []}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = [("fp32", a.model_dir, "fp32", None), ("int8 as shipped", a.model_dir, "int8", a.model_dir / "model.int8.onnx")]
        for s in specs:
            tag = s.name.replace("/", "-")
            q = d / f"{tag}.onnx"
            quantize(a.model_dir / "model.onnx", q, calib, s)
            rows.append((s.name, candidate_dir(a.model_dir, q, d / f"dir-{tag}"), "int8", q))
        for name, mdir, variant, file in rows:
            # fp32 runs natively only: its paths agree within 3e-7 (isa_parity) and emulated fp32 is
            # slow (minutes per path under qemu's TCG).
            acc, diff, kernels = evaluate_paths(mdir, variant, sets, isa if variant == "int8" else isa[:1])
            row = {"spec": name, "accuracy": acc, "max_abs_diff_vs_native": diff, "kernels": kernels}
            if file is not None and a.bench:
                row["us_per_window"] = {"batch1": round(bench(file, 1), 1), "batch64": round(bench(file, 64), 1)}
            elif a.bench:
                row["us_per_window"] = {"batch1": round(bench(mdir / "model.onnx", 1), 1),
                                        "batch64": round(bench(mdir / "model.onnx", 64), 1)}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
    out = a.out or Path("runs") / f"quant-{a.model_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(markdown(report))


def markdown(report: dict) -> str:
    """The comparison as a Markdown table: keyword accuracy on each held-out set, per path."""
    sets = [s for s in report["rows"][0]["accuracy"] if s != "silence-mix"] + ["silence-mix"]
    head = ["spec"] + [f"{s} {p}" for s in sets for p in report["paths"]] + ["max Δp vs native", "µs b1 / b64"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["spec"]]
        for s in sets:
            for p in report["paths"]:
                a = row["accuracy"][s].get(p)
                v = None if a is None else a["keyword_acc"] if a["keyword_acc"] is not None else a["acc"]
                cells.append("" if v is None else f"{100 * v:.1f}")
        cells.append(", ".join(f"{p} {v:.1e}" for p, v in row["max_abs_diff_vs_native"].items() if p != "native"))
        us = row.get("us_per_window")
        cells.append(f"{us['batch1']} / {us['batch64']}" if us else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Apply to a shipped model


def read_wav(path: Path) -> np.ndarray:
    """A 16-kHz mono s16 WAV as float32 in [-1, 1) (value / 32768)."""
    import wave

    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2), path
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def regolden(mdir: Path, clips, bg, r, thresholds: dict[str, float]) -> tuple[dict, dict]:
    """Goldens anew (as the export writes them) at `thresholds`, with a stream whose smoothed scores stay
    clear of the thresholds on every path this machine can run; then how far each path is from the
    goldens (clips and stream). Exits if a path is further than GOLDEN_TOLERANCE."""
    from .export import session, write_golden

    fp32, int8 = session(mdir / "model.onnx"), session(mdir / "model.int8.onnx")
    run = lambda f: np.concatenate([int8.run(["probs"], {"features": f[i:i + 256]})[0]  # noqa: E731
                                    for i in range(0, len(f), 256)])
    available = [p for p in paths() if p.binary.is_file()]
    if len(available) < len(paths()):
        print("warning: goldens checked on " + ", ".join(p.name for p in available) + " only (score_features "
              "not built for every path: models/README.md, 'int8 across CPUs')", flush=True)
    others = [p for p in available if p.name != "native"]
    held_out = clips.select(lambda x: x["family"] in r.holdout_families)
    # The manifest's decoder (smoothing, refractory): the goldens are the events the crate gives.
    d = json.loads((mdir / "manifest.json").read_text()).get("decoder", {})
    dec = DecoderConfig(**{k: d[k] for k in ("smoothing_ms", "refractory_ms") if k in d})
    stream = write_golden(mdir, held_out if len(held_out) else clips, bg, fp32, int8, thresholds, dec,
                          other_paths=(lambda f: {p.name: score_on(p, mdir, "int8", f)[0] for p in others})
                          if others else None,
                          other_tolerance=GOLDEN_TOLERANCE, attempts=200)
    print(f"golden stream events int8: {stream['events_int8']}", flush=True)
    g = json.loads((mdir / "golden" / "golden.json").read_text())
    feats = np.concatenate([np.stack([np.array(c["features"], np.float32).reshape(c["features_shape"])
                                      for c in g["clips"]]),
                            np.stack([w[2] for w in windows(read_wav(mdir / "golden" / "stream.wav"),
                                                            g["stream"]["hop_frames"])]).astype(np.float32)])
    want = run(feats)
    cross = {}
    n_clips = len(g["clips"])
    for p in available:
        got, line = score_on(p, mdir, "int8", feats)
        print(f"{p.name}: clips max |Δ| {np.abs(got - want)[:n_clips].max():.3g}, "
              f"stream max |Δ| {np.abs(got - want)[n_clips:].max():.3g}", flush=True)
        cross[p.name] = {"int8_kernels": line.split(" int8 kernels ")[-1].split(" ")[0] if line else "",
                         "max_abs_diff_vs_golden": float(np.abs(got - want).max())}
    print(f"paths vs golden: {cross}", flush=True)
    worst = max([0.0] + [v["max_abs_diff_vs_golden"] for v in cross.values()])
    if worst > GOLDEN_TOLERANCE:
        raise SystemExit(f"int8 goldens differ by {worst} on some path (tolerance {GOLDEN_TOLERANCE}): {cross}")
    return stream, cross


def golden(a) -> None:
    """Goldens anew at the manifest's thresholds (after `calibrate --write-manifest`), model files unchanged."""
    r, clips, bg = _load(a)
    mdir = a.model_dir
    m = json.loads((mdir / "manifest.json").read_text())
    stream, cross = regolden(mdir, clips, bg, r, m["thresholds"])
    m = json.loads((mdir / "manifest.json").read_text())
    q = m.setdefault("quantization", {})
    q.pop("golden_min_margin_to_threshold", None)
    q["golden_min_logit_margin_to_threshold"] = stream["min_logit_margin_to_threshold"]
    q["paths"] = cross
    if a.version:
        m["version"] = a.version
    (mdir / "manifest.json").write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def apply(a) -> None:
    from .export import session

    r, clips, bg = _load(a)
    spec = a.spec
    mdir = a.model_dir
    calib, desc = calibration_windows(clips, bg, r)
    int8_path = mdir / "model.int8.onnx"
    quantize(mdir / "model.onnx", int8_path, calib, spec)
    m = json.loads((mdir / "manifest.json").read_text())
    data = int8_path.read_bytes()
    m["files"]["int8"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if a.version:
        m["version"] = a.version
    (mdir / "manifest.json").write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")

    fp32, int8 = session(mdir / "model.onnx"), session(int8_path)
    run = lambda f: np.concatenate([int8.run(["probs"], {"features": f[i:i + 256]})[0]  # noqa: E731
                                    for i in range(0, len(f), 256)])
    stream, cross = regolden(mdir, clips, bg, r, m["thresholds"])

    # Manifest: int8 metrics, quantization record.
    sets = eval_sets(clips, bg, r)
    acc = m["metrics"]["accuracy"]
    for name, (xs, y) in sets.items():
        if name in acc:
            acc[name]["int8"] = accuracy(run(xs), y)
    m["metrics"]["latency"]["int8"] = latency(int8_path)
    m["quantization"] = {
        **describe(spec, desc),
        "golden_min_logit_margin_to_threshold": stream["min_logit_margin_to_threshold"],
        "paths": cross,
        "command": f"python -m kws_train.quant apply --model-dir {mdir} --config {a.config}"
                   + (f" --version {a.version}" if a.version else ""),
    }
    (mdir / "manifest.json").write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(json.dumps({"accuracy_int8": {k: v["int8"] for k, v in acc.items()},
                      "latency_int8": m["metrics"]["latency"]["int8"]}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("latency", help="re-measure both variants' latency into the manifest")
    s.add_argument("--model-dir", type=Path, required=True)
    for name in ("compare", "apply", "golden"):
        s = sub.add_parser(name)
        s.add_argument("--model-dir", type=Path, required=True)
        s.add_argument("--config", type=Path, required=True, help="the model's training recipe")
        s.add_argument("--data", type=Path, default=Path("data"))
        if name == "compare":
            s.add_argument("--specs", nargs="+", default=[f"{x}/{m}" for x in SCHEMES for m in METHODS],
                           help="scheme/method[/ops], e.g. u8s8-rr/percentile/conv")
            s.add_argument("--paths", nargs="+", default=[p.name for p in paths()])
            s.add_argument("--no-bench", dest="bench", action="store_false")
            s.add_argument("--out", type=Path)
        else:
            if name == "apply":
                s.add_argument("--spec", type=QuantSpec.parse, default=DEFAULT_SPEC,
                               help=f"scheme/method[/ops] (default {DEFAULT_SPEC.name})")
            s.add_argument("--version", help="new model version for the manifest (default: unchanged)")
    a = p.parse_args(argv)
    {"compare": compare, "apply": apply, "golden": golden, "latency": relatency}[a.cmd](a)


if __name__ == "__main__":
    main()
