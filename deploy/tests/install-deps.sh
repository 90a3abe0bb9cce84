#!/usr/bin/env bash
# System packages deploy/tests/run.sh needs: Debian's `prometheus` (Prometheus 2.42 and promtool on
# Debian 12), plus python3-venv for the test venv. Root (or sudo); idempotent: apt runs only if
# something is missing. The package's service is not started (there is no init system in CI, and the
# test starts its own Prometheus on 127.0.0.1).
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "install-deps: '$*' needs root" >&2; exit 1
  fi
}

missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: present ($(prometheus --version 2>&1 | head -n1))"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
