#!/usr/bin/env bash
# Everything `make -C deploy test` needs on a fresh Debian 12 machine (root; idempotent and quick when
# already installed): the ONNX Runtime libraries (x86-64 and aarch64, from the pinned PyPI wheels),
# the arm64 cross toolchain with qemu-user 10, Prometheus + promtool, python3-venv, and a font for
# the plots. Nothing is downloaded from outside apt, PyPI and crates.io.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

"$here/fetch-onnxruntime.sh" "$(uname -m)"
"$here/setup-arm64.sh"
"$here/tests/install-deps.sh"
if ! fc-list 2>/dev/null | grep -qi dejavu && [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core
fi
echo "setup-ci: ok"
