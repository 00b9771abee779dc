package barex

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestShimSourceCompiles compiles the real shim, shim/mc_barex_shim.cpp,
// against STAND-IN declarations of the barex API (testdata/barex_standin,
// inferred from public call sites, not the SDK), both RegUserMr variants,
// with every warning an error. It proves only that the shim is well-formed
// C++ for the API as pymooncake understands it; only a build against the
// SDK (make barex-shim) proves it fits barex.
func TestShimSourceCompiles(t *testing.T) {
	cxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skipf("g++ is needed to check the shim source: %v", err)
	}
	for _, extra := range [][]string{nil, {"-DMCBX_REGMR_WITH_DEVICE"}} {
		args := append([]string{"-std=c++17", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden",
			"-DCMAKE_INCLUDE", "-Itestdata/barex_standin", "-Ishim", "-fsyntax-only", "shim/mc_barex_shim.cpp"}, extra...)
		out, err := exec.Command(cxx, args...).CombinedOutput()
		require.NoError(t, err, "g++ %v:\n%s", args, out)
	}
}
