#!/usr/bin/env bash
# Install the real Mooncake Transfer Engine (pip wheel for hosts without CUDA)
# into its own venv, for the interop tests and golden captures. It must never
# share a process with pymooncake: tests run it as a subprocess with the venv's
# python.
#
#   scripts/install-mooncake.sh            # venv at <repo>/.venv-mooncake
#   MOONCAKE_VENV=/opt/mc scripts/install-mooncake.sh
#
# Idempotent: an existing venv that already holds the pinned version and
# imports is left alone. Needs root (or sudo) for apt-get when a runtime
# library is missing. Python: $MOONCAKE_BASE_PYTHON, default python3.11 (the
# wheel is built per CPython minor; 3.11 is what CI runs).
set -euo pipefail

MOONCAKE_WHEEL="mooncake-transfer-engine-non-cuda"
MOONCAKE_VERSION="0.3.13.post1"
# Runtime libraries the wheel's .so files link against and does not bundle
# (found with ldd on mooncake/*.so; the wheel bundles glog, gflags, jsoncpp,
# yaml-cpp, liburing, zstd, xxhash and the etcd Go wrapper itself).
APT_PACKAGES=(libibverbs1 libnuma1 libcurl4)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOONCAKE_VENV:-$repo/.venv-mooncake}"
base_python="${MOONCAKE_BASE_PYTHON:-python3.11}"

die() { echo "install-mooncake: ERROR: $*" >&2; exit 1; }
log() { echo "install-mooncake: $*" >&2; }

check() {
  # Imports the engine and brings one up on loopback: proves the wheel and
  # every shared library it needs are present.
  MC_FORCE_TCP=1 MC_LOG_LEVEL=ERROR "$venv/bin/python" - "$MOONCAKE_VERSION" <<'EOF'
import sys
from importlib.metadata import version
want = sys.argv[1]
got = version("mooncake-transfer-engine-non-cuda")
if got != want:
    sys.exit(f"installed {got}, want {want}")
from mooncake.engine import TransferEngine
te = TransferEngine()
rc = te.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
if rc != 0:
    sys.exit(f"initialize returned {rc}")
EOF
}

if [[ -x "$venv/bin/python" ]] && check >/dev/null 2>&1; then
  log "mooncake $MOONCAKE_VERSION already installed in $venv"
  exit 0
fi

# Runtime libraries first, so the check below can load the extension.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "missing Debian packages ${missing[*]} and no apt-get to install them"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to apt-get install ${missing[*]}"
    sudo="sudo"
  fi
  log "apt-get install ${missing[*]}"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
fi

command -v "$base_python" >/dev/null || die "$base_python not found (set MOONCAKE_BASE_PYTHON)"
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv $venv with $base_python"
  "$base_python" -m venv "$venv" || die "cannot create venv $venv"
fi
log "pip install $MOONCAKE_WHEEL==$MOONCAKE_VERSION"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
  "$MOONCAKE_WHEEL==$MOONCAKE_VERSION" \
  || die "cannot install $MOONCAKE_WHEEL==$MOONCAKE_VERSION into $venv: pip has no wheel for $("$venv/bin/python" -V 2>&1) on $(uname -m), or the index is unreachable"

out="$(check 2>&1)" || die "mooncake $MOONCAKE_VERSION installed in $venv but does not work:
$out
(ldd $venv/lib/python*/site-packages/mooncake/engine.so | grep 'not found' lists missing libraries)"
log "mooncake $MOONCAKE_VERSION ready: $venv/bin/python"
