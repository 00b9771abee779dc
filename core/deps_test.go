package core

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/pymooncake/pymooncake"

type listedPackage struct {
	ImportPath string
	Deps       []string
	CgoFiles   []string
}

// listDeps runs `go list -deps -json` on pattern.
func listDeps(t *testing.T, pattern string) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", pattern)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var pkgs []listedPackage
	dec := json.NewDecoder(out)
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else {
			require.NoError(t, err)
		}
		pkgs = append(pkgs, p)
	}
	require.NoError(t, cmd.Wait())
	require.NotEmpty(t, pkgs)
	return pkgs
}

// TestLayerBoundaries keeps DESIGN.md's boundaries: each ban says why.
func TestLayerBoundaries(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for _, p := range listDeps(t, module+"/core/...") {
		for _, d := range p.Deps {
			// core knows nothing of Python: bindings adapts it for gopy.
			require.False(t, strings.HasPrefix(d, module+"/bindings"), "%s imports %s", p.ImportPath, d)
			require.False(t, strings.HasPrefix(d, "github.com/go-python/gopy"), "%s imports %s", p.ImportPath, d)
			// A transport never depends on another: each can be built,
			// tested and replaced alone.
			if tr, ok := strings.CutPrefix(p.ImportPath, module+"/core/transport/"); ok {
				if other, ok := strings.CutPrefix(d, module+"/core/transport/"); ok {
					mine, _, _ := strings.Cut(tr, "/")
					theirs, _, _ := strings.Cut(other, "/")
					require.Equal(t, mine, theirs, "%s imports %s", p.ImportPath, d)
				}
			}
		}
		// The metadata codecs and the TCP transport run everywhere and
		// must not need a C toolchain.
		for _, pure := range []string{"/core/metadata", "/core/handshake", "/core/transport/tcp", "/core/config"} {
			if strings.HasPrefix(p.ImportPath, module+pure) {
				require.Empty(t, p.CgoFiles, "%s uses cgo", p.ImportPath)
			}
		}
	}
}
