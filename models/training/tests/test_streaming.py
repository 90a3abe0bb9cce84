"""CI checks of the streaming (external-state) model (no torch): the streaming graph's posteriors equal
the windowed graph's on the same windows, from the first full window on.

`models/tc-resnet8-stream` ships both graphs of the same weights: `model.onnx` / `model.int8.onnx`
(windowed, [N, 98, 40]) and `model.stream.onnx` / `model.stream.int8.onnx` (frames [N, hop, 40] plus one
state tensor per layer, `kws_train.streaming`; the int8 streaming graph carries the windowed int8 graph's
quantization tensor by tensor, see models/README.md).

Run: python -m pytest models/training/tests (numpy, onnxruntime, pytest; see requirements-ci.txt).
"""

import hashlib
import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

TRAINING = Path(__file__).resolve().parents[1]
MODEL_DIR = TRAINING.parent / "tc-resnet8-stream"
sys.path.insert(0, str(TRAINING))

from kws_train.frontend import WINDOW_FRAMES, mfcc  # noqa: E402
from kws_train.streaming import (first_valid_call, lead_frames, run_stream, run_streams,  # noqa: E402
                                 run_windows, session)

#: The issue's bound: fp32 streaming == windowed within 1e-5.
FP32_TOLERANCE = 1e-5
#: int8 streaming vs int8 windowed: the same integers (`streaming.build_int8`), so only float rounding
#: after the last dequantization could differ (measured: 0); the same bound as models/tests/streaming.rs.
INT8_TOLERANCE = 1e-6


def manifest():
    return json.loads((MODEL_DIR / "manifest.json").read_text())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def audio():
    """Frames of the golden stream, 3 s of seeded noise, and the golden stream's first 2.3 s."""
    g = json.loads((MODEL_DIR / "golden" / "golden.json").read_text())
    x = read_wav(MODEL_DIR / "golden" / g["stream"]["wav"])
    noise = np.random.default_rng(11).uniform(-0.3, 0.3, 48000).astype(np.float32)
    return {"golden stream": mfcc(x), "noise": mfcc(noise), "golden 2.3 s": mfcc(x[:36800])}


def test_streaming_section_matches_files_and_graph():
    m = manifest()
    st = m["streaming"]
    hop = st["hop_frames"]
    assert (st["lead_frames"], st["first_valid_call"]) == (lead_frames(hop), first_valid_call(hop))
    assert st["input"]["shape"] == [-1, hop, 40]
    assert set(st["files"]) <= {"fp32", "int8"} and "fp32" in st["files"]
    for variant, f in st["files"].items():
        data = (MODEL_DIR / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"], variant
        assert len(data) == f["bytes"]
        sess = session(MODEL_DIR / f["path"])
        ins = {i.name: i.shape for i in sess.get_inputs()}
        outs = {o.name: o.shape for o in sess.get_outputs()}
        assert ins.pop("frames")[1:] == [hop, 40]
        assert outs.pop("probs")[1:] == [12]
        for s in st["states"]:
            assert ins.pop(s["name"])[1:] == s["shape"][1:], s["name"]
            assert outs.pop(s["output"])[1:] == s["shape"][1:], s["output"]
        assert not ins and not outs, (ins, outs)
    floats = sum(int(np.prod(s["shape"][1:])) for s in st["states"])
    assert floats == st["state_floats_per_stream"]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_streaming_equals_windowed(variant):
    m = manifest()
    st = m["streaming"]
    if variant not in st["files"]:
        pytest.skip(f"no {variant} streaming graph shipped")
    hop = st["hop_frames"]
    windowed = session(MODEL_DIR / m["files"][variant]["path"])
    streaming = session(MODEL_DIR / st["files"][variant]["path"])
    tol = FP32_TOLERANCE if variant == "fp32" else INT8_TOLERANCE
    for name, feats in audio().items():
        want = run_windows(windowed, feats, hop)
        got = run_stream(streaming, feats, hop, st["states"])
        assert len(want) == 1 + (len(feats) - WINDOW_FRAMES) // hop
        assert got.shape == want.shape, name
        d = float(np.abs(got - want).max())
        assert d <= tol, f"{variant} {name}: max |streaming - windowed| {d}"
        assert (got.argmax(1) == want.argmax(1)).all(), name


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_streams_batched_equal_each_alone(variant):
    m = manifest()
    st = m["streaming"]
    if variant not in st["files"]:
        pytest.skip(f"no {variant} streaming graph shipped")
    sess = session(MODEL_DIR / st["files"][variant]["path"])
    feats = audio()
    n = min(len(f) for f in feats.values())
    both = np.stack([f[:n] for f in feats.values()])
    together = run_streams(sess, both, st["hop_frames"], st["states"])
    for i, f in enumerate(feats.values()):
        alone = run_stream(sess, f[:n], st["hop_frames"], st["states"])
        assert np.abs(together[i] - alone).max() <= 1e-6


def test_int8_streaming_graph_is_rebuilt_from_the_windowed_int8_graph(tmp_path):
    """`kws_train.streaming int8` reproduces the shipped file byte for byte from `model.int8.onnx`
    (needs the `onnx` package, pinned in both the training and the CI requirements)."""
    onnx = pytest.importorskip("onnx")
    from kws_train.streaming import build_int8

    st = manifest()["streaming"]
    if "int8" not in st["files"]:
        pytest.skip("no int8 streaming graph shipped")
    path = tmp_path / "stream.int8.onnx"
    onnx.save(build_int8(MODEL_DIR / manifest()["files"]["int8"]["path"], st["hop_frames"]), str(path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == st["files"]["int8"]["sha256"]
