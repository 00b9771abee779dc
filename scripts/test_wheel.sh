#!/usr/bin/env bash
# test_wheel.sh: install a built pymooncake wheel the way a user does and use it.
#
#   scripts/test_wheel.sh [PYTHON] [WHEEL]
#
#   PYTHON  the interpreter the wheel is for (default: $PYTHON, else python3)
#   WHEEL   the wheel to test (default: build one with scripts/build_wheel.sh)
#
# In a fresh virtual environment, with Go and gopy removed from PATH, no
# PYTHONPATH and the working directory an empty temporary folder (so neither
# the Go toolchain nor the source tree can help), it
#  1. installs the wheel with pip (--no-index: it has no dependencies);
#  2. imports it and runs a loopback transfer (scripts/wheel_smoke.py, run
#     with -I so that only the venv's site-packages are on sys.path); then
#     again with the host's RDMA, CUDA, NVML and barex libraries made
#     unloadable, where root may unshare a mount namespace;
#     RTLD_NOW (DESIGN rule 2): ctypes.CDLL(<the installed extension>,
#     RTLD_NOW) in a fresh process, as torch's CUDAPluggableAllocator loads
#     it; the smoke run again under LD_BIND_NOW=1; and, where gcc is found,
#     `pymooncake topology` under LD_BIND_NOW=1 with a FAKE libnvidia-ml
#     (core/topology/nvmlgpu/testdata/fake_nvml.c, a test double) first on
#     LD_LIBRARY_PATH: its two made-up GPUs must be listed;
#  3. runs the console script: pymooncake bench --mode loopback --duration 2;
#  4. checks the start-up hook: PYMOONCAKE_AS_MOONCAKE=1 makes
#     `from mooncake.engine import TransferEngine` give pymooncake's;
#  5. runs auditwheel show: the tag it reports must be the wheel's and libc
#     its only system library; then scripts/check_wheel.py (DT_NEEDED,
#     exclusions, libaccl_barex anywhere, metadata);
#  6. shows that the check can fail: scripts/check_wheel_selftest.py breaks
#     copies of the wheel one way at a time (a DT_NEEDED libaccl_barex, a
#     bundled libaccl_barex, libpython, a run path, a missing py.typed, ...)
#     and expects each to be refused.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-${PYTHON:-python3}}
wheel=${2:-}
pyexe=$("$py" -c 'import sys; print(sys.executable)')
tools=$root/.tools/wheel
if [[ -z $wheel ]]; then
  wheel=$("$root/scripts/build_wheel.sh" "$pyexe")
fi
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
[[ -f $wheel ]] || { echo "test_wheel: $wheel not found" >&2; exit 1; }
start=$(date +%s)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/run"

# A PATH without the Go toolchain and the build tools: every folder that
# holds go, gofmt or gopy is dropped, and so is the source tree.
nogo=
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [[ -z $d || $d == "$root"* ]] && continue
  [[ -x $d/go || -x $d/gofmt || -x $d/gopy ]] && continue
  nogo=${nogo:+$nogo:}$d
done
# the interpreter itself may live next to nothing else; it is called by path
isolated() {
  env -u PYTHONPATH -u PYTHONHOME -u GOROOT -u GOPATH -u GOFLAGS -u PYTHONSTARTUP \
    -u PYMOONCAKE_AS_MOONCAKE PATH="$work/venv/bin:$nogo" "$@"
}

venvpy=$work/venv/bin/python
if "$pyexe" -m venv "$work/venv" 2>"$work/venv.err"; then
  vpip() { isolated "$venvpy" -m pip "$@"; }
else
  # an interpreter without ensurepip (some distributions' venvs): a venv
  # without pip, filled by the interpreter's own pip
  cat "$work/venv.err" >&2
  rm -rf "$work/venv"
  "$pyexe" -m venv --without-pip "$work/venv"
  vpip() { isolated "$pyexe" -m pip --python "$venvpy" "$@"; }
fi
cd "$work/run"
if isolated sh -c 'command -v go || command -v gopy' >/dev/null; then
  echo "test_wheel: go or gopy is still on the PATH of the test" >&2
  exit 1
fi
echo "test_wheel: PATH without Go: $nogo" >&2

