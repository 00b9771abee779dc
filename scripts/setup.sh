#!/usr/bin/env bash
# setup.sh: install what `make test` needs on a fresh Debian machine with
# Go, gcc and Python: Debian's etcd (real etcd for the metadata tests) and
# the runtime libraries of Mooncake's wheel, gopy and pybindgen, the Python
# test tools, and Mooncake's wheel in its own venv for the interop suite.
# Idempotent: what is already there is left alone.
#
#   scripts/setup.sh [PYTHON]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-${PYTHON:-python3}}

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
ldconfig -p | grep -q 'libibverbs.so.1 ' || need_apt+=(libibverbs1)
if ((${#need_apt[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  echo "setup: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

"$root/scripts/install-gopy.sh" "$py"
"$py" -c 'import pytest, mypy, ruff' 2>/dev/null ||
  "$py" -m pip install --disable-pip-version-check -q 'pytest>=7' 'mypy>=1.8' 'ruff>=0.4'
"$root/scripts/install-mooncake.sh"
