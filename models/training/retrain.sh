#!/usr/bin/env bash
# Regenerate everything model-side from nothing: install the TTS voices (Debian apt, needs root),
# synthesize the training data and the streaming evaluation corpus, train, evaluate and export both
# shipped models (fp32 + int8 ONNX, manifest, golden vectors) into models/<name>/.
#
#   models/training/retrain.sh [tc-resnet8 tc-resnet14-1.5 tc-resnet8-stream]
#
# Deterministic (fixed seeds); ~25 min of synthesis and ~25-40 min of training per model on 2 cores (TC-ResNet8 2.1.0: 38 min)
# (both models train side by side, one thread each; name tc-resnet8-stream to retrain the streamable
# model too, whose streaming graphs are exported after its windowed ones). Environment: VENV (default models/training/.venv),
# VERSION of the exported models (default 1.0.0). Export measures onnxruntime latency: keep the
# machine otherwise idle for the numbers in the manifests to mean something.
# NEGSPEECH_MINUTES=N (default 3) sets the minutes of negative-speech tracks per engine (espeak 3N) in
# data/negspeech, which TC-ResNet8's recipe trains on.
# The manifest thresholds are calibrated on the streaming validation set (data/valcorpus2, built here
# if missing, ~6 CPU minutes) to 5 false alarms per hour, and the goldens are written anew at them
# (checked on every ISA path whose score_features binary is built: models/README.md, "int8 across
# CPUs"; the others are skipped with a warning).
# VALCORPUS=1 also builds the smaller research validation set in data/valcorpus.
# VERIFIER=0 skips the second stage (the verifier head, the cascade's thresholds and golden; see the end).
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
"$PY" -m kws_train.synth --out data --engines gnuspeech  # TC-ResNet8 2.1.0's recipe trains on GnuSpeech too
"$PY" -m kws_train.evalcorpus --out data/evalcorpus      # streams for FA/h (kws-client eval)
# Continuous negative speech of every training engine (not the held-out awb), 3 minutes each (espeak 9):
# 30 % of each TC-ResNet8 2.1.0 batch, and the verifier's mined windows below.
ENGINES=espeak,flite-kal16,flite-rms,festival-kal,freetts-kevin16,festival-it-lp,festival-it-pc,festival-cs-dita
ENGINES=$ENGINES,festival-cs-krb,festival-cs-machac,festival-cs-ph,festival-fi-lj,festival-fi-mv,festival-ru
ENGINES=$ENGINES,festival-ca-ona,festival-hi,festival-mr,festival-te,gnuspeech
[ -f data/negspeech/gnuspeech.npz ] || \
  "$PY" -m kws_train.negspeech --out data --minutes "${NEGSPEECH_MINUTES:-3}" --workers 2 --engines "$ENGINES"
# espeak-ng's voices of eight other languages (engine `espeak-foreign`, in `synth`'s default engines): 8 minutes
# of their speech for the verifier's v4 windows below (no first-stage recipe trains on them). Before `mine`,
# which scores every engine's tracks.
[ -f data/negspeech/espeak-foreign.npz ] || \
  "$PY" -m kws_train.negspeech --out data --minutes 8 --workers 2 --engines espeak-foreign
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
  if [[ $m == *-stream ]]; then  # the streaming graphs (fp32 + int8 from the windowed int8) and their check
    "$PY" -m kws_train.streaming export --run "runs/$m" --model-dir "../$m" --hop 2 --int8
    "$PY" -m kws_train.streaming check --model-dir "../$m"
  fi
done
# Posterior smoothing of the shipped decoder (lever 6, models/RESEARCH.md round 5): TC-ResNet8 since 2.2.0
# averages 300 ms of posteriors, and so do tc-resnet8-stream since 2.2.0-streaming and TC-ResNet14-1.5 since 2.1.0 (round 11). Set before calibrating: the
# validation caches, thresholds and goldens below are decoded with the manifest's decoder.
declare -A SMOOTHING_MS=([tc-resnet8]=300 [tc-resnet8-stream]=300 [tc-resnet14-1.5]=300)
for m in "${MODELS[@]}"; do
  [ -n "${SMOOTHING_MS[$m]:-}" ] || continue
  "$PY" - "../$m/manifest.json" "${SMOOTHING_MS[$m]}" <<'PY'
