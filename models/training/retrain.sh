#!/usr/bin/env bash
# Regenerate everything model-side from nothing: install the TTS voices (Debian apt, needs root),
# synthesize the training data and the streaming evaluation corpus, train, evaluate and export both
# shipped models (fp32 + int8 ONNX, manifest, golden vectors) into models/<name>/.
#
#   models/training/retrain.sh [tc-resnet8 tc-resnet14-1.5]
#
# Deterministic (fixed seeds); ~25 min of synthesis and ~25-30 min of training per model on 2 cores
# (both models train side by side, one thread each). Environment: VENV (default models/training/.venv),
# VERSION of the exported models (default 1.0.0). Export measures onnxruntime latency: keep the
# machine otherwise idle for the numbers in the manifests to mean something.
# Optional data of the detection-quality work (no shipped recipe uses it yet): NEGSPEECH_MINUTES=N
# synthesizes N minutes of negative-speech tracks per engine (espeak 3N) into data/negspeech;
# VALCORPUS=1 builds the streaming validation set in data/valcorpus (see models/README.md).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
VERSION=${VERSION:-1.0.0}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(tc-resnet8 tc-resnet14-1.5)

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r requirements.txt
PY="$VENV/bin/python"

"$PY" -m kws_train.synth --out data                      # installs the voices with apt-get first
"$PY" -m kws_train.evalcorpus --out data/evalcorpus      # streams for FA/h (kws-client eval)
if [ "${NEGSPEECH_MINUTES:-0}" != 0 ]; then
  "$PY" -m kws_train.negspeech --out data --minutes "$NEGSPEECH_MINUTES"
fi
if [ "${VALCORPUS:-0}" = 1 ]; then
  "$PY" -m kws_train.valcorpus --out data/valcorpus      # streams for selecting checkpoints/thresholds
fi

mkdir -p runs
pids=()
for m in "${MODELS[@]}"; do
  "$PY" -m kws_train.train --config "configs/$m.toml" --out "runs/$m" --threads 1 > "runs/$m.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for m in "${MODELS[@]}"; do
  "$PY" -m kws_train.export --run "runs/$m" --model-dir "../$m" --version "$VERSION" \
    --command "python -m kws_train.train --config configs/$m.toml --out runs/$m --threads 1"
done
"$PY" -m pytest -q tests
