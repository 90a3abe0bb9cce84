#!/usr/bin/env bash
# CI test of the Python example: generate stubs from proto/ into a temp dir, start the real
# kws-service on free loopback ports, stream the golden WAV through kws_stream.py, check that the
# model's known keywords come back, and always stop the server.
#
#   pip install -r client/python/requirements.txt
#   bash client/python/test_example.sh
#
# Environment: PYTHON (default python3); KWS_SERVICE_BIN (default target/release/kws-service, built
# with `cargo build --release -p kws-service` if missing); KWS_ORT_LIB (default
# .ort/<arch>/libonnxruntime.so, from deploy/fetch-onnxruntime.sh).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
ort_lib="${KWS_ORT_LIB:-$repo/.ort/$(uname -m)/libonnxruntime.so}"
bin="${KWS_SERVICE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/kws-service}"
[[ -f "$ort_lib" ]] || { echo "ONNX Runtime not found at $ort_lib (run deploy/fetch-onnxruntime.sh)" >&2; exit 1; }
if [[ ! -x "$bin" ]]; then
  cargo build --release -p kws-service
fi

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$python" -m grpc_tools.protoc -I proto --python_out="$tmp" --grpc_python_out="$tmp" proto/kws/v1/kws.proto
touch "$tmp/kws/__init__.py" "$tmp/kws/v1/__init__.py"

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port="$(free_port)"
metrics_port="$(free_port)"

KWS_ORT_LIB="$ort_lib" KWS_MODELS_DIR="$repo/models" KWS_LISTEN="127.0.0.1:$port" \
  KWS_METRICS_LISTEN="127.0.0.1:$metrics_port" KWS_DRAIN_GRACE_MS=1000 \
  "$bin" >"$tmp/server.log" 2>&1 &
server_pid=$!

# Wait for the gRPC port (model loading takes a moment).
for i in $(seq 100); do
  if "$python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then echo "kws-service exited:" >&2; cat "$tmp/server.log" >&2; exit 1; fi
  [[ $i == 100 ]] && { echo "kws-service did not listen on $port" >&2; cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.2
done

wav="models/tc-resnet8/golden/stream.wav"
set +e
"$python" client/python/kws_stream.py --stubs "$tmp" --addr "127.0.0.1:$port" --json "$wav" >"$tmp/out.jsonl"
status=$?
set -e
cat "$tmp/out.jsonl"

# The default model (int8) detects exactly the golden events of the stream, in order: its cascade's
# (first stage + verifier, models 2.0.0) when the manifest has a verifier.
"$python" - "$tmp/out.jsonl" "$status" <<'PY'
import json, sys
got = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
stream = json.load(open("models/tc-resnet8/golden/golden.json"))["stream"]
want = stream["cascade"]["events_int8"] if "cascade" in stream else stream["events_int8"]
status = int(sys.argv[2])
ok = status == 0 and [(e["keyword"], e["start_ms"], e["end_ms"]) for e in got] == \
     [(e["keyword"], e["start_ms"], e["end_ms"]) for e in want]
if not ok:
    print(f"FAIL: exit {status}, got {got}, want {want}", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(1)
print("python example: keywords", ", ".join(e["keyword"] for e in got))
print("1 passed, 0 failed")
PY
