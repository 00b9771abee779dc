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
	Imports    []string // direct
	Deps       []string // transitive
	CgoFiles   []string
}

// listPackages runs `go list -json` on pattern.
func listPackages(t *testing.T, pattern string) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", pattern)
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

// concreteTransport returns the transport a package belongs to ("tcp" for
// core/transport/tcp/...), or "" for the contract, the transports' shared
// internals and everything else.
func concreteTransport(path string) string {
	rest, ok := strings.CutPrefix(path, module+"/core/transport/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	if name == "internal" {
		return ""
	}
	return name
}

// TestLayerBoundaries keeps DESIGN.md's boundaries: each ban says why.
func TestLayerBoundaries(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	const root = module + "/core"
	for _, p := range listPackages(t, module+"/...") {
		inCore := p.ImportPath == root || strings.HasPrefix(p.ImportPath, root+"/")
		mine := concreteTransport(p.ImportPath)
		for _, d := range p.Deps {
			if inCore {
				// core knows nothing of Python: bindings adapts it for gopy.
				require.False(t, strings.HasPrefix(d, module+"/bindings"), "%s depends on %s", p.ImportPath, d)
				require.False(t, strings.HasPrefix(d, "github.com/go-python/gopy"), "%s depends on %s", p.ImportPath, d)
			}
			theirs := concreteTransport(d)
			if theirs == "" {
				continue
			}
			switch {
			case mine != "":
				// A transport never depends on another: each can be built,
				// tested and replaced alone. What they share lives in
				// core/transport/internal.
				require.Equal(t, mine, theirs, "%s depends on %s", p.ImportPath, d)
			case inCore && p.ImportPath != root:
				// Above core/transport only the composition root (package
				// core) names a concrete transport: the engine and its
				// parts reach transports through the contract alone, so
				// recovery, batches and segments work the same for all.
				t.Errorf("%s depends on the concrete transport %s", p.ImportPath, d)
			}
		}
		if p.ImportPath == module+"/bindings" {
			// The extension carries no Go source tooling (a dependency's
			// dependency once pulled go/format in): it only bloats the
			// library, and the GPU hosts' trimmed toolchain lacks it.
			for _, d := range p.Deps {
				require.False(t, d == "go/format" || d == "go/printer" || d == "go/parser",
					"%s depends on %s", p.ImportPath, d)
			}
		}
		if strings.HasPrefix(p.ImportPath, module+"/bindings") {
			// bindings is a flat adapter: it validates, converts, calls core
			// and classifies errors by the transport-neutral sentinels of
			// core/transport, never a transport's own.
			for _, d := range p.Imports {
				require.Empty(t, concreteTransport(d), "%s imports %s", p.ImportPath, d)
			}
		}
		if strings.HasPrefix(p.ImportPath, module+"/core/transport") {
			// Transports record no metrics: the engine records them where
			// requests end, the same way for every transport (core/metrics);
			// what only a transport knows it tells through an optional
			// interface (transport.ConnCounter).
			for _, d := range p.Deps {
				require.False(t, d == module+"/core/metrics" || strings.HasPrefix(d, "github.com/prometheus/"),
					"%s depends on %s", p.ImportPath, d)
			}
		}
		// The codecs, the TCP and same-host transports and the engine's
		// logic run everywhere and must not need a C toolchain.
		for _, pure := range []string{"/core/metadata", "/core/handshake", "/core/transport/tcp", "/core/config",
			"/core/engine", "/core/segment", "/core/batch", "/core/memory", "/core/managed",
			"/core/transport/hostmem", "/core/transport/internal/hostid"} {
			if strings.HasPrefix(p.ImportPath, module+pure) {
				require.Empty(t, p.CgoFiles, "%s uses cgo", p.ImportPath)
			}
		}
	}
}
