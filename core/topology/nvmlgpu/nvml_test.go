package nvmlgpu

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/topology"
)

func TestCUDAOrder(t *testing.T) {
	// NVML order need not be PCI order in the input; CUDA's is.
	devs := []device{
		{busID: "0000:87:00.0", uuid: "GPU-bbbb2222", model: "H100", numa: 1},
		{busID: "0000:3c:00.0", uuid: "GPU-aaaa1111", model: "H100", numa: 0},
		{busID: "0000:3d:00.0", uuid: "GPU-aaab3333", model: "H100", numa: -1},
	}
	g := func(ord int, bus string, numa int) topology.GPU {
		return topology.GPU{Ordinal: ord, BusID: bus, NUMANode: numa}
	}
	all := []topology.GPU{g(0, "0000:3c:00.0", 0), g(1, "0000:3d:00.0", -1), g(2, "0000:87:00.0", 1)}
	tests := []struct {
		name    string
		visible string
		set     bool
		want    []topology.GPU
	}{
		{name: "unset", want: all},
		{name: "set empty hides all", set: true, visible: "", want: nil},
		{name: "indices reorder", set: true, visible: "2,0", want: []topology.GPU{g(0, "0000:87:00.0", 1), g(1, "0000:3c:00.0", 0)}},
		{name: "spaces", set: true, visible: " 1 , 2 ", want: []topology.GPU{g(0, "0000:3d:00.0", -1), g(1, "0000:87:00.0", 1)}},
		{name: "stops at invalid", set: true, visible: "1,7,0", want: []topology.GPU{g(0, "0000:3d:00.0", -1)}},
		{name: "minus one hides all", set: true, visible: "-1", want: nil},
		{name: "stops at repeat", set: true, visible: "0,0,1", want: []topology.GPU{g(0, "0000:3c:00.0", 0)}},
		{name: "uuid", set: true, visible: "GPU-bbbb,GPU-aaaa1", want: []topology.GPU{g(0, "0000:87:00.0", 1), g(1, "0000:3c:00.0", 0)}},
		{name: "ambiguous uuid prefix", set: true, visible: "GPU-aaa", want: nil},
		{name: "mig ends the list", set: true, visible: "0,MIG-1234", want: []topology.GPU{g(0, "0000:3c:00.0", 0)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, mixed := cudaOrder(devs, tc.visible, tc.set)
			require.Equal(t, tc.want, got)
			require.False(t, mixed)
		})
	}
	_, mixed := cudaOrder(append(devs, device{busID: "0000:01:00.0", model: "L40S"}), "", false)
	require.True(t, mixed)
}

// TestNVML lists this host's GPUs. Without NVML it checks the clean
// "unavailable" error; with PYMOONCAKE_TEST_NVML=1 NVML must work.
func TestNVML(t *testing.T) {
	info := New(Options{})
	gpus, err := info.GPUs()
	if os.Getenv("PYMOONCAKE_TEST_NVML") == "" {
		if err != nil {
			require.ErrorIs(t, err, topology.ErrUnavailable)
			require.Contains(t, err.Error(), DefaultLibrary)
			require.Nil(t, gpus)
			return
		}
	}
	require.NoError(t, err, "PYMOONCAKE_TEST_NVML is set")
	for i, g := range gpus {
		require.Equal(t, i, g.Ordinal)
		_, err := topology.NormalizeBusID(g.BusID)
		require.NoError(t, err)
	}
	t.Logf("gpus: %+v", gpus)
}
