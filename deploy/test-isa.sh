#!/usr/bin/env bash
# The instruction-set paths ONNX Runtime can take must agree: x86-64 natively (AVX-512 VNNI or AVX2,
# whichever this machine has), x86-64 AVX2 forced under qemu-x86_64, and arm64 under qemu-aarch64.
#
#   1. deploy/setup-arm64.sh: Rust target, cross gcc, qemu-user >= 10 (qemu-x86_64 and qemu-aarch64),
#      ONNX Runtime for aarch64 (idempotent; about a second when all is installed);
#   2. native x86-64: the isa_parity test writes the reference results to $KWS_PARITY_DIR/x86_64/
#      (default target/parity/);
#   3. x86-64 AVX2: the same debug test binaries (no rebuild) run under `qemu-x86_64 -cpu Haswell-v4`,
#      which offers AVX2 and no VNNI, so ONNX Runtime takes its AVX2 int8 kernels on any host: the
#      golden tests and isa_parity (checks it got the AVX2 path, compares with the reference), for
#      the int8 models only (fp32 does not saturate anywhere, and emulated fp32 takes minutes);
#      Also the verifier's golden test (tests/verifier.rs, fp32 speech-embedding models and head vs
#      Python onnxruntime) on one clip (KWS_VERIFIER_QUICK=1: an embedding costs seconds under TCG;
#      the shipped cascade's golden, 18 clips, runs natively only), and the streaming test
#      (tests/streaming.rs, int8 only: tc-resnet8-stream's int8 streaming graph vs its windowed int8
#      graph at 1e-6);
#   4. aarch64: the golden tests (fp32 and int8), the verifier's (one clip), the streaming test
#      (tests/streaming.rs: tc-resnet8-stream's streaming graphs vs its windowed graphs on the same
#      windows, fp32 at 1e-5 and int8 at 1e-6, chunk sizes, batching; its cascade-on-streaming test
#      runs natively only, like the shipped cascade's golden) and isa_parity (int8)
#      for aarch64-unknown-linux-gnu,
#      run under qemu-aarch64 (the runner in .cargo/config.toml; qemu's default CPU has the i8mm
#      extension), then isa_parity and the int8 streaming test again on a CPU with the dot product
#      only (Neoverse-N1) and on one with neither (Cortex-A53): ONNX Runtime has an int8 kernel
#      family for each.
#
#   deploy/test-isa.sh [extra cargo test arguments for steps 3 and 4, e.g. -- --nocapture]
#
# The chunking and property tests (pure Rust, no ONNX Runtime arithmetic) run natively in
# `cargo test --workspace`; under qemu they cost minutes and test nothing ISA-specific, so they
# run here only with KWS_ISA_ALL_TESTS=1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/deploy/setup-arm64.sh"

export KWS_PARITY_DIR=${KWS_PARITY_DIR:-$root/target/parity}
x86_lib="$root/.ort/x86_64/libonnxruntime.so"
arm_lib="$root/.ort/aarch64/libonnxruntime.so"
tests=(--test golden --test isa_parity)
[ "${KWS_ISA_ALL_TESTS:-0}" = 1 ] && tests=()

# Each build loads its own architecture's ONNX Runtime: KWS_ORT_LIB (which `make` exports for the
# host) must not leak into the aarch64 run.
echo "test-isa: native x86-64 reference (isa_parity)"
KWS_ORT_LIB="$x86_lib" cargo test --locked -p kws-models --test isa_parity

echo "test-isa: x86-64 AVX2 path under qemu-x86_64 -cpu Haswell-v4"
KWS_ORT_LIB="$x86_lib" KWS_ISA_PATH=x86-avx2 KWS_EXPECT_INT8_KERNELS=avx2 KWS_TEST_VARIANTS=int8 \
  KWS_VERIFIER_QUICK=1 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="qemu-x86_64 -cpu Haswell-v4" \
  cargo test --locked -p kws-models --test golden --test isa_parity --test verifier --test streaming "$@"

echo "test-isa: aarch64 under qemu-aarch64 (cpu max: NEON i8mm kernels)"
if [ ${#tests[@]} -gt 0 ]; then
  # The golden tests cover fp32 on arm64 (NEON fp32 kernels); the parity run adds int8 at 1e-5.
  KWS_ORT_LIB="$arm_lib" KWS_VERIFIER_QUICK=1 \
    cargo test --locked -p kws-models --target aarch64-unknown-linux-gnu --test golden --test verifier \
      --test streaming "$@"
  KWS_ORT_LIB="$arm_lib" KWS_ISA_PATH=arm64-i8mm KWS_EXPECT_INT8_KERNELS=neon-i8mm KWS_TEST_VARIANTS=int8 \
    cargo test --locked -p kws-models --target aarch64-unknown-linux-gnu --test isa_parity "$@"
else
  KWS_ORT_LIB="$arm_lib" KWS_ISA_PATH=arm64-i8mm KWS_EXPECT_INT8_KERNELS=neon-i8mm \
    cargo test --locked -p kws-models --target aarch64-unknown-linux-gnu "$@"
fi

# Phones differ in their int8 instructions: the other two kernel families, int8 only (parity, and
# the int8 streaming graph vs the windowed one; the cascade tests, whose verifier clips cost seconds
# each under TCG, are skipped as on the paths above).
for cpu in neoverse-n1:neon-dotprod cortex-a53:neon; do
  echo "test-isa: aarch64 under qemu-aarch64 -cpu ${cpu%%:*} (${cpu##*:} kernels)"
  KWS_ORT_LIB="$arm_lib" KWS_ISA_PATH="arm64-${cpu##*:}" KWS_EXPECT_INT8_KERNELS="${cpu##*:}" KWS_TEST_VARIANTS=int8 \
    KWS_VERIFIER_QUICK=1 CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu ${cpu%%:*} -L /usr/aarch64-linux-gnu" \
    cargo test --locked -p kws-models --target aarch64-unknown-linux-gnu --test isa_parity --test streaming "$@"
done
