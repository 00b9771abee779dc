package core

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

// Two engines whose HCAs are the FAKE in-process fabric: this proves the
// engine's RDMA wiring (selection, registration, descriptor, Connection
// handshake over the real RPC socket, routing), never RDMA hardware.
func TestEngineOverFakeRDMA(t *testing.T) {
	testutil.ResourceCheck(t)
	fab := fake.NewFabric()
	t.Cleanup(func() {
		fab.Close()
		require.Empty(t, fab.Leaks(), "fake verbs objects leaked")
	})
	start := func(host string) *engine.Engine {
		fab.AddNIC(host, fake.NICSpec{Name: "mlx5_0"})
		fab.AddNIC(host, fake.NICSpec{Name: "mlx5_1"})
		topo, err := topology.Parse([]byte(`{"cpu:0":[["mlx5_0","mlx5_1"],[]]}`))
		require.NoError(t, err)
		cfg := configOf(t, map[string]string{"MC_SLICE_SIZE": "65536"})
		cfg.Verbs, cfg.Topology = fab.Provider(host), topo
		e, err := New(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, e.Close()) })
		return e
	}
	tgt, ini := start("hostA"), start("hostB")
	require.Equal(t, "rdma", tgt.Protocol())
	require.Zero(t, descOf(t, tgt).TCPDataPort)

	const size = 8<<20 + 123
	remote, local := testutil.Mmap(t, size), testutil.Mmap(t, size)
	require.NoError(t, tgt.RegisterMemory(addr(remote), size, "cpu:0"))
	require.NoError(t, ini.RegisterMemory(addr(local), size, "cpu:0"))

	var d struct {
		Protocol string
		Devices  []struct{ Name, GID string }
		Buffers  []struct {
			Name       string
			RKey, LKey []uint32
		}
	}
	require.NoError(t, json.Unmarshal(tgt.Descriptor(), &d))
	require.Equal(t, "rdma", d.Protocol)
	require.Len(t, d.Devices, 2)
	require.Equal(t, "cpu:0", d.Buffers[0].Name, "rdma buffers are named by location")
	require.Len(t, d.Buffers[0].RKey, 2, "one rkey per device")

	seg, err := ini.OpenSegment(ctxT(t), tgt.Name())
	require.NoError(t, err)
	fill(local, 41)
	require.NoError(t, ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Write, Local: addr(local), Segment: seg, Remote: uint64(addr(remote)), Length: size}}, nil))
	requireSame(t, local, remote)
	fill(remote, 42)
	require.NoError(t, ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Read, Local: addr(local), Segment: seg, Remote: uint64(addr(remote)), Length: size}}, nil))
	requireSame(t, remote, local)

	// A TCP engine cannot open an RDMA segment (Mooncake routes by protocol).
	tcpEngine, err := New(context.Background(), configOf(t, nil))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tcpEngine.Close()) })
	_, err = tcpEngine.OpenSegment(ctxT(t), tgt.Name())
	require.ErrorIs(t, err, engine.ErrNotSupported)

	require.NoError(t, ini.UnregisterMemory(addr(local)))
	require.NoError(t, tgt.UnregisterMemory(addr(remote)))
}

// USE_BAREX=1 without a shim fails init with a message naming the library;
// without USE_BAREX nothing about barex is loaded (the default engines of
// every other test run with no shim on this machine).
func TestBarexWithoutShimFailsInit(t *testing.T) {
	testutil.ResourceCheck(t)
	cfg := configOf(t, map[string]string{"USE_BAREX": "1", "MC_BAREX_SHIM": "/nonexistent/libmooncake_barex_shim.so"})
	topo, err := topology.Parse([]byte(`{"cpu:0":[["mlx5_0"],[]]}`)) // a host with an HCA
	require.NoError(t, err)
	cfg.Topology = topo
	_, err = New(context.Background(), cfg)
	require.Error(t, err)
	require.Contains(t, err.Error(), "libmooncake_barex_shim.so")
}

// Two engines with USE_BAREX=1 over the FAKE barex shim (built here with
// gcc, loaded through the real dlopen path): this proves the engine's
// barex wiring, never the barex SDK.
func TestEngineOverFakeBarex(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skipf("gcc builds the fake barex shim: %v", err)
	}
	shim := filepath.Join(t.TempDir(), "libmooncake_barex_shim.so")
	out, err := exec.Command(gcc, "-shared", "-fPIC", "-O1", "-pthread", "-Itransport/barex/shim", "-o", shim,
		"transport/barex/testdata/fakeshim/fake_barex_shim.c").CombinedOutput()
	require.NoError(t, err, "%s", out)
	testutil.ResourceCheck(t)

	cfg := configOf(t, map[string]string{
		"USE_BAREX":       "1",
		"MC_BAREX_SHIM":   shim,
		"MC_MIN_REG_SIZE": "1048576", // 1 MiB chunks, so transfers span chunks
	})
	t.Setenv("MCBX_FAKE_DEVICES", "fake_0,fake_1") // the fake shim's NICs
	topo, err := topology.Parse([]byte(`{"cpu:0":[["fake_0","fake_1"],[]]}`))
	require.NoError(t, err)
	cfg.Topology = topo
	start := func() *engine.Engine {
		e, err := New(context.Background(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, e.Close()) })
		return e
	}
	tgt, ini := start(), start()
	require.Equal(t, "barex", tgt.Protocol())
	const size = 3<<20 + 4096
	remote, local := testutil.Mmap(t, size), testutil.Mmap(t, size)
	require.NoError(t, tgt.RegisterMemory(addr(remote), size, "cpu:0"))
	require.NoError(t, ini.RegisterMemory(addr(local), size, "cpu:0"))
	var d struct{ Buffers []struct{ Length uint64 } }
	require.NoError(t, json.Unmarshal(tgt.Descriptor(), &d))
	require.Len(t, d.Buffers, 4, "registration split into MC_MIN_REG_SIZE chunks")

	seg, err := ini.OpenSegment(ctxT(t), tgt.Name())
	require.NoError(t, err)
	fill(local, 51)
	require.NoError(t, ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Write, Local: addr(local) + 4096, Segment: seg, Remote: uint64(addr(remote)) + 12288, Length: size - 12288}}, nil))
	requireSame(t, local[4096:size-8192], remote[12288:])
	fill(remote, 52)
	require.NoError(t, ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Read, Local: addr(local), Segment: seg, Remote: uint64(addr(remote)), Length: size}}, nil))
	requireSame(t, remote, local)
}
