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

# int8
`model.stream.int8.onnx` is not calibrated: `build_int8` writes it from the windowed `model.int8.onnx`
(same int8 weights and per-channel scales, same int32 biases, same activation scales and zero points at
the corresponding tensors, float residual additions, pooling and softmax), with each conv as a QDQ
kernel-1 Conv over the im2col columns of the whole batch, so ONNX Runtime runs the windowed graph's
integer arithmetic on the same uint8 values (measured: identical posteriors, models/README.md).

Usage (from models/training, training venv, after `kws_train.export` wrote the windowed model):
    python -m kws_train.streaming export --run runs/NAME --model-dir ../tc-resnet8-stream --hop 2 --int8
    python -m kws_train.streaming int8 --model-dir ../tc-resnet8-stream    # the int8 graph alone, no torch
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


def plan(channels: tuple[int, ...], stem_kernel: int, kernel: int | tuple[int, ...], pool: int, hop: int,
         num_mfcc: int = NUM_MFCC) -> tuple[list[ConvPlan], tuple[int, int]]:
    """The convs (stem, then conv1/conv2 per block) on their grids, and the pooling state
    (channels, columns). `kernel`: of every block, or one per block. `hop` must divide the total
    stride or be a multiple of it."""
    total = 2 ** sum(a != b for a, b in zip(channels[:-1], channels[1:]))
    if not (total % hop == 0 or hop % total == 0):
        raise ValueError(f"hop {hop} neither divides nor is a multiple of the total stride {total}")
    convs = [ConvPlan("stem", num_mfcc, stem_kernel, 1, 1)]
    kernels = (kernel,) * (len(channels) - 1) if isinstance(kernel, int) else tuple(kernel)
    assert len(kernels) == len(channels) - 1, (kernel, channels)
    nominal, grid = 1, 1  # spacing (frames) of the current layer's nominal and computed columns
    for i, (a, b, kernel) in enumerate(zip(channels[:-1], channels[1:], kernels)):
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
# int8: the windowed int8 model's quantization, carried over tensor by tensor


