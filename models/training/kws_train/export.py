"""Export a trained run: ONNX fp32 (BN folded) + int8 QDQ, verification, benchmarks, manifest, goldens.

Usage: python -m kws_train.export --run runs/NAME --data data --model-dir ../tc-resnet8 --version 1.0.0

Writes into --model-dir: model.onnx, model.int8.onnx, manifest.json, golden/ (WAVs + golden.json).
int8 is quantized by `kws_train.quant` (the same answers on every CPU; build its `score_features`
helpers first so the goldens are checked on the emulated AVX2 and arm64 paths too).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import CLASSES, KEYWORDS, SAMPLE_RATE, UNKNOWN
from .data import load_background, load_clips, make_window
from .evaluate import eval_sets_for, format_confusion, scores
from .frontend import FRONTEND_PARAMS, NUM_MFCC, WINDOW_FRAMES, TorchFrontend, mfcc
from .model import TCResNet, Exported, count_flops, count_params
from .quant import DEFAULT_SPEC, calibration_windows, quantize, score_on
from .quant import describe as describe_quantization
from .quant import latency as latency_of
from .quant import paths as isa_paths
from .recipe import Recipe
from .stream import DecoderConfig, decode, smoothed, windows
from .synth import write_wav
from .train import BatchSampler, split_train

OPSET = 17
#: Smallest distance between a golden smoothed score and its threshold, in logit units (see
#: write_golden): 0.05 is ~0.01 in probability at a threshold of 0.3-0.7, and stays meaningful for the
#: streaming thresholds near 1 (0.9998 is 8.5 in logits), where a margin in probability cannot exist.
GOLDEN_MARGIN = 0.05


def logit_margin(sm: np.ndarray, th: np.ndarray) -> float:
    """Smallest |logit(score) - logit(threshold)| over windows and keywords (probabilities clipped to
    [1e-7, 1 - 1e-7], the float32 resolution near 1)."""
    lg = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    s = np.clip(np.asarray(sm, np.float64), 1e-7, 1 - 1e-7)
    t = np.clip(np.asarray(th, np.float64), 1e-7, 1 - 1e-7)
    return float(np.abs(lg(s) - lg(t)).min())


def fold_bn(net: TCResNet) -> TCResNet:
    """Fold every BatchNorm1d into the conv before it (eval statistics), so the graph has no BN."""
    net = copy.deepcopy(net).eval()

    def fold(seq: nn.Sequential) -> None:
        conv, bn = seq[0], seq[1]
        seq[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        seq[1] = nn.Identity()

    for m in list(net.modules()):
        if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.Conv1d) \
                and isinstance(m[1], nn.BatchNorm1d):
            fold(m)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    return net


def export_onnx(net: TCResNet, path: Path) -> None:
    model = Exported(net).eval()
    torch.onnx.export(model, (torch.zeros(1, WINDOW_FRAMES, NUM_MFCC),), str(path), opset_version=OPSET,
                      input_names=["features"], output_names=["probs"], dynamo=False,
                      dynamic_axes={"features": {0: "N"}, "probs": {0: "N"}}, do_constant_folding=True)


def session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(sess, feats: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([sess.run(["probs"], {"features": feats[i:i + batch]})[0]
                           for i in range(0, len(feats), batch)])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibrate_thresholds(probs: np.ndarray, y: np.ndarray, max_fpr: float = 0.005) -> dict[str, float]:
    """Per keyword: the lowest threshold whose false-positive rate on the validation negatives (every
    window not of that keyword) is <= max_fpr, clamped to [0.3, 0.95] and rounded to 0.05."""
    out = {}
    for i, kw in enumerate(KEYWORDS):
        neg = np.sort(probs[y != i, i])[::-1]
        k = int(np.floor(max_fpr * len(neg)))
        th = float(neg[k]) + 1e-6 if k < len(neg) else 0.0
        out[kw] = float(np.clip(np.ceil(th * 20) / 20, 0.3, 0.95))
    return out


def quantize_f32(x: np.ndarray) -> np.ndarray:
    """Round-trip through int16, as the golden WAV stores it."""
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16).astype(np.float32) / 32768.0


def golden_stream(clips, bg, rng) -> tuple[np.ndarray, list[dict]]:
    """~5.5 s: three keywords and an unknown word from held-out voices over low pink noise + music."""
    n = int(5.5 * SAMPLE_RATE)
    x = 0.01 * bg["pinknoise"][:n] + 0.02 * bg["macroform-cold_day"][SAMPLE_RATE * 30:SAMPLE_RATE * 30 + n]
    labels = []
    for word, at in (("yes", 0.9), ("stop", 2.4), (UNKNOWN, 3.5), ("left", 4.6)):
        idx = [i for i, m in enumerate(clips.meta) if m["label"] == word]
        i = idx[int(rng.integers(len(idx)))]
        c = clips.audio[i] * 0.8
        s = int(at * SAMPLE_RATE - len(c) / 2)
        x[s:s + len(c)] += c
        labels.append({"label": word, "word": clips.meta[i]["word"], "engine": clips.meta[i]["engine"],
                       "start_ms": s * 1000 // SAMPLE_RATE, "end_ms": (s + len(c)) * 1000 // SAMPLE_RATE})
    return quantize_f32(x), labels


def f32list(a) -> list:
    """float32 values as JSON numbers that round-trip exactly (9 significant digits)."""
    return [float(f"{v:.9g}") for v in np.asarray(a, dtype=np.float32).ravel()]


def write_golden(model_dir: Path, clips, bg, fp32, int8, thresholds, dec: DecoderConfig,
                 other_paths=None, other_tolerance: float = 2e-3, attempts: int = 50) -> dict:
    """Write golden/ (clip WAVs, features, posteriors; the golden stream with traces and events).

    `other_paths`, if given, maps stream features [N, 98, 40] to {path name: int8 posteriors} on the
    other instruction-set paths (`quant.paths`): the stream must keep its margin there too, give the
    same events, and no posterior may differ from the native int8 one by more than `other_tolerance`."""
    gdir = model_dir / "golden"
    if gdir.exists():
        shutil.rmtree(gdir)
    gdir.mkdir(parents=True)
    rng = np.random.default_rng(7)
    from .data import AugmentConfig
    cfg = AugmentConfig(shift_ms=50, gain_db=(-6, 0), background_p=1.0, background_mode="snr",
                        snr_db=(15, 25), music_noise_mix_p=0.5)
    items = []
    for word in ("yes", "no", "stop", "go", UNKNOWN):
        idx = [i for i, m in enumerate(clips.meta) if m["label"] == word]
        items.append((word, make_window(clips.audio[idx[int(rng.integers(len(idx)))]], bg, cfg, rng)))
    items.append(("_silence_", np.zeros(SAMPLE_RATE, dtype=np.float32)))
    items.append(("_silence_", make_window(None, bg, cfg, rng)))
    golden = {"clips": [], "sample_rate": SAMPLE_RATE}
    for k, (label, x) in enumerate(items):
        x = quantize_f32(x)
        name = f"{k:02d}-{label.strip('_')}.wav"
        write_wav(gdir / name, x)
        f = mfcc(x)
        golden["clips"].append({"wav": name, "label": label, "features": f32list(f),
                                "features_shape": list(f.shape),
                                "probs_fp32": f32list(run_onnx(fp32, f[None])[0]),
                                "probs_int8": f32list(run_onnx(int8, f[None])[0])})
    # The golden stream must not sit on a knife's edge: a smoothed score within MARGIN of a threshold
    # could flip an event on another CPU (int8 kernels differ across ISAs). Try seeds until every
    # smoothed keyword score of both variants is at least MARGIN away from its threshold (in logits).
    th = np.array([thresholds[k] for k in KEYWORDS], dtype=np.float32)
    for attempt in range(attempts):
        x, labels = golden_stream(clips, bg, np.random.default_rng(1000 + attempt))
        wins = windows(x, dec.hop_frames)
        feats = np.stack([w[2] for w in wins])
        traces = {}
        for kind, sess in (("fp32", fp32), ("int8", int8)):
            probs = run_onnx(sess, feats)
            traces[kind] = [(s, e, p) for (s, e, _), p in zip(wins, probs)]
        margin = min(logit_margin(smoothed(t, dec)[:, :len(KEYWORDS)], th[None, :]) for t in traces.values())
        n_events = min(len(decode(t, thresholds, dec)) for t in traces.values())
        if margin >= GOLDEN_MARGIN and n_events >= 2 and other_paths is not None:
            # Only now the slow part: the other paths run under emulation.
            other_probs = other_paths(feats)
            other = [[(s, e, p) for (s, e, _), p in zip(wins, probs)] for probs in other_probs.values()]
            margin = min([margin] + [logit_margin(smoothed(t, dec)[:, :len(KEYWORDS)], th[None, :]) for t in other])
            key = lambda t: [(e.keyword, e.start_ms, e.end_ms) for e in decode(t, thresholds, dec)]  # noqa: E731
            if any(key(t) != key(traces["int8"]) for t in other):
                margin = 0.0
            # And no window where a path rounds differently by more than the tests allow.
            native = np.stack([p for _, _, p in traces["int8"]])
            if any(np.abs(p - native).max() > other_tolerance for p in other_probs.values()):
                margin = 0.0
        if margin >= GOLDEN_MARGIN and n_events >= 2:
            break
    else:
        raise RuntimeError(f"no golden stream with a safe margin to the thresholds in {attempts} attempts")
    write_wav(gdir / "stream.wav", x)
    stream = {"wav": "stream.wav", "labels": labels, "hop_frames": dec.hop_frames,
              "decoder": {"smoothing_ms": dec.smoothing_ms, "refractory_ms": dec.refractory_ms},
              "thresholds": thresholds, "min_logit_margin_to_threshold": round(margin, 4)}
    for kind, trace in traces.items():
        stream[f"trace_{kind}"] = [{"start_ms": s, "end_ms": e, "probs": f32list(p)} for s, e, p in trace]
        stream[f"events_{kind}"] = [e.__dict__ for e in decode(trace, thresholds, dec)]
    golden["stream"] = stream
    (gdir / "golden.json").write_text(json.dumps(golden), encoding="utf-8")
    return stream


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--name", help="model name (default: the model dir's name)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--command", default="", help="the command that trained the run (for the manifest)")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    r = load_recipe_from_json(a.run / "recipe.json")
    name = a.name or a.model_dir.name
    net = TCResNet(r.arch, num_classes=len(CLASSES), dropout=r.dropout, cmn=r.cmn)
    net.load_state_dict(torch.load(a.run / "model.pt", weights_only=True))
    net.eval()
    folded = fold_bn(net)
    a.model_dir.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = a.model_dir / "model.onnx", a.model_dir / "model.int8.onnx"
    export_onnx(folded, fp32_path)

    # Verify against PyTorch (unfolded net) at N = 1 and N = 64.
    fp32 = session(fp32_path)
    rng = np.random.default_rng(1)
    engines = sorted(p.stem for p in (a.data / "shards").glob("*.jsonl"))
    clips = load_clips(a.data, engines)
    bg = load_background(a.data)
    train_clips = split_train(clips, r, np.random.default_rng(r.seed))
    sampler = BatchSampler(train_clips, bg, r, rng)
    fe = TorchFrontend()
    check = []
    for _ in range(2):
        xb, _ = sampler()
        check.append(fe(torch.from_numpy(xb)).numpy())
    check = np.concatenate(check)
    max_diff = {}
    for n in (1, 64):
        with torch.no_grad():
            ref = Exported(net)(torch.from_numpy(check[:n])).numpy()
        got = fp32.run(["probs"], {"features": check[:n]})[0]
        max_diff[f"N={n}"] = float(np.abs(ref - got).max())
    assert all(v <= 1e-5 for v in max_diff.values()), f"ONNX vs PyTorch differ: {max_diff}"
    print(f"onnx fp32 vs pytorch max |diff|: {max_diff}", flush=True)

    # int8 the same on every CPU (kws_train.quant): 7-bit weights, float residual additions,
    # calibrated on isolated and streamed windows of every training voice family.
    calib, calib_desc = calibration_windows(clips, bg, r)
    quantize(fp32_path, int8_path, calib, DEFAULT_SPEC)
    int8 = session(int8_path)

    # Accuracy of both on the validation and held-out sets (reference numpy frontend).
    sets = eval_sets_for(clips, bg, r)
    metrics, val_probs = {}, None
    for set_name, (x, y) in sets.items():
        feats = np.stack([mfcc(w) for w in x]).astype(np.float32)
        p32, p8 = run_onnx(fp32, feats), run_onnx(int8, feats)
        metrics[set_name] = {"fp32": scores(p32, y), "int8": scores(p8, y)}
        if set_name == "val-espeak-accents":
            val_probs = (p32, y)
        print(f"{set_name}: fp32 kw {metrics[set_name]['fp32']['keyword_acc']:.4f} "
              f"all {metrics[set_name]['fp32']['acc']:.4f} | int8 kw "
              f"{metrics[set_name]['int8']['keyword_acc']:.4f} all {metrics[set_name]['int8']['acc']:.4f}",
              flush=True)
    thresholds = calibrate_thresholds(*val_probs)

    latency = {}
    for kind, path in (("fp32", fp32_path), ("int8", int8_path)):
        latency[kind] = latency_of(path)
    print(f"latency: {latency}", flush=True)

    dec = DecoderConfig()
    held_out = clips.select(lambda m: m["family"] in r.holdout_families)
    # The goldens must hold on every instruction-set path this machine can emulate; the manifest
    # sha256 must name the new files before the Rust scorer on those paths will load them.
    others = [p for p in isa_paths()[1:] if p.binary.is_file()]
    if not (a.model_dir / "manifest.json").exists():
        others = []  # the Rust scorer needs a manifest: a first export checks the native path only
    if len(others) < len(isa_paths()) - 1:
        print("warning: the golden stream is checked on fewer instruction-set paths than this machine "
              "can run (a first export, or score_features not built: models/README.md, 'int8 across "
              "CPUs'); run `python -m kws_train.quant apply` afterwards", flush=True)
    _write_files_entry(a.model_dir, fp32_path, int8_path)
    stream = write_golden(a.model_dir, held_out if len(held_out) else clips, bg, fp32, int8, thresholds, dec,
                          other_paths=(lambda f: {p.name: score_on(p, a.model_dir, "int8", f)[0] for p in others})
                          if others else None)
    print(f"golden stream events fp32: {stream['events_fp32']}", flush=True)

    manifest = {
        "name": name, "version": a.version, "arch": r.arch,
        "classes": CLASSES, "keywords": KEYWORDS,
        "input": {"name": "features", "shape": [-1, WINDOW_FRAMES, NUM_MFCC], "dtype": "float32"},
        "output": {"name": "probs", "shape": [-1, len(CLASSES)], "dtype": "float32", "activation": "softmax"},
        "frontend": FRONTEND_PARAMS,
        "window": {"frames": WINDOW_FRAMES, "samples": SAMPLE_RATE, "default_hop_frames": dec.hop_frames},
        "decoder": {"smoothing_ms": dec.smoothing_ms, "refractory_ms": dec.refractory_ms},
        "thresholds": thresholds,
        "quantization": describe_quantization(DEFAULT_SPEC, calib_desc),
        "params": count_params(net), "flops": count_flops(net),
        "files": {kind: {"path": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
                  for kind, path in (("fp32", fp32_path), ("int8", int8_path))},
        "training": {"recipe": r.name, "holdout_families": r.holdout_families,
                     "val_espeak_accents": r.val_espeak_accents, "steps": r.steps, "seed": r.seed,
                     "train_seconds": json.loads((a.run / "metrics.json").read_text()).get("train_seconds"),
                     "command": a.command},
        "metrics": {
            "command": f"python -m kws_train.export --run {a.run} --model-dir {a.model_dir}",
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, onnxruntime "
                       f"{__import__('onnxruntime').__version__}, 1 intra-op thread",
            "onnx_vs_pytorch_max_abs_diff": max_diff,
            "accuracy": {s: {k: {"keyword_acc": _num(v[k]["keyword_acc"]), "acc": _num(v[k]["acc"]),
                                 "n": v[k]["n"]} for k in ("fp32", "int8")} for s, v in metrics.items()},
            "latency": latency,
        },
    }
    (a.model_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n",
                                               encoding="utf-8")
    report = {s: {k: {"confusion": v[k]["confusion"], "recall": v[k]["recall"]} for k in ("fp32", "int8")}
              for s, v in metrics.items()}
    (a.run / "export_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    for s, v in metrics.items():
        print(f"\n{s} (fp32) confusion:\n{format_confusion(v['fp32']['confusion'])}")


def _write_files_entry(model_dir: Path, fp32_path: Path, int8_path: Path) -> None:
    """Point an existing manifest's `files` at the new model files (sha256, size), if there is one."""
    path = model_dir / "manifest.json"
    if not path.exists():
        return
    m = json.loads(path.read_text())
    for kind, f in (("fp32", fp32_path), ("int8", int8_path)):
        m.setdefault("files", {})[kind] = {"path": f.name, "sha256": sha256(f), "bytes": f.stat().st_size}
    path.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def _num(v: float) -> float | None:
    """A metric for JSON: rounded, or null when undefined (e.g. keyword accuracy of a silence-only set)."""
    return None if v != v else round(float(v), 4)


def load_recipe_from_json(path: Path) -> Recipe:
    from .data import AugmentConfig

    d = json.loads(path.read_text())
    aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("augment").items()}
    d["lr_boundaries"] = tuple(d["lr_boundaries"])
    return Recipe(augment=AugmentConfig(**aug), **d)


if __name__ == "__main__":
    main()
