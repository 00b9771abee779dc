package core

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

// Recovery is the engine's, not a transport's: a peer that dies fails
// CheckSegmentStatus with transport.ErrPeer, and a peer that restarts
// under the same name is re-resolved by the next synchronous call, which
// succeeds, whether the engines talk TCP, RDMA or barex. These run RDMA
// over the FAKE in-process verbs fabric and barex over the FAKE shim: they
// prove the engine's recovery on those transports, never the hardware.
func TestRecoveryOnEveryTransport(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup returns a function that configures an engine started on
		// host (RDMA's fake fabric has one per host).
		setup func(t *testing.T) func(cfg *Config, host string)
	}{
		{"tcp", func(*testing.T) func(*Config, string) { return func(*Config, string) {} }},
		{"rdma", func(t *testing.T) func(*Config, string) {
			fab := fake.NewFabric()
			t.Cleanup(func() {
				fab.Close()
				require.Empty(t, fab.Leaks(), "fake verbs objects leaked")
			})
			hosts := map[string]bool{}
			return func(cfg *Config, host string) {
				if !hosts[host] {
					hosts[host] = true
					fab.AddNIC(host, fake.NICSpec{Name: "mlx5_0"})
				}
				topo, err := topology.Parse([]byte(`{"cpu:0":[["mlx5_0"],[]]}`))
				require.NoError(t, err)
				cfg.Verbs, cfg.Topology = fab.Provider(host), topo
				cfg.RDMA.RetryCnt = 2
			}
		}},
		{"barex", func(t *testing.T) func(*Config, string) {
			shim := buildFakeShim(t)
			t.Setenv("MCBX_FAKE_DEVICES", "fake_0")
			return func(cfg *Config, _ string) {
				topo, err := topology.Parse([]byte(`{"cpu:0":[["fake_0"],[]]}`))
				require.NoError(t, err)
				cfg.Env.UseBarex, cfg.Barex.ShimPath, cfg.Topology = true, shim, topo
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// First, so that its check runs after every other cleanup (the
			// fakes' included).
			testutil.ResourceCheck(t)
			setup := tc.setup(t)
			meta := startHTTPMetadata(t)
			start := func(name, host string) *engine.Engine {
				// Same-host transports off: both engines run in this
				// process, and the transport under test must carry them.
				cfg := configOf(t, map[string]string{"PYMOONCAKE_SAME_HOST": "0"})
				cfg.LocalName, cfg.Metadata = name, meta
				cfg.Env.TCPBindAddress = "127.0.0.1"
				cfg.Env.TransferTimeout = 10 * time.Second
				setup(&cfg, host)
				e, err := New(context.Background(), cfg)
				require.NoError(t, err)
				return e
			}
			const size = 1 << 20
			local, remote := testutil.Mmap(t, size), testutil.Mmap(t, size)
			ini := start("initiator", "hostB")
			defer ini.Close()
			require.NoError(t, ini.RegisterMemory(addr(local), size, "cpu:0"))
			write := func(tgt *engine.Engine) error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return ini.TransferTo(ctx, "target", []engine.Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: size}}, nil)
			}

			tgt := start("target", "hostA")
			require.NoError(t, tgt.RegisterMemory(addr(remote), size, "cpu:0"))
			fill(local, 1)
			require.NoError(t, write(tgt))
			requireSame(t, local, remote)

			// The target restarts under the same name, registering the same
			// memory again: the initiator's cached descriptor, connections
			// and keys are stale. The next call fails over them, re-resolves
			// the peer and succeeds on the retry.
			require.NoError(t, tgt.Close())
			tgt = start("target", "hostA")
			defer func() { tgt.Close() }()
			require.NoError(t, tgt.RegisterMemory(addr(remote), size, "cpu:0"))
			fill(local, 2)
			clear(remote)
			require.NoError(t, write(tgt), "the call after a restart succeeds")
			requireSame(t, local, remote)

			// The target dies: its requests fail on the peer's connections,
			// CheckSegmentStatus says so, and Recover drops the handle.
			h, err := ini.OpenSegment(ctxT(t), "target")
			require.NoError(t, err)
			require.NoError(t, tgt.Close())
			id, err := ini.AllocateBatch(1)
			require.NoError(t, err)
			require.NoError(t, ini.Submit(id, []engine.Request{{Opcode: transport.Write, Local: addr(local), Segment: h, Remote: uint64(addr(remote)), Length: size}}))
			st, err := ini.Wait(ctxT(t), id)
			require.Equal(t, transport.Failed, st)
			require.ErrorIs(t, err, transport.ErrPeer)
			require.NoError(t, ini.FreeBatch(id))
			require.ErrorIs(t, ini.CheckSegmentStatus(h), transport.ErrPeer)
			require.True(t, ini.Recover(ctxT(t), h, err))
			require.ErrorIs(t, ini.CheckSegmentStatus(h), engine.ErrUnknownSegment)

			// The metrics saw it all, whichever the transport.
			m := ini.Metrics().Transports[tc.name].Write
			require.Equal(t, uint64(2*size), m.Bytes, "two writes completed")
			require.Equal(t, m.Requests, 2+m.Failed())
			require.GreaterOrEqual(t, m.Failures["peer"], uint64(1), "the dead target's")
			require.Equal(t, uint64(1), ini.Metrics().Recoveries["dropped"])
		})
	}
}

// buildFakeShim compiles the FAKE barex shim (a C library standing in for
// accl-barex) with gcc, or skips.
func buildFakeShim(t *testing.T) string {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skipf("gcc builds the fake barex shim: %v", err)
	}
	shim := filepath.Join(t.TempDir(), "libmooncake_barex_shim.so")
	out, err := exec.Command(gcc, "-shared", "-fPIC", "-O1", "-pthread", "-Itransport/barex/shim", "-o", shim,
		"transport/barex/testdata/fakeshim/fake_barex_shim.c").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return shim
}