def _windowed_quant(graph) -> dict:
    """The quantization of every conv / the linear layer of a windowed QDQ graph written by
    `quant.quantize` (`model.int8.onnx`), by layer ("stem", "b1_conv1", "b1_conv2", "b1_shortcut", ...,
    "fc"): the input's (scale, zero point), the quantized weight with its per-channel scale and zero
    point, the int32 bias with its scale, the output's (scale, zero point); for a shortcut also
    `pre`, the quantization its input already went through (the block input's, i.e. conv1's: the
    shortcut reads the dequantized conv1 input, re-quantized at its own scale)."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def qparams(dq_or_q) -> tuple[np.ndarray, np.ndarray]:
        return init[dq_or_q.input[1]], init[dq_or_q.input[2]]

    def dq_const(name: str) -> dict:
        dq = producer[name]
        assert dq.op_type == "DequantizeLinear" and dq.input[0] in init, name
        axis = [a.i for a in dq.attribute if a.name == "axis"]
        return {"q": init[dq.input[0]], "scale": init[dq.input[1]], "zero_point": init[dq.input[2]],
                "axis": axis[0] if axis else 1}

    def layer_of(weight: str) -> str:
        parts = weight.split(".")  # net.stem.0.0.weight / net.blocks.I.conv1.0.weight / net.fc.weight
        if parts[1] == "stem":
            return "stem"
        if parts[1] == "fc":
            return "fc"
        return f"b{int(parts[2]) + 1}_{parts[3]}"

    out = {}
    for n in graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        w = dq_const(n.input[1])
        name = layer_of(producer[n.input[1]].input[0].removesuffix("_quantized"))
        dq_in = producer[n.input[0]]
        q_in = producer[dq_in.input[0]]
        assert dq_in.op_type == "DequantizeLinear" and q_in.op_type == "QuantizeLinear", name
        (q_out,) = consumers[n.output[0]]
        assert q_out.op_type == "QuantizeLinear", name
        rec = {"input": qparams(dq_in), "weight": w, "bias": dq_const(n.input[2]), "output": qparams(q_out),
               "attrs": {a.name: a for a in n.attribute}}
        # What the conv's input was before its QuantizeLinear: a dequantized tensor (through Slice
        # etc.) means it was quantized before, at another tensor's scale.
        t = q_in.input[0]
        while t in producer and producer[t].op_type in ("Slice", "Gather", "Reshape", "Transpose", "Identity"):
            t = producer[t].input[0]
        if t in producer and producer[t].op_type == "DequantizeLinear":
            rec["pre"] = qparams(producer[t])
        out[name] = rec
    # Only the convs' and the linear layer's inputs and outputs are quantized (quant.DEFAULT_SPEC's
    # ops "conv"): a graph with other QuantizeLinears (e.g. int8 residual additions) would have
    # tensors without a counterpart in build_int8.
    n_q = sum(n.op_type == "QuantizeLinear" for n in graph.node)
    if n_q != 2 * len(out):
        raise ValueError(f"{n_q} QuantizeLinear nodes for {len(out)} convs/linear: not a conv-only QDQ graph")
    return out


def geometry(wq: dict) -> tuple[tuple[int, ...], int, int, int, int]:
    """(channels, stem kernel, block kernel, pool, num_mfcc) of a windowed graph from its weights
    (`_windowed_quant`); `pool` from the window: receptive field + (pool - 1) x total stride = 98."""
    stem = wq["stem"]["weight"]["q"].shape  # [C0, num_mfcc, K]
    channels, kernels = [stem[0]], []
    i = 1
    while f"b{i}_conv1" in wq:
        w = wq[f"b{i}_conv1"]["weight"]["q"].shape
        assert w[1] == channels[-1] and wq[f"b{i}_conv2"]["weight"]["q"].shape[2] == w[2], (i, w)
        channels.append(w[0])
        kernels.append(int(w[2]))
        i += 1
    rf, stride = stem[2], 1
    for a, b, k in zip(channels[:-1], channels[1:], kernels):
        rf += (k - 1) * stride
        stride *= 1 if a == b else 2
        rf += (k - 1) * stride
    pool, rest = divmod(WINDOW_FRAMES - rf, stride)
    assert rest == 0, (rf, stride)
    kernel = kernels[0] if len(set(kernels)) == 1 else tuple(kernels)
    return tuple(int(c) for c in channels), int(stem[2]), kernel, pool + 1, int(stem[1])


def build_int8(windowed_int8: Path, hop: int):
    """The int8 streaming graph of a windowed QDQ model (`model.int8.onnx`), as an onnx ModelProto
    (geometry from the windowed graph's weights: `geometry`; no torch).

    No calibration: every quantized tensor of the windowed graph has its counterpart here, with the
    windowed graph's scale and zero point, and every conv the windowed graph's int8 weights,
    per-channel scales and int32 bias. The streaming graph then computes each column with the same
    integer arithmetic as the windowed graph, so (given the same inputs) the same uint8 activations:
    - a conv's input is quantized at the windowed conv's input scale *after* the im2col gather
      (QuantizeLinear is elementwise, so quantizing gathered columns is quantizing the columns);
    - the conv itself is a QDQ `Conv` (kernel 1, no padding) over `[1, K * Cin, N * n_out]`: the
      im2col columns of every stream of the batch as one sequence, so ONNX Runtime fuses it into
      one QLinearConv (one int8 GEMM for the batch) with the windowed conv's weights reordered
      `[Cout, Cin, K] -> [Cout, K * Cin, 1]` (the gather's tap-major order) and the same int32 bias,
      per-channel scales and requantization. The integer sums are exact on every instruction set
      (7-bit weights: no int16 pair sum saturates on AVX2), so only the summation *order* differs,
      which integers do not see. (The fp32 graph's MatMul + Add would put the bias outside the
      int8 op, where it is not the windowed conv's int32 bias.)
    - states carry the float values the windowed graph quantizes at that point: the stem state raw
      frames, a conv1 state the block input (quantized at conv1's input scale when gathered), a conv2
      state `relu(dequantized conv1 output)` (quantized at the windowed conv2 input scale when
      gathered), the pooling state the last block's float output. Quantizing on use rather than
      storing uint8 keeps the states float32 and their shapes the fp32 graph's, so both graphs share
      the manifest's `streaming.states`;
    - a shortcut reads the block input dequantized at conv1's input scale, re-quantized at its own
      scale (in the windowed graph it reads the dequantized conv1 input through a Slice);
    - residual additions, ReLU, the mean pooling and the softmax are float, as in the windowed graph;
      the pooled vector is quantized at the windowed graph's pooled-vector scale before the int8
      linear layer (same `Gemm`).
    What remains float and ordered differently: the mean over `pool` final columns (summed in the
    windowed order, oldest first; for pool = 2 one addition, exact in either order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = onnx.load(str(windowed_int8))
    wq = _windowed_quant(src.graph)
    channels, stem_kernel, kernel, pool, num_mfcc = geometry(wq)
    convs, (pool_c, pool_cols) = plan(channels, stem_kernel, kernel, pool, hop, num_mfcc)
    total = 2 ** sum(a != b for a, b in zip(channels[:-1], channels[1:]))
    final_grid = min(total, hop)
    states = state_specs(channels, stem_kernel, kernel, pool, hop)

    nodes, inits = [], []
    counter = [0]

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        counter[0] += 1
        out = f"{name}_{op}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def qdq(x: str, params, name: str) -> str:
        s = const(f"{name}_scale", np.asarray(params[0], np.float32))
        z = const(f"{name}_zero_point", np.asarray(params[1]))
        return node("DequantizeLinear", [node("QuantizeLinear", [x, s, z], name), s, z], name)

    def weight(layer: str, q: np.ndarray) -> tuple[str, str]:
        w, b = wq[layer]["weight"], wq[layer]["bias"]
        assert w["axis"] == 0 and b["axis"] == 0, layer
        wd = node("DequantizeLinear", [const(f"{layer}_w_q", q), const(f"{layer}_w_scale", w["scale"]),
                                       const(f"{layer}_w_zp", w["zero_point"])], f"{layer}_w", axis=0)
        bd = node("DequantizeLinear", [const(f"{layer}_b_q", b["q"]), const(f"{layer}_b_scale", b["scale"]),
                                       const(f"{layer}_b_zp", b["zero_point"])], f"{layer}_b", axis=0)
        return wd, bd

    def int8_columns(cols: str, layer: str, k: int, cin: int, n_out: int, pre=None) -> str:
        """cols [N * n_out, K * Cin] (tap-major) -> the quantized conv's dequantized output [N, n_out, Cout]."""
        rec = wq[layer]
        cout = rec["weight"]["q"].shape[0]
        wk = rec["weight"]["q"]  # [Cout, Cin, K]
        assert wk.shape == (cout, cin, k), (layer, wk.shape, (cout, cin, k))
        w, b = weight(layer, np.ascontiguousarray(wk.transpose(0, 2, 1).reshape(cout, k * cin, 1)))
        x = node("Unsqueeze", [node("Transpose", [cols], layer, perm=[1, 0]), const(f"{layer}_ax0", np.array([0]))],
                 layer)
        x = qdq(x, rec["input"], f"{layer}_in")
        y = node("Conv", [x, w, b], layer, kernel_shape=[1], strides=[1], dilations=[1], pads=[0, 0], group=1)
        y = qdq(y, rec["output"], f"{layer}_out")
        y = node("Transpose", [node("Squeeze", [y, f"{layer}_ax0"], layer)], layer, perm=[1, 0])
        return node("Reshape", [y, const(f"{layer}_shape", np.array([-1, n_out, cout]))], layer)

    def conv(p: ConvPlan, x: str, new_in: int, state: str) -> tuple[str, str, int]:
        """im2col of a conv on its grid: (dequantized output [N, n_out, Cout], new state, n_out)."""
        n_out = (new_in - p.stride) // p.stride + 1
        span = p.state_columns + new_in
        idx = [j * p.stride + t * p.dilation for j in range(n_out) for t in range(p.kernel)]
        assert idx[-1] == span - 1, (p, new_in, idx[-1], span)
        full = node("Concat", [state, x], p.name, axis=1)
        new_state = node("Slice", [full, const(f"{p.name}_st_start", np.array([-p.state_columns])),
                                   const(f"{p.name}_st_end", np.array([np.iinfo(np.int64).max])),
                                   const(f"{p.name}_st_axis", np.array([1]))], p.name)
        taps = node("Gather", [full, const(f"{p.name}_idx", np.array(idx, np.int64))], p.name, axis=1)
        cols = node("Reshape", [taps, const(f"{p.name}_cols", np.array([-1, p.kernel * p.cin]))], p.name)
        return int8_columns(cols, p.name, p.kernel, p.cin, n_out), new_state, n_out

    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", hop, num_mfcc])
    st_in = [helper.make_tensor_value_info(s["name"], TensorProto.FLOAT, ["N", *s["shape"][1:]]) for s in states]
    new_states = []
    y, s, n = conv(convs[0], "frames", hop, states[0]["name"])
    x, new_in = node("Relu", [y], "stem"), n
    new_states.append(s)
    for i, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        c1, c2 = convs[1 + 2 * i], convs[2 + 2 * i]
        z, s1, n1 = conv(c1, x, new_in, states[1 + 2 * i]["name"])
        y, s2, n2 = conv(c2, node("Relu", [z], c1.name), n1, states[2 + 2 * i]["name"])
        blk = f"b{i + 1}"
        rec1 = wq[c1.name]
        # The shortcut reads the block input as conv1 sees it (quantized at conv1's input scale), at
        # the end positions of the block's outputs: the last of every `stride` new columns.
        xq = qdq(x, rec1["input"], f"{blk}_skip_pre")
        skip = node("Gather", [xq, const(f"{blk}_skip_idx", np.arange(c1.stride - 1, new_in, c1.stride))], blk,
                    axis=1)
        if a != b:
            sc = f"{blk}_shortcut"
            assert wq[sc].get("pre") is not None and np.allclose(wq[sc]["pre"][0], rec1["input"][0]), sc
            cols = node("Reshape", [skip, const(f"{sc}_cols", np.array([-1, a]))], sc)
            skip = node("Relu", [int8_columns(cols, sc, 1, a, n2)], sc)
        x = node("Relu", [node("Add", [y, skip], blk)], blk)
        new_in = n2
        new_states += [s1, s2]
    full = node("Concat", [states[-1]["name"], x], "pool", axis=1)
    step = total // final_grid
    # The windowed graph averages its last `pool` final columns oldest first.
    rows = [pool_cols + new_in - 1 - j * step for j in reversed(range(pool))]
    pooled = node("ReduceMean", [node("Gather", [full, const("pool_idx", np.array(rows, np.int64))], "pool", axis=1)],
                  "pool", axes=[1], keepdims=0)
    new_states.append(node("Slice", [full, const("pool_st_start", np.array([-pool_cols])),
                                     const("pool_st_end", np.array([np.iinfo(np.int64).max])),
                                     const("pool_st_axis", np.array([1]))], "pool"))
    fc = wq["fc"]
    w, b = weight("fc", fc["weight"]["q"])
    logits = node("Gemm", [qdq(pooled, fc["input"], "fc_in"), w, b], "fc", **{
        k: helper.get_attribute_value(v) for k, v in fc["attrs"].items()})
    logits = qdq(logits, fc["output"], "fc_out")
    nodes.append(helper.make_node("Softmax", [logits], ["probs"], name="softmax", axis=1))
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", fc["weight"]["q"].shape[0]])]
    for spec, t in zip(states, new_states):
        nodes.append(helper.make_node("Identity", [t], [spec["output"]], name=spec["output"]))
        outputs.append(helper.make_tensor_value_info(spec["output"], TensorProto.FLOAT, ["N", *spec["shape"][1:]]))
    assert pool_c == channels[-1]
    graph = helper.make_graph(nodes, "tc-resnet-stream-int8", [frames, *st_in], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="kws_train.streaming")
    model.ir_version = src.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


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


def random_frames(frames: int, seed: int) -> np.ndarray:
    """Seeded random MFCC frames [frames, 40] (fed to the graphs directly, no audio): uniform in
    +-25, one value in 50 in +-200 (beyond the int8 input range, so quantization clamps it)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-25, 25, (frames, NUM_MFCC))
    far = rng.random((frames, NUM_MFCC)) < 0.02
    x[far] = rng.uniform(-200, 200, far.sum())
    return x.astype(np.float32)


def check(model_dir: Path, hop: int | None = None, seconds: float = 6.0, seed: int = 3) -> dict:
    """Max |streaming - windowed| per variant on the golden stream, random-noise audio and random
    MFCC frames, from the first full window on."""
    from .quant import read_wav
    from .frontend import mfcc

    m = json.loads((model_dir / "manifest.json").read_text())
    st = m["streaming"]
    hop = hop or st["hop_frames"]
    gold = json.loads((model_dir / "golden" / "golden.json").read_text())
    feats = {"golden stream": mfcc(read_wav(model_dir / "golden" / gold["stream"]["wav"])),
             "noise": mfcc(np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * 16000)).astype(np.float32)),
             "random frames": random_frames(int(seconds * 100), seed)}
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


def write_int8(model_dir: Path, hop: int) -> dict:
    """Write `model.stream.int8.onnx` from the windowed `model.int8.onnx` of `model_dir` (`build_int8`;
    deterministic: the same windowed file gives the same bytes) and return its `files` entry."""
    import onnx

    m = json.loads((model_dir / "manifest.json").read_text())
    path = model_dir / STREAM_FILES["int8"]
    onnx.save(build_int8(model_dir / m["files"]["int8"]["path"], hop), str(path))
    return _file(path)


def int8_record(m: dict) -> dict:
    """The streaming section's `quantization` record: the windowed int8 model's, carried over."""
    return {"from": m["files"]["int8"]["path"],
            "method": "no calibration of its own: the windowed int8 graph's int8 weights, per-channel "
                      "scales, int32 biases and activation scales/zero points at the corresponding tensors "
                      "(kws_train.streaming.build_int8); scheme and recipe as the manifest's quantization",
            "scheme": m.get("quantization", {}).get("scheme")}


def _record_diffs(mpath: Path, m: dict) -> None:
    t0 = time.time()
    diffs = check(mpath.parent)
    m["streaming"]["max_abs_diff_vs_windowed"] = {k: float(f"{v:.3g}") for k, v in diffs.items()}
    mpath.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(f"streaming vs windowed max |diff| ({time.time() - t0:.1f} s): {diffs}", flush=True)


def export(a) -> None:
    import torch

    from . import CLASSES
    from .export import fold_bn, load_recipe_from_json
    from .model import TCResNet

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
        import onnx

        win8 = onnx.load(str(a.model_dir / m["files"]["int8"]["path"]))
        assert geometry(_windowed_quant(win8.graph)) == (tuple(spec.channels), spec.stem_kernel, spec.kernel,
                                                         spec.pool, NUM_MFCC), "model.int8.onnx is not this run's"
        section["files"]["int8"] = write_int8(a.model_dir, a.hop)
        section["quantization"] = int8_record(m)
    mpath.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    _record_diffs(mpath, m)


def export_int8(a) -> None:
    """Only the int8 streaming graph (no torch): from the model dir's windowed int8 graph, at the
    manifest's streaming hop; updates `streaming.files.int8`, `quantization` and the differences."""
    mpath = a.model_dir / "manifest.json"
    m = json.loads(mpath.read_text())
    st = m["streaming"]
    st["files"]["int8"] = write_int8(a.model_dir, st["hop_frames"])
    st["quantization"] = int8_record(m)
    mpath.write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    _record_diffs(mpath, m)


def cost_only(a) -> None:
    """An untrained (random-init, BN folded) windowed + streaming fp32 pair of a streamable arch, with
    a manifest the Rust crate loads (the template's schema; version `0.0.0-cost-only`, no thresholds,
    no golden; int8 only with --int8), for measuring cost, which does not depend on the weights. Not a model:
    its posteriors mean nothing."""
    import torch

    from . import CLASSES
    from .export import export_onnx as export_windowed
    from .export import fold_bn
    from .model import TCResNet, count_flops, count_params

    torch.manual_seed(a.seed)
    torch.set_num_threads(1)
    net = TCResNet(a.arch, num_classes=len(CLASSES)).eval()
    if net.spec is None:
        raise SystemExit(f"{a.arch} is not streamable (model.STREAM_ARCHS)")
    spec = net.spec
    a.out.mkdir(parents=True, exist_ok=True)
    folded = fold_bn(net)
    export_windowed(folded, a.out / "model.onnx")
    states = export_onnx(folded, a.hop, a.out / STREAM_FILES["fp32"])
    m = json.loads(a.template.read_text())
    for k in ("training", "metrics", "quantization", "operating_point", "cascade", "verifier"):
        m.pop(k, None)
    flops = count_flops(net)
    m.update({
        "name": f"{a.arch}-cost-only", "version": "0.0.0-cost-only", "arch": a.arch,
        "thresholds": {},
        "params": count_params(net), "flops": flops,
        "files": {"fp32": _file(a.out / "model.onnx")},
        "cost_only": f"UNTRAINED: random initialization (torch seed {a.seed}), BatchNorm folded; for cost "
                     "measurements only (python -m kws_train.streaming cost-only). Posteriors are meaningless.",
    })
    m["window"]["default_hop_frames"] = a.hop
    m["streaming"] = {
        "hop_frames": a.hop, "lead_frames": lead_frames(a.hop), "first_valid_call": first_valid_call(a.hop),
        "input": {"name": "frames", "shape": [-1, a.hop, NUM_MFCC], "dtype": "float32"},
        "output": {"name": "probs", "shape": [-1, len(CLASSES)], "dtype": "float32", "activation": "softmax"},
        "states": states,
        "state_floats_per_stream": sum(int(np.prod(s["shape"][1:])) for s in states),
        "files": {"fp32": _file(a.out / STREAM_FILES["fp32"])},
        "flops_per_stream_second": {
            "streaming": flops_per_second(spec.channels, spec.stem_kernel, spec.kernel, spec.pool, a.hop)["streaming"],
            "windowed": flops * 100 / a.hop},
    }
    from .frontend import mfcc

    feats = {"noise": mfcc(np.random.default_rng(3).uniform(-0.5, 0.5, 96000).astype(np.float32)),
             "random frames": random_frames(600, 3)}
    if a.int8:
        # int8 costs: the windowed graph quantized as the shipped ones (quant.DEFAULT_SPEC), calibrated
        # on noise at 8 levels and random frames (meaningless for accuracy, as the weights are), and
        # its streaming graph by build_int8.
        import onnx

        from .quant import DEFAULT_SPEC, quantize

        rng = np.random.default_rng(a.seed)
        calib = [mfcc((rng.uniform(-1, 1, 32000) * lvl).astype(np.float32)) for lvl in np.geomspace(0.003, 0.9, 8)]
        calib.append(random_frames(800, a.seed))
        wins = np.stack([f[e - WINDOW_FRAMES + 1:e + 1] for f in calib for e in range(WINDOW_FRAMES - 1, len(f), 5)])
        quantize(a.out / "model.onnx", a.out / "model.int8.onnx", wins[:len(wins) // 64 * 64], DEFAULT_SPEC)
        m["files"]["int8"] = _file(a.out / "model.int8.onnx")
        onnx.save(build_int8(a.out / "model.int8.onnx", a.hop), str(a.out / STREAM_FILES["int8"]))
        m["streaming"]["files"]["int8"] = _file(a.out / STREAM_FILES["int8"])
    # Exactness of the pairs (no golden stream here): noise audio and random frames.
    diffs = {}
    for kind in m["streaming"]["files"]:
        ws, ss = session(a.out / m["files"][kind]["path"]), session(a.out / m["streaming"]["files"][kind]["path"])
        for k, f in feats.items():
            d = np.abs(run_windows(ws, f, a.hop) - run_stream(ss, f, a.hop, states)).max()
            diffs[f"{kind} {k}"] = float(f"{d:.3g}")
    m["streaming"]["max_abs_diff_vs_windowed"] = diffs
    (a.out / "manifest.json").write_text(json.dumps(m, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print(json.dumps({k: m[k] for k in ("name", "params", "flops")} | {
        k: m["streaming"][k] for k in ("state_floats_per_stream", "flops_per_stream_second",
                                       "max_abs_diff_vs_windowed")}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write model.stream[.int8].onnx and the manifest's streaming section")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--model-dir", type=Path, required=True)
    e.add_argument("--hop", type=int, default=2)
    e.add_argument("--int8", action="store_true",
                   help="also model.stream.int8.onnx from the windowed model.int8.onnx (build_int8)")
    i = sub.add_parser("int8", help="only model.stream.int8.onnx, from the windowed int8 graph (no torch)")
    i.add_argument("--model-dir", type=Path, required=True)
    k = sub.add_parser("cost-only", help="an UNTRAINED windowed + streaming fp32 pair and manifest, for cost")
    k.add_argument("--arch", required=True)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--template", type=Path, default=Path(__file__).resolve().parents[2] / "tc-resnet8-stream"
                   / "manifest.json")
    k.add_argument("--hop", type=int, default=2)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--int8", action="store_true", help="also int8 (calibrated on noise: cost only)")
    c = sub.add_parser("check", help="streaming vs windowed on the golden stream and noise")
    c.add_argument("--model-dir", type=Path, required=True)
    c.add_argument("--hop", type=int)
    a = p.parse_args(argv)
    if a.cmd == "export":
        export(a)
    elif a.cmd == "int8":
        export_int8(a)
    elif a.cmd == "cost-only":
        cost_only(a)
    else:
        print(json.dumps(check(a.model_dir, a.hop), indent=1))


if __name__ == "__main__":
    main()
