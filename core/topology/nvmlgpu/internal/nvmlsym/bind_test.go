//go:build cgo && linux && (amd64 || arm64)

package nvmlsym

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// fakeNVML builds the FAKE libnvidia-ml of nvmlgpu's testdata (a test
// double: a few NVML functions over two made-up GPUs, no
// nvmlDeviceGetNumaNodeId) and returns its path. It skips only when gcc is
// absent.
func fakeNVML(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skipf("gcc builds the fake NVML: %v", err)
	}
	out := filepath.Join(t.TempDir(), "libnvidia-ml.so.1")
	args := []string{"-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", out, filepath.Join("..", "..", "testdata", "fake_nvml.c")}
	b, err := exec.Command(gcc, args...).CombinedOutput()
	require.NoError(t, err, "gcc %s\n%s", strings.Join(args, " "), b)
	return out
}

func TestBindFails(t *testing.T) {
	tests := []struct {
		name    string
		lib     string
		wantErr error
	}{
		{name: "absent", lib: "libpymooncake-absent-nvml.so.1", wantErr: dl.ErrUnavailable},
		{name: "not nvml", lib: "libc.so.6", wantErr: dl.ErrMissingSymbol},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := dl.Refs(tc.lib)
			b, err := Bind(tc.lib)
			require.ErrorIs(t, err, tc.wantErr)
			require.Nil(t, b)
			require.Contains(t, err.Error(), tc.lib)
			require.Equal(t, before, dl.Refs(tc.lib), "a failed Bind keeps no handle")
		})
	}
}

// TestTrampolines calls the fake NVML through go-nvml: every call crosses
// a trampoline, with arguments of several kinds (none, an out pointer, an
// index and an out pointer, a handle and a struct pointer, a string
// buffer) and both return kinds (nvmlReturn_t, nvmlErrorString's const
// char *). A function the library lacks, and every function once the
// binding is closed, returns ERROR_FUNCTION_NOT_FOUND instead of jumping
// to address 0.
func TestTrampolines(t *testing.T) {
	fake := fakeNVML(t)
	b, err := Bind(fake)
	require.NoError(t, err)
	require.Equal(t, 1, dl.Refs(fake))

	lib := nvml.New(nvml.WithLibraryPath(fake))
	require.Equal(t, nvml.SUCCESS, lib.Init())
	n, r := lib.DeviceGetCount()
	require.Equal(t, nvml.SUCCESS, r)
	require.Equal(t, 2, n)
	dev, r := lib.DeviceGetHandleByIndex(1)
	require.Equal(t, nvml.SUCCESS, r)
	pci, r := dev.GetPciInfo()
	require.Equal(t, nvml.SUCCESS, r)
	require.EqualValues(t, 0x70, pci.Bus)
	uuid, r := dev.GetUUID()
	require.Equal(t, nvml.SUCCESS, r)
	require.Equal(t, "GPU-fa4e0000-0000-0000-0000-000000000001", uuid)
	_, r = lib.DeviceGetHandleByIndex(5)
	require.Equal(t, nvml.ERROR_INVALID_ARGUMENT, r, "arguments reach the library")
	require.Equal(t, "fake nvml: invalid argument", r.Error(), "nvmlErrorString's string comes back")
	_, r = dev.GetNumaNodeId()
	require.Equal(t, nvml.ERROR_FUNCTION_NOT_FOUND, r, "the fake lacks nvmlDeviceGetNumaNodeId")
	require.Equal(t, nvml.SUCCESS, lib.Shutdown())

	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "second close is a no-op")
	require.Zero(t, dl.Refs(fake))

	// Unbound: go-nvml still opens the library itself, but its calls land
	// on the fallbacks. (go-nvml keeps its own handle after a failed Init:
	// its Shutdown closes only after nvmlShutdown succeeds.)
	unbound := nvml.New(nvml.WithLibraryPath(fake))
	require.Equal(t, nvml.ERROR_FUNCTION_NOT_FOUND, unbound.Init())
	require.Contains(t, nvml.ERROR_UNINITIALIZED.Error(), "NVML function not loaded")
	require.Equal(t, nvml.ERROR_FUNCTION_NOT_FOUND, unbound.Shutdown())
}

func TestBindRefcount(t *testing.T) {
	fake := fakeNVML(t)
	a, err := Bind(fake)
	require.NoError(t, err)
	b, err := Bind(fake)
	require.NoError(t, err)
	require.Equal(t, 1, dl.Refs(fake), "one library handle for every Binding")

	other, err := Bind("libc.so.6")
	require.ErrorIs(t, err, ErrBoundElsewhere)
	require.Nil(t, other)

	require.NoError(t, a.Close())
	require.NoError(t, a.Close())
	lib := nvml.New(nvml.WithLibraryPath(fake))
	require.Equal(t, nvml.SUCCESS, lib.Init(), "still bound while b is open")
	require.Equal(t, nvml.SUCCESS, lib.Shutdown())

	require.NoError(t, b.Close())
	require.Zero(t, dl.Refs(fake))
	c, err := Bind(fake)
	require.NoError(t, err, "binds again after the last close")
	require.NoError(t, c.Close())
}