import json, sys
p, ms = sys.argv[1], int(sys.argv[2])
m = json.load(open(p))
m["decoder"]["smoothing_ms"] = ms
open(p, "w").write(json.dumps(m, indent=1) + "\n")
PY
done
# Streaming models are served fp32 (`make serve`), so they are calibrated on their fp32 posteriors.
variant() { if [[ $1 == *-stream ]]; then echo fp32; else echo int8; fi; }
[ -f data/valcorpus2/manifest.jsonl ] || \
  "$PY" -m kws_train.valcorpus --out data/valcorpus2 --pos-minutes 30 --neg-minutes 100 --near-minutes 30
for m in "${MODELS[@]}"; do
  "$PY" -m kws_train.verifier embed --manifest data/valcorpus2/manifest.jsonl --first-stage-only \
    --model-dir "../$m" --variant "$(variant "$m")" --cache "runs/val2-cache-$m"
  "$PY" -m kws_train.calibrate --cache "runs/val2-cache-$m" --budget 5 --folds 2 --write-manifest "../$m/manifest.json" \
    --validation-set "valcorpus --pos-minutes 30 --neg-minutes 100 --near-minutes 30"
  "$PY" -m kws_train.quant golden --model-dir "../$m" --config "configs/$m.toml"
done

# Second stage (models 2.0.0): the verifier head on the speech-embedding features (models/speech-embedding;
# deploy/fetch-speech-embedding.sh re-extracts them), trained on 36 000 synthesized 2.3-s windows (TC-ResNet8 since
# 2.4.0: 60 000, some of them voice-converted, below; since 2.5.0 twelve heads averaged); then per
# model the cascade's first-stage threshold (one of 0.5-0.99) and one verifier threshold for all keywords,
# calibrated on the validation streams to an FA/h budget with the verifier run per candidate clip as the Rust crate
# runs it, and the cascade golden. Several CPU hours on 2 cores (each 12 000-window run ~6 CPU min of
# synthesis + embedding on an idle box, 40+ min wall under load). VERIFIER=0 skips it.
if [ "${VERIFIER:-1}" = 1 ]; then
  mkdir -p data/mined runs/verifier
  "$PY" -m kws_train.mine --data data --model ../tc-resnet8/model.int8.onnx --out data/mined/tc8-int8-0.3.jsonl \
    --threshold 0.3 --spacing-ms 300
  for s in 7 8 9 10; do
    "$PY" -m kws_train.verifier windows --data data --config configs/research/v2-voices.toml \
      --mined data/mined/tc8-int8-0.3.jsonl --out "runs/verifier/win-$s.npz" --count 12000 --seed "$s"
  done
  "$PY" -m kws_train.verifier train --windows runs/verifier/win-7.npz runs/verifier/win-8.npz runs/verifier/win-9.npz \
    --out runs/verifier/head --epochs 40 --arch conv --val-frac 0.1
  # TC-ResNet8's head in 2.4.0 (models/RESEARCH.md round 8): the same recipe on 60 000 windows, the
  # 36 000 above plus 12 000 more and 12 000 with WORLD voice-converted copies of half of every training
  # engine's clips (needs pyworld: requirements-vc.txt; awb and the validation accents stay out); since
  # 2.5.0 the pool `b60` of the averaged head below.
  "$VENV/bin/pip" install -q -r requirements-vc.txt
  [ -f data/vc/gnuspeech.npz ] || "$PY" -m kws_train.voiceconv --data data --engines "$ENGINES" --fraction 0.5 --workers 2
  "$PY" -m kws_train.verifier windows --data data --config configs/research/v3-voiceconv.toml \
    --mined data/mined/tc8-int8-0.3.jsonl --out runs/verifier/win-10-vc.npz --count 12000 --seed 10
  # TC-ResNet8's head since 2.5.0 (models/RESEARCH.md round 9): twelve heads averaged (`verifier average`: one
  # graph, the mean of their probabilities): the recipe above with seeds 1-3 on each of four window pools,
  # the 60 000 windows; + 24 000 more of the same two kinds; + 24 000 with espeak-foreign clips and speech
  # (configs/research/v4-espeak-foreign.toml); + all 48 000 (108 000). ~3 min per head on 2 threads.
  "$PY" -m kws_train.verifier windows --data data --config configs/research/v2-voices.toml \
    --mined data/mined/tc8-int8-0.3.jsonl --out runs/verifier/win-11.npz --count 12000 --seed 11
  "$PY" -m kws_train.verifier windows --data data --config configs/research/v3-voiceconv.toml \
    --mined data/mined/tc8-int8-0.3.jsonl --out runs/verifier/win-11-vc.npz --count 12000 --seed 11
  for s in 11 12; do
    "$PY" -m kws_train.verifier windows --data data --config configs/research/v4-espeak-foreign.toml \
      --mined data/mined/tc8-int8-0.3.jsonl --out "runs/verifier/win-$s-ef.npz" --count 12000 --seed "$s"
  done
  W60="runs/verifier/win-7.npz runs/verifier/win-8.npz runs/verifier/win-9.npz runs/verifier/win-10.npz runs/verifier/win-10-vc.npz"
  declare -A POOL=([b60]="$W60" [a84]="$W60 runs/verifier/win-11.npz runs/verifier/win-11-vc.npz"
                   [ef84]="$W60 runs/verifier/win-11-ef.npz runs/verifier/win-12-ef.npz"
                   [ef108]="$W60 runs/verifier/win-11.npz runs/verifier/win-11-vc.npz runs/verifier/win-11-ef.npz runs/verifier/win-12-ef.npz")
  members=()
  for pool in b60 a84 ef84 ef108; do
    for seed in 1 2 3; do
      # shellcheck disable=SC2086
      "$PY" -m kws_train.verifier train --windows ${POOL[$pool]} --out "runs/verifier/head-$pool-s$seed" \
        --epochs 40 --arch conv --val-frac 0.1 --seed "$seed"
      members+=("runs/verifier/head-$pool-s$seed/head.pt")
    done
  done
  "$PY" -m kws_train.verifier average --heads "${members[@]}" --out runs/verifier/head-avg12
  declare -A HEAD=([tc-resnet8]=runs/verifier/head-avg12/head.onnx [tc-resnet14-1.5]=runs/verifier/head-avg12/head.onnx)
  # Candidate rule and budget (models/RESEARCH.md round 7): since 2.3.0 TC-ResNet8 and its streaming
  # twin propose a candidate when the keywords' summed smoothed score reaches t1 (`keyword_mass`) and are
  # calibrated to 2 FA/h, and so is TC-ResNet14-1.5 since 2.1.0 (round 11: retrained with TC-ResNet8's recipe,
  # 300-ms smoothing, TC-ResNet8's averaged head and three views).
  declare -A RULE=([tc-resnet8]=keyword_mass [tc-resnet8-stream]=keyword_mass [tc-resnet14-1.5]=keyword_mass)
  declare -A BUDGET=([tc-resnet8]=2 [tc-resnet8-stream]=2 [tc-resnet14-1.5]=2)
  # Verdicts (models/RESEARCH.md round 10): since 2.6.0 TC-ResNet8's verifier takes, per class, the least
  # of its head's probabilities over the candidate's view and the views 80 ms either side (one clip of 11
  # embeddings; manifest `verifier.view_shifts`, written by calibrate from the clip table).
  declare -A VIEW_SHIFTS=([tc-resnet8]=1 [tc-resnet14-1.5]=1)
  for m in "${MODELS[@]}"; do
    rule=${RULE[$m]:-best_keyword}
    head=${HEAD[$m]:-runs/verifier/head/head.onnx}
    "$PY" -m kws_train.verifier clip-table --cache "runs/val2-cache-$m" --audio-dir data/valcorpus2 \
      --head "$head" --min-t1 0.5 --candidate-rule "$rule" --view-shifts "${VIEW_SHIFTS[$m]:-0}" \
      --out "runs/verifier/clips-val2-$m.npz"
    "$PY" -m kws_train.calibrate --cache "runs/val2-cache-$m" --budget "${BUDGET[$m]:-5}" --folds 2 \
      --head "$head" --candidate-rule "$rule" \
      --clip-table "runs/verifier/clips-val2-$m.npz" --t1 0.5,0.7,0.8,0.9,0.95,0.98,0.99 --single \
      --grid 0.3,0.5,0.7,0.8,0.9,0.95,0.97,0.98,0.99,0.995,0.998,0.999 --write-manifest "../$m/manifest.json" \
      --validation-set "valcorpus --pos-minutes 30 --neg-minutes 100 --near-minutes 30; verifier clip-table per candidate clip"
    "$PY" -m kws_train.verifier_golden shipped --model-dir "../$m"
  done
fi
"$PY" -m pytest -q tests
