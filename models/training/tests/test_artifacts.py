"""CI checks of the shipped model artifacts (no torch): manifests match their files, the numpy
reference frontend reproduces the golden features, and onnxruntime reproduces the golden posteriors,
score traces and events.

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
MODELS = TRAINING.parent
sys.path.insert(0, str(TRAINING))

from kws_train import CLASSES  # noqa: E402
from kws_train.frontend import FRONTEND_PARAMS, mfcc  # noqa: E402
from kws_train.stream import DecoderConfig, decode, windows  # noqa: E402

MODEL_DIRS = [MODELS / "tc-resnet8", MODELS / "tc-resnet14-1.5", MODELS / "tc-resnet8-stream"]


def shipped():
    return [d for d in MODEL_DIRS if (d / "manifest.json").exists()]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_both_models_are_shipped():
    assert [d.name for d in shipped()] == [d.name for d in MODEL_DIRS]


@pytest.mark.parametrize("model_dir", shipped(), ids=lambda d: d.name)
def test_manifest_matches_files(model_dir):
    m = json.loads((model_dir / "manifest.json").read_text())
    assert m["classes"] == CLASSES
    assert m["frontend"] == FRONTEND_PARAMS
    assert set(m["files"]) == {"fp32", "int8"}
    for variant, f in m["files"].items():
        data = (model_dir / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f"{model_dir.name} {variant}"
        assert len(data) == f["bytes"] and len(data) < 2 * 1024 * 1024
    assert set(m["thresholds"]) <= set(m["keywords"])


@pytest.mark.parametrize("model_dir", shipped(), ids=lambda d: d.name)
def test_golden_features_and_posteriors(model_dir):
    g = json.loads((model_dir / "golden" / "golden.json").read_text())
    m = json.loads((model_dir / "manifest.json").read_text())
    sessions = {v: session(model_dir / f["path"]) for v, f in m["files"].items()}
    for clip in g["clips"]:
        want = np.array(clip["features"], dtype=np.float32).reshape(clip["features_shape"])
        feats = mfcc(read_wav(model_dir / "golden" / clip["wav"]))
        assert np.abs(feats - want).max() <= 1e-4, clip["wav"]
        for variant, sess in sessions.items():
            probs = sess.run(["probs"], {"features": want[None]})[0][0]
            ref = np.array(clip[f"probs_{variant}"], dtype=np.float32)
            assert np.abs(probs - ref).max() <= 1e-5, f"{clip['wav']} {variant}"


@pytest.mark.parametrize("model_dir", shipped(), ids=lambda d: d.name)
def test_golden_stream_trace_and_events(model_dir):
    g = json.loads((model_dir / "golden" / "golden.json").read_text())["stream"]
    m = json.loads((model_dir / "manifest.json").read_text())
    x = read_wav(model_dir / "golden" / g["wav"])
    wins = windows(x, g["hop_frames"])
    feats = np.stack([w[2] for w in wins])
    dec = DecoderConfig(smoothing_ms=g["decoder"]["smoothing_ms"], refractory_ms=g["decoder"]["refractory_ms"],
                        hop_frames=g["hop_frames"])
    # The goldens are the events the crate gives with the manifest's defaults.
    assert g["decoder"] == m["decoder"], "golden stream decoded with another decoder than the manifest's"
    assert g["thresholds"] == m["thresholds"], "golden stream decoded at other thresholds than the manifest's"
    for variant, f in m["files"].items():
        probs = session(model_dir / f["path"]).run(["probs"], {"features": feats})[0]
        want = np.array([t["probs"] for t in g[f"trace_{variant}"]], dtype=np.float32)
        assert probs.shape == want.shape
        assert np.abs(probs - want).max() <= 1e-5, variant
        events = decode([(s, e, p) for (s, e, _), p in zip(wins, probs)], g["thresholds"], dec)
        assert [e.__dict__ for e in events] == g[f"events_{variant}"], variant
        assert events, "the golden stream must produce events"
