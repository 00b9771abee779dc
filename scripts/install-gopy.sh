#!/usr/bin/env bash
# install-gopy.sh: put the tools that build pymooncake's extension in place.
#
#   gopy v0.4.10 and goimports -> ./.tools/bin (gitignored)
#   pybindgen                   -> the target interpreter (pip), unless it already imports it
#
# usage: scripts/install-gopy.sh [PYTHON]        (default: python3)
#
# Why not `go install github.com/go-python/gopy@v0.4.10`: gopy v0.4.10 pins
# golang.org/x/tools v0.16.0, which does not compile with Go >= 1.23, and some
# module proxies refuse the @v/list query that `go install pkg@version` makes.
# A throw-away tools module that requires gopy and bumps x/tools fixes both
# (reference/gopy.md, "Exact build recipe").
#
# Tools already on PATH are used as they are when they report the right
# version (an offline kit puts them there); nothing is fetched then.
set -euo pipefail

GOPY_VERSION=v0.4.10
XTOOLS_VERSION=v0.52.0
PYBINDGEN_REQ='pybindgen>=0.20'

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${1:-${PYTHON:-python3}}
bin=$root/.tools/bin

have_gopy() {
  # gopy prints no version; the Go build info of the binary names its module.
  local g=$1
  [[ -n $g && -x $g ]] && go version -m "$g" 2>/dev/null |
    grep -Eq "^[[:space:]]+mod[[:space:]]+github.com/go-python/gopy[[:space:]]+$GOPY_VERSION([[:space:]]|\$)"
}

if have_gopy "$bin/gopy" && [[ -x $bin/goimports ]]; then
  echo "install-gopy: gopy $GOPY_VERSION and goimports already in $bin" >&2
elif have_gopy "$(command -v gopy || true)" && command -v goimports >/dev/null; then
  echo "install-gopy: using gopy and goimports from PATH ($(command -v gopy))" >&2
else
  command -v go >/dev/null || { echo "install-gopy: Go is not on PATH" >&2; exit 1; }
  src=$root/.tools/src
  rm -rf "$src" && mkdir -p "$src" "$bin"
  cat > "$src/go.mod" <<MOD
module pymooncaketools

go 1.22

require github.com/go-python/gopy $GOPY_VERSION
MOD
  cat > "$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/go-python/gopy"
	_ "golang.org/x/tools/cmd/goimports"
)
GO
  echo "install-gopy: building gopy $GOPY_VERSION with golang.org/x/tools $XTOOLS_VERSION" >&2
  (
    cd "$src"
    export GOFLAGS=-mod=mod
    go get "golang.org/x/tools@$XTOOLS_VERSION" >&2
    go mod tidy >&2
    GOBIN=$bin CGO_ENABLED=0 go install -ldflags='-s -w' \
      github.com/go-python/gopy golang.org/x/tools/cmd/goimports
  )
  have_gopy "$bin/gopy" || { echo "install-gopy: $bin/gopy does not report $GOPY_VERSION" >&2; exit 1; }
fi

if "$py" -c 'import pybindgen' 2>/dev/null; then
  echo "install-gopy: pybindgen already importable by $py" >&2
else
  echo "install-gopy: installing $PYBINDGEN_REQ into $py" >&2
  "$py" -m pip install --disable-pip-version-check -q "$PYBINDGEN_REQ"
fi
