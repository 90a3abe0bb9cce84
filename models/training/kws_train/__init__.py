"""Training, evaluation and export pipeline for the kws keyword models.

Modules:
- `frontend`: the MFCC reference implementation (numpy, float64) and its batched torch twin.
- `synth`: deterministic synthesis of the training/evaluation audio from the allowed TTS voices.
- `data`: loading synthesized shards, voice/engine splits and waveform augmentation.
- `model`: TC-ResNet8 / TC-ResNet14 (Choi et al. 2019).
- `train`, `evaluate`, `export`: the recipe, the metrics, ONNX + int8 + manifest + golden vectors.
- `distill`: the verifier head's probabilities of the training keyword clips, as soft targets for `train`.
"""

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
#: Output order of the model's `probs` tensor. Never reorder: manifests and the Rust side rely on it.
CLASSES = KEYWORDS + [SILENCE, UNKNOWN]
SAMPLE_RATE = 16000
