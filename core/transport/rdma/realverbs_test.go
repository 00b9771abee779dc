package rdma

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/ibv"
)

// TestRealVerbsWithoutDevices runs the real libibverbs layer on a host
// without RDMA hardware (every CI host): RDMA forced fails with "no RDMA
// devices", and by default the engine would pick TCP. Where libibverbs
// itself is absent the failure is the conclusive ErrUnavailable.
func TestRealVerbsWithoutDevices(t *testing.T) {
	if os.Getenv("PYMOONCAKE_RDMA_DEVICES") != "" {
		t.Skip("this host has RDMA devices; the rdma_hw suite covers it")
	}
	p, err := ibv.Open()
	if err != nil {
		require.ErrorIs(t, err, ErrUnavailable)
		require.Contains(t, err.Error(), ibv.Library)
		require.True(t, FallBackToTCP(err, false), "absent libibverbs: the engine uses TCP")
		require.False(t, FallBackToTCP(err, true), "MC_FORCE_HCA makes it an init failure")
		return
	}
	if names, err := p.Devices(); err == nil {
		p.Close()
		t.Skipf("this host has RDMA devices %v", names)
	}
	p.Close()

	// Default: discovery finds no HCA, so the engine installs TCP.
	found, err := topology.Discover(os.DirFS("/"), nil, nil)
	require.NoError(t, err)
	require.Empty(t, found.HCAs)
	require.False(t, Wanted(false, false, found))

	tests := []struct {
		name string
		topo *topology.Topology
	}{
		{name: "forced with the discovered topology", topo: found},
		{name: "forced with a custom topology naming an hca", topo: mustTopo(t, `{"cpu:0":[["mlx5_0"],[]]}`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.True(t, Wanted(false, true, tc.topo))
			p, err := ibv.Open()
			require.NoError(t, err)
			tr, err := New(context.Background(), Config{}, Deps{Provider: p, LocalName: "h", Topology: tc.topo})
			require.Nil(t, tr)
			require.ErrorIs(t, err, ErrNoDevices)
			require.Contains(t, err.Error(), "no RDMA devices")
			require.True(t, FallBackToTCP(err, false))
			require.False(t, FallBackToTCP(err, true))
		})
	}
}
