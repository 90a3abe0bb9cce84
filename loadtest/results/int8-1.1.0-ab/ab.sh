#!/bin/bash
# A/B: the same fixed load against the 1.0.0 and the 1.1.0 int8 TC-ResNet8, one after the other
# (run as `ab.sh old1 new1 old2 new2`, 2026-11-30, this 2-core AVX-512 VNNI machine otherwise idle).
# /tmp/mold/tc-resnet8 holds the 1.0.0 files: `git show 9f8bc1b:models/tc-resnet8/<file>` for
# manifest.json, model.onnx and model.int8.onnx. Results: <version>-run<N>.json beside this file.
cd /work/main
ulimit -n 65536
for run in "$@"; do
  case $run in old*) dir=/tmp/mold ;; new*) dir=$PWD/models ;; esac
  KWS_ORT_LIB=$PWD/.ort/x86_64/libonnxruntime.so KWS_MODELS_DIR=$dir KWS_LISTEN=127.0.0.1:50071 \
    KWS_METRICS_LISTEN=127.0.0.1:9171 KWS_MAX_STREAMS=8192 target/release/kws-service > /tmp/ab-$run.srv.log 2>&1 &
  pid=$!
  sleep 3
  target/release/kws-loadtest --addr 127.0.0.1:50071 --server-pid $pid --streams 200 --duration-s 40 --ramp-up-s 10 --json /tmp/ab-$run.json > /tmp/ab-$run.log 2>&1
  kill -TERM $pid; wait $pid
done
