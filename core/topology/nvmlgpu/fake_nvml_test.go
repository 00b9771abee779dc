//go:build cgo && linux && (amd64 || arm64)

package nvmlgpu

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/topology"
)

// TestGPUsFakeNVML lists the GPUs of testdata/fake_nvml.c, a FAKE
// libnvidia-ml (a test double built here with gcc; it proves the path
// through nvmlsym's trampolines and go-nvml, not real hardware): two GPUs
// that NVML reports out of PCI order, and no nvmlDeviceGetNumaNodeId.
func TestGPUsFakeNVML(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skipf("gcc builds the fake NVML: %v", err)
	}
	fake := filepath.Join(t.TempDir(), "libnvidia-ml.so.1")
	args := []string{"-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", fake, filepath.Join("testdata", "fake_nvml.c")}
	b, err := exec.Command(gcc, args...).CombinedOutput()
	require.NoError(t, err, "gcc %s\n%s", strings.Join(args, " "), b)

	gpu := func(ord int, bus string) topology.GPU { return topology.GPU{Ordinal: ord, BusID: bus, NUMANode: -1} }
	tests := []struct {
		name    string
		opts    Options
		initRC  string
		want    []topology.GPU
		wantErr string
	}{
		{name: "all", want: []topology.GPU{gpu(0, "0000:70:00.0"), gpu(1, "0000:80:00.0")}},
		{name: "visible devices", opts: Options{VisibleDevices: "1", VisibleDevicesSet: true}, want: []topology.GPU{gpu(0, "0000:80:00.0")}},
		// NVML_ERROR_DRIVER_NOT_LOADED: present but broken, not "absent".
		{name: "init fails", initRC: "9", wantErr: "nvml init"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("FAKE_NVML_INIT_RC", tc.initRC)
			tc.opts.Library = fake
			gpus, err := New(tc.opts).GPUs()
			require.Zero(t, dl.Refs(fake), "GPUs releases the library")
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.NotErrorIs(t, err, topology.ErrUnavailable)
				require.Nil(t, gpus)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, gpus)
		})
	}
}
