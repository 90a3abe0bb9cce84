#!/usr/bin/env bash
# Install what building and testing kws-models for aarch64 (under qemu-user) needs on Debian 12
# (bookworm; a later Debian works too and skips the backports step).
#
#   - the Rust target aarch64-unknown-linux-gnu (rustup);
#   - the cross linker and arm64 libc: apt `gcc-aarch64-linux-gnu libc6-dev-arm64-cross`;
#   - qemu-user >= 10 from bookworm-backports: Debian 12's own 7.2 segfaults inside ONNX Runtime's
#     CPU detection (it passes the host's x86 /proc/cpuinfo through). The backports suite is added
#     by copying the machine's own Debian stanza from /etc/apt/sources.list.d/debian.sources (or the
#     `deb .../debian bookworm main` line of /etc/apt/sources.list), so no mirror is named here;
#   - ONNX Runtime for aarch64 (deploy/fetch-onnxruntime.sh aarch64).
#
# Runs as root (or through sudo). Idempotent: every step checks first, and `apt-get update` runs only
# if something has to be installed, so a second run takes about a second.
# .cargo/config.toml names the linker and the qemu runner; then:
#   cargo test -p kws-models --target aarch64-unknown-linux-gnu
set -euo pipefail

TARGET=aarch64-unknown-linux-gnu
QEMU_MIN_MAJOR=10
APT_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
BACKPORTS_LIST=/etc/apt/sources.list.d/bookworm-backports.sources

root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "setup-arm64: $*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "setup-arm64: '$*' needs root (no sudo found)" >&2
    exit 1
  fi
}

# 1. Rust target.
if ! command -v rustup >/dev/null; then
  echo "setup-arm64: rustup not found; install the Rust toolchain first" >&2
  exit 1
fi
if rustup target list --installed | grep -qx "$TARGET"; then
  log "rust target $TARGET present"
else
  rustup target add "$TARGET"
fi

# 2. apt packages: cross gcc + arm64 libc, qemu-user >= 10.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
qemu_major() {
  command -v qemu-aarch64 >/dev/null || { echo 0; return; }
  qemu-aarch64 --version | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p' | head -n1
}
qemu_ok=false
[ "$(qemu_major)" -ge "$QEMU_MIN_MAJOR" ] 2>/dev/null && qemu_ok=true

if [ ${#missing[@]} -eq 0 ] && $qemu_ok; then
  log "apt packages present (${APT_PACKAGES[*]}, qemu-aarch64 $(qemu_major).x)"
else
  export DEBIAN_FRONTEND=noninteractive
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  # Only bookworm needs backports; a later Debian ships qemu-user >= 10 itself.
  use_backports=false
  [ "$codename" = bookworm ] && ! $qemu_ok && use_backports=true
  if $use_backports && [ ! -s "$BACKPORTS_LIST" ]; then
    # Copy the stanza of the main Debian archive (URIs ending in /debian, not /debian-security) and
    # point it at bookworm-backports. Deb822 first, then the one-line format.
    stanza=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      stanza=$(awk -v RS= -v ORS='\n\n' '/URIs: [^ ]*\/debian\n/ || /URIs: [^ ]*\/debian$/' \
        /etc/apt/sources.list.d/debian.sources |
        sed -e 's/^Suites: .*/Suites: bookworm-backports/' -e 's/^Components: .*/Components: main/')
    fi
    if [ -z "$stanza" ] && [ -f /etc/apt/sources.list ]; then
      uri=$(awk '$1 == "deb" && $3 == "bookworm" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list)
      if [ -n "$uri" ]; then
        stanza=$(printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
          "$uri" /usr/share/keyrings/debian-archive-keyring.gpg)
      fi
    fi
    if [ -z "$stanza" ]; then
      echo "setup-arm64: no Debian bookworm source found in /etc/apt to derive bookworm-backports from" >&2
      exit 1
    fi
    printf '%s\n' "$stanza" | as_root tee "$BACKPORTS_LIST" >/dev/null
    log "added bookworm-backports ($BACKPORTS_LIST)"
  fi
  as_root apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  if $use_backports; then
    as_root apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-user
  elif ! $qemu_ok; then
    as_root apt-get install -y -qq --no-install-recommends qemu-user
  fi
  major=$(qemu_major)
  if [ "${major:-0}" -lt "$QEMU_MIN_MAJOR" ]; then
    echo "setup-arm64: qemu-aarch64 is version ${major:-none}, need >= $QEMU_MIN_MAJOR" >&2
    exit 1
  fi
  log "installed: ${missing[*]} qemu-aarch64 $major.x"
fi

# 3. ONNX Runtime for aarch64 (no-op if present).
"$root/deploy/fetch-onnxruntime.sh" aarch64
log "ready: cargo test -p kws-models --target $TARGET"
