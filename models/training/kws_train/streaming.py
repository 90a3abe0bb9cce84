"""Streaming form of a valid-convolution TC-ResNet (`model.STREAM_ARCHS`) with external state.

A streaming call takes the next `hop` MFCC frames `[N, hop, 40]` and one state tensor per layer
`[N, columns, C]`, and returns the window's probabilities `[N, 12]` (the window of 98 frames ending
at the hop's last frame) and the new states. States are plain model inputs/outputs, so streams batch
by concatenating their states on the batch dimension, and the runtime needs no per-architecture code:
the manifest's `streaming.states` lists every tensor (name, output name, shape per stream).

# Strides
The network's total stride is D = 8 frames. Its windows every `hop` frames (hop = 2, the service's
20-ms hop) put the strided layers on up to D / hop phase grids. Each layer is computed on the grid
`g = min(nominal spacing, hop)` ("polyphase": for hop 2 every layer after the first stride computes
one column per hop, its taps dilated by nominal spacing / g), so the streaming posteriors are the
windowed model's on exactly the same windows. With hop = D the graph is the strided network itself.

# State of one layer
States are time-major `[N, T, C]`. A conv with kernel k, dilation d and stride s on its computed
grid keeps the last `(k - 1) d + 1 - s` input columns (the new ones of a hop end exactly at an output column: all grids end at the hop's last
frame). A block's shortcut reads the new input columns at the output's end positions: no state. The
pooling keeps the last `(pool - 1) D / g` final columns.

# Warm-up
States start at zero. The stream is fed `lead = (-98) mod hop` zero frames first, so that a hop ends
at frame 97; the probabilities of call `i` (0-based) are the window ending at frame
`hop (i + 1) - lead - 1`, valid from call `(98 + lead) / hop - 1` on. Earlier calls see the zero
states and are not windows.

Usage (from models/training, training venv, after `kws_train.export` wrote the windowed model):
    python -m kws_train.streaming export --run runs/NAME --model-dir ../tc-resnet8-stream --hop 2
    python -m kws_train.streaming check --model-dir ../tc-resnet8-stream
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .frontend import NUM_MFCC, WINDOW_FRAMES

STREAM_FILES = {"fp32": "model.stream.onnx", "int8": "model.stream.int8.onnx"}


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """One convolution of the streaming graph on its computed grid."""
    name: str
    cin: int
    kernel: int
    dilation: int
    stride: int

    @property
    def state_columns(self) -> int:
        return (self.kernel - 1) * self.dilation + 1 - self.stride


def plan(channels: tuple[int, ...], stem_kernel: int, kernel: int, pool: int, hop: int,
         num_mfcc: int = NUM_MFCC) -> tuple[list[ConvPlan], tuple[int, int]]:
    """The convs (stem, then conv1/conv2 per block) on their grids, and the pooling state
    (channels, columns). `hop` must divide the total stride or be a multiple of it."""
    total = 2 ** sum(a != b for a, b in zip(channels[:-1], channels[1:]))
    if not (total % hop == 0 or hop % total == 0):
        raise ValueError(f"hop {hop} neither divides nor is a multiple of the total stride {total}")
    convs = [ConvPlan("stem", num_mfcc, stem_kernel, 1, 1)]
    nominal, grid = 1, 1  # spacing (frames) of the current layer's nominal and computed columns
    for i, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        s = 1 if a == b else 2
        out_nominal = nominal * s
        out_grid = min(out_nominal, hop)
        convs.append(ConvPlan(f"b{i + 1}_conv1", a, kernel, nominal // grid, out_grid // grid))
        convs.append(ConvPlan(f"b{i + 1}_conv2", b, kernel, out_nominal // out_grid, 1))
        nominal, grid = out_nominal, out_grid
    if pool < 2:
        raise ValueError("pool must be >= 2 (one final column needs no pooling state; not supported)")
    return convs, (channels[-1], (pool - 1) * nominal // grid)


def lead_frames(hop: int) -> int:
    return (-WINDOW_FRAMES) % hop


def first_valid_call(hop: int) -> int:
    return (WINDOW_FRAMES + lead_frames(hop)) // hop - 1


def state_specs(channels, stem_kernel, kernel, pool, hop) -> list[dict]:
    """The manifest's `streaming.states`: input name, output name, shape per stream `[-1, T, C]`
    (time-major: the last T columns of a layer's input, oldest first)."""
    convs, (pc, pt) = plan(channels, stem_kernel, kernel, pool, hop)
    out = [{"name": f"state_{c.name}", "output": f"state_{c.name}_out", "shape": [-1, c.state_columns, c.cin],
            "dtype": "float32"} for c in convs]
    out.append({"name": "state_pool", "output": "state_pool_out", "shape": [-1, pt, pc], "dtype": "float32"})
    return out


def build(folded, hop: int):
    """The streaming torch module of a BN-folded streamable TCResNet (torch imported lazily: the tests
    of the exported files run without torch).

    Time-major throughout (`[N, T, C]`, as the frames arrive). A hop computes only 1-8 output
    columns per layer, so each conv is written as its im2col: one Gather of the taps of every new
    output column from `concat(state, new columns)`, then one MatMul with the weights `[K * Cin,
    Cout]`. ONNX Runtime runs a MatMul over the whole batch as one GEMM (`N * columns` rows), where a
    Conv would run one tiny GEMM per stream."""
    import torch
    from torch import nn

    spec = folded.spec
    convs, (_, pool_cols) = plan(spec.channels, spec.stem_kernel, spec.kernel, spec.pool, hop)
    total = spec.total_stride()
    final_grid = min(total, hop)

    class Im2colConv(nn.Module):
        def __init__(self, conv, p: ConvPlan, new_in: int):
            super().__init__()
            self.p = p
            cout, cin, k = conv.weight.shape
            # W[o, c, k] -> rows (k, c): matches the gathered [N, n_out, K, Cin] flattened.
            self.register_buffer("w", conv.weight.detach().permute(2, 1, 0).reshape(k * cin, cout).contiguous())
            self.register_buffer("b", conv.bias.detach().clone())
            self.n_out = (new_in - p.stride) // p.stride + 1
            span = p.state_columns + new_in
            idx = [j * p.stride + t * p.dilation for j in range(self.n_out) for t in range(p.kernel)]
            # The last output's last tap is the last column: every grid ends at the hop's end.
            assert idx[-1] == span - 1, (p, new_in, idx[-1], span)
            self.register_buffer("idx", torch.tensor(idx, dtype=torch.long))

        def forward(self, x, state):
            full = torch.cat([state, x], dim=1)
            taps = full.index_select(1, self.idx)  # [N, n_out * K, Cin]
            cols = taps.reshape(taps.shape[0], self.n_out, self.p.kernel * taps.shape[2])
            # Static (negative) slice bounds, so the exported graph's state shapes are static too.
            return torch.matmul(cols, self.w) + self.b, full[:, -self.p.state_columns:]

    class Pointwise(nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.register_buffer("w", conv.weight.detach()[:, :, 0].t().contiguous())
            self.register_buffer("b", conv.bias.detach().clone())

        def forward(self, x):
            return torch.matmul(x, self.w) + self.b

    class Streaming(nn.Module):
        def __init__(self):
            super().__init__()
            layers, shortcuts, strides = [], [], []
            new_in = hop
            layers.append(Im2colConv(folded.stem[0][0], convs[0], new_in))
            for i, blk in enumerate(folded.blocks):
                c1 = Im2colConv(blk.conv1[0], convs[1 + 2 * i], layers[-1].n_out)
                c2 = Im2colConv(blk.conv2[0], convs[2 + 2 * i], c1.n_out)
                layers += [c1, c2]
                shortcuts.append(None if blk.shortcut is None else Pointwise(blk.shortcut[0][0]))
                strides.append(convs[1 + 2 * i].stride)
            self.layers = nn.ModuleList(layers)
            self.shortcuts = nn.ModuleList([m if m is not None else nn.Identity() for m in shortcuts])
            self.has_shortcut = [m is not None for m in shortcuts]
            self.strides = strides
            self.fc_w = nn.Parameter(folded.fc.weight.detach().t().contiguous(), requires_grad=False)
            self.fc_b = nn.Parameter(folded.fc.bias.detach().clone(), requires_grad=False)

        def forward(self, frames, *states):
            new = []
            x, s = self.layers[0](frames, states[0])
            x = torch.relu(x)
            new.append(s)
            for i in range(len(self.strides)):
                z, s1 = self.layers[1 + 2 * i](x, states[1 + 2 * i])
                y, s2 = self.layers[2 + 2 * i](torch.relu(z), states[2 + 2 * i])
                st = self.strides[i]
                skip = x[:, st - 1::st]
                if self.has_shortcut[i]:
                    skip = torch.relu(self.shortcuts[i](skip))
                x = torch.relu(y + skip)
                new += [s1, s2]
            full = torch.cat([states[-1], x], dim=1)
            step = total // final_grid
            rows = [full[:, -1 - j * step:(-j * step) or None] for j in range(spec.pool)]
            pooled = torch.cat(rows, dim=1).mean(dim=1)
            new.append(full[:, -pool_cols:])
            return (torch.softmax(torch.matmul(pooled, self.fc_w) + self.fc_b, dim=1), *new)

    return Streaming().eval()


def export_onnx(folded, hop: int, path: Path, opset: int = 17) -> list[dict]:
    import torch

    spec = folded.spec
    states = state_specs(spec.channels, spec.stem_kernel, spec.kernel, spec.pool, hop)
    module = build(folded, hop)
    args = (torch.zeros(1, hop, NUM_MFCC), *[torch.zeros(1, *s["shape"][1:]) for s in states])
    names_in = ["frames"] + [s["name"] for s in states]
    names_out = ["probs"] + [s["output"] for s in states]
    torch.onnx.export(module, args, str(path), opset_version=opset, input_names=names_in, output_names=names_out,
                      dynamic_axes={n: {0: "N"} for n in names_in + names_out}, dynamo=False,
                      do_constant_folding=True)
    return states


# ------------------------------------------------------------------------------------------------
# Running the exported graphs (onnxruntime + numpy only)


def session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def stream_spec(manifest: dict) -> dict:
    return manifest["streaming"]


def run_stream(sess, feats: np.ndarray, hop: int, states: list[dict]) -> np.ndarray:
    """Posteriors of the windows ending at frames 97, 97 + hop, ... of one stream's frames [T, 40],
    computed hop by hop by the streaming graph (batch of one). Frames after the last full hop are
    unused, as in the windowed path."""
    return run_streams(sess, feats[None], hop, states)[0]


def run_streams(sess, feats: np.ndarray, hop: int, states: list[dict]) -> np.ndarray:
    """Same for N streams of equal length at once ([N, T, 40] -> [N, windows, 12]): the states of the
    streams are concatenated on the batch dimension."""
    n = feats.shape[0]
    lead = lead_frames(hop)
    x = np.concatenate([np.zeros((n, lead, feats.shape[2]), np.float32), feats.astype(np.float32)], axis=1)
    st = {s["name"]: np.zeros((n, *s["shape"][1:]), np.float32) for s in states}
    outs = ["probs"] + [s["output"] for s in states]
    first = first_valid_call(hop)
    probs = []
    for i in range(x.shape[1] // hop):
        res = sess.run(outs, {"frames": x[:, i * hop:(i + 1) * hop], **st})
        for s, v in zip(states, res[1:]):
            st[s["name"]] = v
        if i >= first:
            probs.append(res[0])
    return np.stack(probs, axis=1) if probs else np.zeros((n, 0, 12), np.float32)


def run_windows(sess, feats: np.ndarray, hop: int) -> np.ndarray:
    """The windowed model on the windows ending at frames 97, 97 + hop, ... of frames [T, 40]."""
    ends = range(WINDOW_FRAMES - 1, len(feats), hop)
    wins = np.stack([feats[e - WINDOW_FRAMES + 1:e + 1] for e in ends]).astype(np.float32)
    return np.concatenate([sess.run(["probs"], {"features": wins[i:i + 256]})[0] for i in range(0, len(wins), 256)])


# ------------------------------------------------------------------------------------------------
# int8


def calibration_inputs(fp32_stream: Path, calib: np.ndarray, hop: int, states: list[dict],
                       streams: int = 64, per_stream: int = 64, seed: int = 20261130) -> list[dict]:
    """Calibration inputs of the streaming graph: the fp32 streaming graph run over `streams` windows
    of the windowed calibration set laid end to end (as continuous streams), every state and frame
    block it sees after warm-up, in batches of `streams` (`per_stream` batches)."""
    rng = np.random.default_rng(seed)
    sess = session(fp32_stream)
    t = WINDOW_FRAMES * 3
    pick = rng.choice(len(calib), size=(streams, 3), replace=True)
    feats = np.stack([np.concatenate(list(calib[p])) for p in pick])[:, :t]
    lead = lead_frames(hop)
    x = np.concatenate([np.zeros((streams, lead, NUM_MFCC), np.float32), feats], axis=1)
    st = {s["name"]: np.zeros((streams, *s["shape"][1:]), np.float32) for s in states}
    outs = ["probs"] + [s["output"] for s in states]
    batches = []
    for i in range(x.shape[1] // hop):
        inp = {"frames": np.ascontiguousarray(x[:, i * hop:(i + 1) * hop]), **st}
        if i >= first_valid_call(hop):
            batches.append(inp)
        res = sess.run(outs, inp)
        st = {s["name"]: v for s, v in zip(states, res[1:])}
    idx = np.linspace(0, len(batches) - 1, min(per_stream, len(batches))).round().astype(int)
    return [batches[i] for i in idx]


def quantize_stream(fp32: Path, int8: Path, batches: list[dict], spec) -> None:
    """Static QDQ as `quant.quantize` (same scheme, ops and float softmax), on streaming inputs."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .quant import OPS

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[spec.method]
    extra = {"CalibPercentile": 99.999} if spec.method == "percentile" else {}
    # The streaming graph's convolutions are MatMuls (im2col, see `build`).
    ops = None if OPS[spec.ops] is None else OPS[spec.ops] + ["MatMul"]
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        keep_float = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QUInt8 if spec.scheme == "u8u8" else QuantType.QInt8,
                        per_channel=True, reduce_range=spec.scheme == "u8s8-rr",
                        calibrate_method=method, nodes_to_exclude=keep_float, extra_options=extra,
                        op_types_to_quantize=ops)


# ------------------------------------------------------------------------------------------------
# Cost


def flops_per_second(channels, stem_kernel, kernel, pool, hop: int, num_classes: int = 12) -> dict:
    """Multiply-adds x 2 per second of one stream (convs and the linear layer, as `model.count_flops`):
    streaming (each column once) at `hop`, against the windowed model scoring a window every `hop`."""
    convs, _ = plan(channels, stem_kernel, kernel, pool, hop)
    hops_per_s = 100 / hop
    grids, nominal, grid = [1], 1, 1
    for a, b in zip(channels[:-1], channels[1:]):
        nominal *= 1 if a == b else 2
        grid = min(nominal, hop)
        grids.append(grid)
    macs = 0.0
    couts = [channels[0]] + [c for b in channels[1:] for c in (b, b)]
    for j, (c, cout) in enumerate(zip(convs, couts)):
        g = grids[(j + 1) // 2]  # output grid of this conv
        macs += c.cin * cout * c.kernel * (100 / g)
    for j, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        if a != b:
            macs += a * b * 100 / grids[j + 1]  # 1x1 shortcut at the block's output grid
    macs += channels[-1] * num_classes * hops_per_s
    return {"streaming": 2 * macs, "hops_per_second": hops_per_s}


# ------------------------------------------------------------------------------------------------
# CLI


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(path: Path) -> dict:
    return {"path": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size}


def check(model_dir: Path, hop: int | None = None, seconds: float = 6.0, seed: int = 3) -> dict:
    """Max |streaming - windowed| per variant on the golden stream and on random-noise frames."""
    from .quant import read_wav
    from .frontend import mfcc

    m = json.loads((model_dir / "manifest.json").read_text())
    st = m["streaming"]
    hop = hop or st["hop_frames"]
    gold = json.loads((model_dir / "golden" / "golden.json").read_text())
    feats = {"golden stream": mfcc(read_wav(model_dir / "golden" / gold["stream"]["wav"])),
             "noise": mfcc(np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * 16000)).astype(np.float32))}
    out = {}
    for kind in ("fp32", "int8"):
        if kind not in st["files"]:
            continue
        ws = session(model_dir / m["files"][kind]["path"])
        ss = session(model_dir / st["files"][kind]["path"])
        for name, f in feats.items():
            a, b = run_windows(ws, f, hop), run_stream(ss, f, hop, st["states"])
            assert a.shape == b.shape, (a.shape, b.shape)
            out[f"{kind} {name}"] = float(np.abs(a - b).max())
    return out


def export(a) -> None:
    import torch

    from . import CLASSES
    from .export import fold_bn, load_recipe_from_json
    from .model import TCResNet
    from .quant import DEFAULT_SPEC, calibration_windows, describe
    from .data import load_background, load_clips

    torch.set_num_threads(1)
    r = load_recipe_from_json(a.run / "recipe.json")
    net = TCResNet(r.arch, num_classes=len(CLASSES), dropout=r.dropout, cmn=r.cmn)
    if net.spec is None:
        raise SystemExit(f"{r.arch} is not streamable (model.STREAM_ARCHS)")
    net.load_state_dict(torch.load(a.run / "model.pt", weights_only=True))
    folded = fold_bn(net.eval())
    mpath = a.model_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    fp32 = a.model_dir / STREAM_FILES["fp32"]
    states = export_onnx(folded, a.hop, fp32)
    spec = net.spec
    section = {
        "hop_frames": a.hop,
        "lead_frames": lead_frames(a.hop),
        "first_valid_call": first_valid_call(a.hop),
        "input": {"name": "frames", "shape": [-1, a.hop, NUM_MFCC], "dtype": "float32"},
        "output": {"name": "probs", "shape": [-1, len(CLASSES)], "dtype": "float32", "activation": "softmax"},
        "states": states,
        "state_floats_per_stream": sum(int(np.prod(s["shape"][1:])) for s in states),
        "files": {"fp32": _file(fp32)},
        "flops_per_stream_second": {
            "streaming": flops_per_second(spec.channels, spec.stem_kernel, spec.kernel, spec.pool, a.hop)["streaming"],
            "windowed": m["flops"] * 100 / a.hop},
    }
    m["streaming"] = section
    if a.int8:
        engines = sorted(p.stem for p in (a.data / "shards").glob("*.jsonl"))
        clips = load_clips(a.data, engines)
        bg = load_background(a.data)
        calib, desc = calibration_windows(clips, bg, r)
        batches = calibration_inputs(fp32, calib, a.hop, states)
        int8 = a.model_dir / STREAM_FILES["int8"]
        quantize_stream(fp32, int8, batches, DEFAULT_SPEC)
        section["files"]["int8"] = _file(int8)
        q = describe(DEFAULT_SPEC, desc)
        q["calibration"] = {"windows": desc, "streaming": f"the fp32 streaming graph run over 64 streams of 3 "
                            f"calibration windows laid end to end; {len(batches)} batches of 64 after warm-up"}
        section["quantization"] = q
    mpath.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    t0 = time.time()
    diffs = check(a.model_dir)
    section["max_abs_diff_vs_windowed"] = {k: float(f"{v:.3g}") for k, v in diffs.items()}
    mpath.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(f"streaming vs windowed max |diff| ({time.time() - t0:.1f} s): {diffs}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write model.stream[.int8].onnx and the manifest's streaming section")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--model-dir", type=Path, required=True)
    e.add_argument("--data", type=Path, default=Path("data"))
    e.add_argument("--hop", type=int, default=2)
    e.add_argument("--int8", action="store_true")
    c = sub.add_parser("check", help="streaming vs windowed on the golden stream and noise")
    c.add_argument("--model-dir", type=Path, required=True)
    c.add_argument("--hop", type=int)
    a = p.parse_args(argv)
    if a.cmd == "export":
        export(a)
    else:
        print(json.dumps(check(a.model_dir, a.hop), indent=1))


if __name__ == "__main__":
    main()