echo "test_wheel: pip install $(basename "$wheel") into a fresh venv" >&2
vpip install --disable-pip-version-check -q --no-index --no-deps "$wheel"
vpip check >&2
site=$(isolated "$venvpy" -I -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
[[ -f $site/pymooncake-compat.pth ]] || { echo "test_wheel: $site/pymooncake-compat.pth not installed" >&2; exit 1; }

echo "test_wheel: import and loopback transfer" >&2
isolated "$venvpy" -I "$root/scripts/wheel_smoke.py" --not-under "$root"

# The same with this host's optional libraries made unloadable (RDMA, CUDA,
# NVML, barex: /dev/null bound over each in a private mount namespace), as
# on a host without them; needs root and unshare, skipped otherwise.
hide=$(ldconfig -p | awk '/lib(ibverbs|mlx[45]|rdmacm|cuda|nvidia-ml|accl_barex)\.so/ {print $NF}' | xargs -r realpath -e 2>/dev/null | sort -u | tr '\n' ' ')
if [[ -z ${hide// /} ]]; then
  echo "test_wheel: this host has none of the optional libraries (RDMA, CUDA, NVML, barex)" >&2
elif [[ $(id -u) == 0 ]] && unshare -m true 2>/dev/null; then
  echo "test_wheel: import and loopback again with these unloadable: $hide" >&2
  isolated env HIDE="$hide" LD_BIND_NOW=1 unshare -m bash -c 'for f in $HIDE; do mount --bind /dev/null "$f" || exit 1; done; exec "$@"' _ \
    "$venvpy" -I "$root/scripts/wheel_smoke.py" --not-under "$root"
else
  echo "test_wheel: not root or no unshare: the run without optional libraries is skipped" >&2
fi

# RTLD_NOW: no symbol of the extension may wait for a library opened at
# run time (torch's CUDAPluggableAllocator(path, ...) and LD_BIND_NOW=1).
ext=$(isolated "$venvpy" -I -c 'import importlib.util; print(importlib.util.find_spec("pymooncake._gopy._pymooncake_go").origin)')
[[ $ext == "$site"/* ]] || { echo "test_wheel: extension $ext is not the installed one (under $site)" >&2; exit 1; }
echo "test_wheel: ctypes.CDLL($(basename "$ext"), RTLD_NOW) in a fresh process" >&2
isolated "$venvpy" -I -c 'import ctypes, os, sys; ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW)' "$ext"
echo "test_wheel: import and loopback transfer under LD_BIND_NOW=1" >&2
isolated env LD_BIND_NOW=1 "$venvpy" -I "$root/scripts/wheel_smoke.py" --not-under "$root"
if command -v gcc >/dev/null; then
  mkdir -p "$work/fakenvml"
  gcc -shared -fPIC -Wall -Wextra -Werror -o "$work/fakenvml/libnvidia-ml.so.1" "$root/core/topology/nvmlgpu/testdata/fake_nvml.c"
  echo "test_wheel: pymooncake topology under LD_BIND_NOW=1 with a FAKE libnvidia-ml (test double) on LD_LIBRARY_PATH" >&2
  topo=$(isolated env -u CUDA_VISIBLE_DEVICES LD_BIND_NOW=1 LD_LIBRARY_PATH="$work/fakenvml" "$work/venv/bin/pymooncake" topology)
  echo "$topo" >&2
  grep -q '"cuda:0"' <<<"$topo" && grep -q '"cuda:1"' <<<"$topo" ||
    { echo "test_wheel: the fake NVML's two GPUs are not in the topology" >&2; exit 1; }
else
  echo "test_wheel: no gcc: the run with a fake NVML is skipped" >&2
fi

echo "test_wheel: pymooncake bench --mode loopback --duration 2" >&2
isolated "$work/venv/bin/pymooncake" bench --mode loopback --duration 2 2>"$work/bench.err" | tee "$work/bench.out" >&2 || {
  cat "$work/bench.err" >&2
  echo "test_wheel: the bench failed" >&2
  exit 1
}
grep -Eq '^ *errors +0$' "$work/bench.out" || { echo "test_wheel: the bench reported errors" >&2; exit 1; }
grep -Eq '^ *throughput +[0-9.]+ GB/s' "$work/bench.out" || { echo "test_wheel: the bench printed no throughput" >&2; exit 1; }

echo "test_wheel: PYMOONCAKE_AS_MOONCAKE=1 start-up hook" >&2
isolated env PYMOONCAKE_AS_MOONCAKE=1 "$venvpy" -c '
import mooncake.engine, pymooncake.engine
assert mooncake.engine.TransferEngine is pymooncake.engine.TransferEngine
print("test_wheel: mooncake.engine is pymooncake.engine")' >&2

echo "test_wheel: auditwheel show" >&2
tag=$(basename "$wheel" .whl | cut -d- -f5)
show=$(PYTHONPATH=$tools "$pyexe" -m auditwheel show "$wheel" 2>&1)
echo "$show" >&2
flat=$(tr -s ' \n' ' ' <<<"$show")
grep -q "consistent with the following platform tag: \"$tag\"" <<<"$flat" ||
  { echo "test_wheel: auditwheel show does not report $tag" >&2; exit 1; }
if grep -q "external shared libraries" <<<"$flat"; then
  echo "test_wheel: auditwheel show lists external shared libraries" >&2
  exit 1
fi
libs=$(grep -o 'system-provided shared libraries: [^{]*' <<<"$flat" | sed 's/.*libraries: //; s/ with versions.*//; s/ *$//')
[[ -z $libs || $libs == "libc.so.6" ]] || { echo "test_wheel: system libraries '$libs', want libc.so.6 only" >&2; exit 1; }
PYTHONPATH=$tools "$pyexe" "$root/scripts/check_wheel.py" "$wheel" >&2

echo "test_wheel: the check refuses broken copies of the wheel" >&2
if command -v gcc >/dev/null; then
  PATH=$tools/bin:$PATH PYTHONPATH=$tools "$pyexe" "$root/scripts/check_wheel_selftest.py" "$wheel" >&2
else
  echo "test_wheel: no gcc: the check's self-test is skipped" >&2
fi

echo "test_wheel: $(basename "$wheel") installed and ran in a venv without Go ($(($(date +%s) - start)) s)" >&2
