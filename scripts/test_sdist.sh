#!/usr/bin/env bash
# test_sdist.sh: check pymooncake's source distribution the way pip uses it.
#
#   scripts/test_sdist.sh [PYTHON]
#
#  1. builds the sdist (scripts/build_wheel.sh --sdist) and checks that it
#     holds every Go, C, header and assembly file that `go list -deps
#     ./bindings` says the extension is built from, the packaging files and
#     the license, and nothing generated (pymooncake/_gopy, shared objects);
#  2. without Go on PATH, `pip wheel` of the sdist must fail at once with
#     setup.py's message naming Go;
#  3. with Go, `pip wheel` of the sdist builds the extension from source in
#     pip's temporary folder, and the wheel, installed into a fresh venv,
#     imports and runs a loopback transfer (scripts/wheel_smoke.py). gopy
#     and goimports come from the checkout's .tools/bin (make tools) so that
#     they are not rebuilt; scripts/install-gopy.sh fetches them otherwise.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-${PYTHON:-python3}}
pyexe=$("$py" -c 'import sys; print(sys.executable)')
start=$(date +%s)
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

sd=$("$root/scripts/build_wheel.sh" --sdist -o "$work/dist" "$pyexe")
top=$(basename "$sd" .tar.gz)
tar -tzf "$sd" | sed "s|^$top/||" | sort >"$work/listing"

# 1. contents
cd "$root"
module=$(go list -m)
go list -deps -f '{{if .Module}}{{if eq .Module.Path "'"$module"'"}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .CgoFiles}}{{$d}}/{{.}}
{{end}}{{range .CFiles}}{{$d}}/{{.}}
{{end}}{{range .HFiles}}{{$d}}/{{.}}
{{end}}{{range .SFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}{{end}}' ./bindings | sed "s|^$root/||" | sort -u >"$work/needed"
for f in go.mod go.sum setup.py pyproject.toml README.md LICENSE PKG-INFO scripts/build_ext.sh scripts/install-gopy.sh \
         pymooncake/__init__.py pymooncake/_version.py pymooncake/py.typed pymooncake/pymooncake-compat.pth; do
  echo "$f"
done >>"$work/needed"
missing=$(sort -u "$work/needed" | comm -23 - "$work/listing")
if [[ -n $missing ]]; then
  echo "test_sdist: the sdist lacks files the build needs:" >&2
  echo "$missing" >&2
  exit 1
fi
if grep -E '^pymooncake/_gopy/|\.so(\.|$)|^\.tools/|^build/|^dist/' "$work/listing" >&2; then
  echo "test_sdist: the sdist carries generated files (above)" >&2
  exit 1
fi
echo "test_sdist: $(basename "$sd"): $(wc -l <"$work/listing") files, $(du -k "$sd" | cut -f1) KiB, all $(sort -u "$work/needed" | wc -l) build inputs present" >&2

# 2. no Go: a clear error, at once
nogo=
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [[ -z $d || -x $d/go || -x $d/gopy ]] && continue
  nogo=${nogo:+$nogo:}$d
done
cd "$work"
if env -u GOROOT PATH="$nogo" "$pyexe" -m pip wheel --disable-pip-version-check --no-deps -w "$work/nogo" "$sd" >"$work/nogo.log" 2>&1; then
  echo "test_sdist: the sdist built a wheel without Go on PATH" >&2
  exit 1
fi
if ! grep -q "pymooncake builds its Go extension from source here and needs Go" "$work/nogo.log"; then
  cat "$work/nogo.log" >&2
  echo "test_sdist: without Go the build failed, but not with setup.py's message (log above)" >&2
  exit 1
fi
echo "test_sdist: without Go: $(grep -o 'pymooncake builds its Go extension.*' "$work/nogo.log" | head -1)" >&2

# 3. with Go: build from source, install, use
t=$(date +%s)
PATH=$root/.tools/bin:$PATH "$pyexe" -m pip wheel --disable-pip-version-check --no-deps -w "$work/wheel" "$sd" >"$work/build.log" 2>&1 || {
  cat "$work/build.log" >&2
  echo "test_sdist: building the sdist failed (log above)" >&2
  exit 1
}
whl=$(ls "$work"/wheel/pymooncake-*.whl)
echo "test_sdist: built $(basename "$whl") from the sdist in $(($(date +%s) - t)) s" >&2
"$pyexe" -m venv "$work/venv"
mkdir -p "$work/run" && cd "$work/run"
env -u PYTHONPATH "$work/venv/bin/python" -m pip install --disable-pip-version-check -q --no-index --no-deps "$whl"
env -u PYTHONPATH PATH="$nogo" "$work/venv/bin/python" -I "$root/scripts/wheel_smoke.py" --not-under "$root" >&2
echo "test_sdist: ok ($(($(date +%s) - start)) s)" >&2
