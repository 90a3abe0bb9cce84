#!/usr/bin/env bash
# Re-extract the verifier's two feature models (models/speech-embedding/) from their source, the
# pinned `openwakeword` wheel on PyPI, and check them. The files are committed; this script shows
# where they come from and checks that the committed copies are exactly the wheel's.
#
#   deploy/fetch-speech-embedding.sh [--check]
#
# Without --check it (re)writes both files into models/speech-embedding/ (or $KWS_SPEECH_EMBEDDING_DIR)
# after checking the wheel's and each file's sha256; with --check it writes nothing and fails if the
# committed files differ from the wheel's. Set KWS_OWW_WHEEL to a local copy of the wheel to skip the
# download. Only the two feature models are taken: openWakeWord's wake-word models (alexa, hey_jarvis,
# ...) and its VAD are not extracted. Licence and I/O contract: models/speech-embedding/README.md.
set -euo pipefail

OWW_VERSION=0.4.0
WHEEL=openwakeword-$OWW_VERSION-py3-none-any.whl
WHEEL_SHA256=2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075
declare -A FILE_SHA256=(
  [melspectrogram.onnx]=ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f
  [embedding_model.onnx]=ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51
)

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${KWS_SPEECH_EMBEDDING_DIR:-$root/models/speech-embedding}
check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wheel=${KWS_OWW_WHEEL:-}
if [ -z "$wheel" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "openwakeword==$OWW_VERSION"
  wheel=$tmp/$WHEEL
fi
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet - || {
  echo "fetch-speech-embedding: sha256 mismatch for $wheel (expected $WHEEL_SHA256)" >&2
  exit 1
}

mkdir -p "$tmp/out"
for name in "${!FILE_SHA256[@]}"; do
  unzip -p "$wheel" "openwakeword/resources/models/$name" > "$tmp/out/$name"
  echo "${FILE_SHA256[$name]}  $tmp/out/$name" | sha256sum --check --quiet - || {
    echo "fetch-speech-embedding: $name in the wheel has an unexpected sha256 (expected ${FILE_SHA256[$name]})" >&2
    exit 1
  }
  if [ "$check" = 1 ]; then
    cmp -s "$tmp/out/$name" "$dest/$name" || {
      echo "fetch-speech-embedding: $dest/$name differs from the wheel's copy (or is missing)" >&2
      exit 1
    }
    echo "fetch-speech-embedding: $dest/$name matches openwakeword $OWW_VERSION"
  else
    mkdir -p "$dest"
    cp "$tmp/out/$name" "$dest/$name"
    echo "fetch-speech-embedding: wrote $dest/$name (sha256 ${FILE_SHA256[$name]})"
  fi
done
