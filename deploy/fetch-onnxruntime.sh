#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that `ort` (load-dynamic) opens at run time.
#
# The only reachable source is PyPI, so the library is taken out of the pinned `onnxruntime` wheel
# (manylinux_2_28, glibc >= 2.28) and checked against a pinned sha256. Idempotent: does nothing if the
# library is already in place.
#
#   deploy/fetch-onnxruntime.sh [x86_64|aarch64 ...]   (default: this machine's arch)
#
# Result: .ort/<arch>/libonnxruntime.so (+ the versioned file) under the repository root, or under
# $KWS_ORT_DIR if set.
set -euo pipefail

ORT_VERSION=1.31.1
declare -A WHEEL_SHA256=(
  [x86_64]=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
  [aarch64]=da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3
)

root=$(cd "$(dirname "$0")/.." && pwd)
dest_root=${KWS_ORT_DIR:-$root/.ort}
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=("$(uname -m)")

for arch in "${archs[@]}"; do
  sha=${WHEEL_SHA256[$arch]:-}
  if [ -z "$sha" ]; then
    echo "fetch-onnxruntime: unsupported arch '$arch' (supported: ${!WHEEL_SHA256[*]})" >&2
    exit 2
  fi
  dest=$dest_root/$arch
  lib=$dest/libonnxruntime.so.$ORT_VERSION
  if [ -f "$lib" ] && [ -L "$dest/libonnxruntime.so" ]; then
    echo "fetch-onnxruntime: $lib present"
    continue
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 311 \
    --platform "manylinux_2_28_$arch" --dest "$tmp" "onnxruntime==$ORT_VERSION"
  wheel=$(ls "$tmp"/onnxruntime-"$ORT_VERSION"-*.whl)
  echo "$sha  $wheel" | sha256sum --check --quiet - || {
    echo "fetch-onnxruntime: sha256 mismatch for $wheel (expected $sha)" >&2
    exit 1
  }
  mkdir -p "$dest"
  python3 - "$wheel" "$dest" "$ORT_VERSION" <<'PY'
import sys, zipfile
wheel, dest, version = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z, open(f"{dest}/libonnxruntime.so.{version}", "wb") as out:
    out.write(z.read(name))
PY
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest/libonnxruntime.so"
  rm -rf "$tmp"
  trap - EXIT
  echo "fetch-onnxruntime: installed $lib"
done
