package core

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	vfake "github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

// The page-locked bounce buffers of the *_on_cuda calls are local memory
// of the engine's own: they are registered with the transport that needs
// local memory registered (RDMA here), or the transfer could not use them.
// RDMA runs over the FAKE verbs fabric and the GPU is the FAKE driver.
func TestTransferOnStreamOverFakeRDMA(t *testing.T) {
	testutil.ResourceCheck(t)
	fab := vfake.NewFabric()
	t.Cleanup(func() {
		fab.Close()
		require.Empty(t, fab.Leaks(), "fake verbs objects leaked")
	})
	d := fake.New(1)
	t.Cleanup(func() { require.NoError(t, d.Close(), "fake GPU resources leaked") })
	start := func(host string) *engine.Engine {
		fab.AddNIC(host, vfake.NICSpec{Name: "mlx5_0"})
		topo, err := topology.Parse([]byte(`{"cpu:0":[["mlx5_0"],[]],"cuda:0":[["mlx5_0"],[]]}`))
		require.NoError(t, err)
		cfg := configOf(t, nil)
		cfg.NoGPU, cfg.GPU, cfg.Verbs, cfg.Topology = false, d, fab.Provider(host), topo
		e, err := New(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, e.Close()) })
		return e
	}
	tgt, ini := start("hostA"), start("hostB")
	require.Equal(t, "rdma", ini.Protocol())
	const n = 1 << 20
	remote := testutil.Mmap(t, n)
	require.NoError(t, tgt.RegisterMemory(addr(remote), n, "cpu:0"))
	dev, err := d.Alloc(0, n)
	require.NoError(t, err)
	defer d.Free(dev)
	require.NoError(t, ini.RegisterMemory(dev, n, "*"))
	want := make([]byte, n)
	fill(want, 3)
	require.NoError(t, d.Write(dev, want))
	s, err := d.NewStream(0)
	require.NoError(t, err)

	ticket, err := ini.TransferOnStream(tgt.Name(), []engine.Request{{Opcode: transport.Write, Local: dev, Remote: uint64(addr(remote)), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, d.Synchronize(ctx, s))
	done, err := ini.StreamTransferStatus(ticket)
	require.NoError(t, err, "the bounce buffer went over RDMA")
	require.True(t, done)
	requireSame(t, want, remote)
}
