#!/usr/bin/env bash
# Build and test kws-models for arm64 under qemu, and check it against the x86-64 build.
#
#   1. deploy/setup-arm64.sh: Rust target, cross gcc, qemu-user >= 10, ONNX Runtime for aarch64
#      (idempotent; about a second when all is installed);
#   2. the x86-64 arch_parity test, which writes the reference results to
#      $KWS_PARITY_DIR/x86_64/ (default target/parity/);
#   3. every kws-models test for aarch64-unknown-linux-gnu, run under qemu-aarch64 (the runner in
#      .cargo/config.toml); arch_parity among them compares with the x86-64 results.
#
#   deploy/test-arm64.sh [extra cargo test arguments for step 3, e.g. -- --nocapture]
#
# Time (2 cores shared with other jobs, 2026-11): cold aarch64 debug build of the tests ~6.5 min,
# the aarch64 tests under qemu 4.5-6.5 min (chunking.rs is most of it); warm re-runs skip the build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/deploy/setup-arm64.sh"

export KWS_PARITY_DIR=${KWS_PARITY_DIR:-$root/target/parity}
# Each build loads its own architecture's ONNX Runtime: KWS_ORT_LIB (which `make` exports for the
# host) must not leak into the aarch64 run.
echo "test-arm64: x86-64 reference (arch_parity)"
KWS_ORT_LIB="$root/.ort/x86_64/libonnxruntime.so" cargo test -p kws-models --test arch_parity
echo "test-arm64: aarch64 tests under qemu"
KWS_ORT_LIB="$root/.ort/aarch64/libonnxruntime.so" cargo test -p kws-models --target aarch64-unknown-linux-gnu "$@"
