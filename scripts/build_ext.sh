#!/usr/bin/env bash
# build_ext.sh: build pymooncake's extension for one Python interpreter.
#
#   scripts/build_ext.sh [PYTHON]          (default: $PYTHON, else python3)
#
# Runs gopy over ./bindings (the only Go package Python sees) and leaves in
# pymooncake/_gopy/ only what is imported at run time: __init__.py,
# bindings.py, go.py and _pymooncake_go<EXT_SUFFIX>. The extension is tied to
# the interpreter's minor version; extensions built earlier for other
# versions are kept. Needs Go, gcc and the interpreter's headers; gopy,
# goimports and pybindgen are fetched by scripts/install-gopy.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-${PYTHON:-python3}}
pyexe=$("$py" -c 'import sys; print(sys.executable)')
suffix=$("$pyexe" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
out=pymooncake/_gopy

"$root/scripts/install-gopy.sh" "$pyexe"
if [[ -x $root/.tools/bin/gopy ]]; then
  export PATH=$root/.tools/bin:$PATH
fi
# Some distributions' interpreters (Ubuntu's python3.12) put flags such as
# -fwrapv into LDSHARED, which cgo refuses unless allowed.
export CGO_LDFLAGS_ALLOW=${CGO_LDFLAGS_ALLOW:-.*} CGO_CFLAGS_ALLOW=${CGO_CFLAGS_ALLOW:-.*}
export CGO_ENABLED=1

cd "$root"
mkdir -p "$out"
rm -f "$out/_pymooncake_go$suffix"
start=$(date +%s)
# gopy builds with -mod=mod, which may rewrite go.mod and go.sum (e.g. an
# "// indirect" marker); the checkout is put back as it was.
modsave=$(mktemp -d)
cp -p go.mod go.sum "$modsave/"
trap 'cp -p "$modsave/go.mod" "$modsave/go.sum" "$root/"; rm -rf "$modsave"' EXIT
# -dynamic-link: resolve Python's symbols from the host interpreter instead
# of linking libpython (reference/gopy.md); -symbols=false strips the .so.
gopy build -no-make -dynamic-link=true -symbols=false -vm="$pyexe" \
  -name=pymooncake_go -output="$out" ./bindings >"$out/.build.log" 2>&1 || {
  cat "$out/.build.log" >&2
  echo "build_ext: gopy build failed (log above)" >&2
  exit 1
}
# Keep only what is imported at run time.
find "$out" -maxdepth 1 -type f ! -name '__init__.py' ! -name 'bindings.py' ! -name 'go.py' \
  ! -name '_pymooncake_go.*.so' -delete
[[ -f $out/_pymooncake_go$suffix ]] || { echo "build_ext: $out/_pymooncake_go$suffix was not produced" >&2; exit 1; }

# Smoke test: the extension loads with every symbol bound at load, as
# torch's CUDAPluggableAllocator and LD_BIND_NOW=1 load it (RTLD_NOW, in a
# process that loaded nothing of it before: no symbol may wait for a library
# opened at run time, DESIGN rule 2), then imports the way
# pymooncake/_loader.py imports it and answers a call.
PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} "$pyexe" - "$root/$out/_pymooncake_go$suffix" <<'PY'
import ctypes, os, sys
try:
    ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW)
except OSError as e:
    sys.exit(f"build_ext: the extension does not load with RTLD_NOW: {e}")
from pymooncake._gopy import _pymooncake_go as ext
assert ext.NumHandles() >= 0
PY
echo "build_ext: built $out/_pymooncake_go$suffix in $(( $(date +%s) - start )) s" >&2
