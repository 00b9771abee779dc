package tcp

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// fakeGPU is the engine's side of Config.GPU over a FAKE GPU driver: its
// device memory faults if the transport touches it in place.
type fakeGPU struct {
	drv     *fake.Driver
	staging *gpu.Staging
}

func (g *fakeGPU) Device(addr, n uint64) int {
	ord, err := g.drv.Locate(uintptr(addr), n)
	if err != nil {
		return -1
	}
	return ord
}

func (g *fakeGPU) Stage(ord int) (Stage, error) {
	st, err := g.staging.Get(ord)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// newFakeGPU returns a fake GPU with 2 devices and 64 KiB staging chunks;
// at cleanup (after the transports, created later, are closed) it checks
// that every stage came back and nothing leaked.
func newFakeGPU(t *testing.T, slots int) *fakeGPU {
	t.Helper()
	drv := fake.New(2)
	t.Cleanup(func() { require.NoError(t, drv.Close(), "fake GPU resources leaked") })
	st, err := gpu.NewStaging(drv, gpu.StagingConfig{Chunk: 64 << 10, Slots: slots})
	require.NoError(t, err)
	t.Cleanup(func() {
		require.Zero(t, st.Outstanding(), "stages not released")
		require.NoError(t, st.Close())
	})
	return &fakeGPU{drv: drv, staging: st}
}

// mem is a test buffer in host memory (ord < 0) or fake device memory.
type mem struct {
	g    *fakeGPU
	ord  int
	addr uintptr
	host []byte
	n    int
}

func newMem(t *testing.T, g *fakeGPU, ord, n int) *mem {
	t.Helper()
	m := &mem{g: g, ord: ord, n: n}
	if ord < 0 {
		m.host = testutil.Mmap(t, n)
		m.addr = uintptr(addrOf(m.host))
		return m
	}
	a, err := g.drv.Alloc(ord, n)
	require.NoError(t, err)
	m.addr = a
	return m
}

func (m *mem) set(t *testing.T, b []byte) {
	t.Helper()
	if m.ord < 0 {
		copy(m.host, b)
		return
	}
	require.NoError(t, m.g.drv.Write(m.addr, b))
}

func (m *mem) get(t *testing.T) []byte {
	t.Helper()
	out := make([]byte, m.n)
	if m.ord < 0 {
		copy(out, m.host)
		return out
	}
	require.NoError(t, m.g.drv.Read(m.addr, out))
	return out
}

// gpuTransport starts a transport whose server accepts the given memories.
func gpuTransport(t *testing.T, cfg Config, g *fakeGPU, mems ...*mem) *Transport {
	t.Helper()
	reg := &registry{}
	for _, m := range mems {
		reg.regions = append(reg.regions, region{uint64(m.addr), uint64(m.addr) + uint64(m.n)})
	}
	cfg.Logger = zaptest.NewLogger(t)
	cfg.GPU = g
	tr, err := New(cfg, localListener(t), reg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tr.Close()) })
	return tr
}

func request(op transport.Opcode, local, remote *mem) transport.Request {
	return transport.Request{Opcode: op, Local: local.addr, Remote: uint64(remote.addr), Length: uint64(local.n)}
}

func TestGPUStagedTransfers(t *testing.T) {
	tests := []struct {
		name          string
		size          int
		local, remote int // device ordinal, -1 host
		op            transport.Opcode
		v1            bool
		slots         int
	}{
		{name: "write gpu to gpu, one partial chunk", size: 1000, local: 0, remote: 1, op: transport.Write},
		{name: "read gpu from gpu, exact chunks", size: 4 * 64 << 10, local: 1, remote: 0, op: transport.Read},
		{name: "write gpu to gpu, split over lanes", size: 5<<20 + 123, local: 0, remote: 0, op: transport.Write},
		{name: "read gpu from gpu, split over lanes", size: 5<<20 + 4097, local: 0, remote: 1, op: transport.Read},
		{name: "write host to gpu", size: 300 << 10, local: -1, remote: 1, op: transport.Write},
		{name: "write gpu to host", size: 300 << 10, local: 1, remote: -1, op: transport.Write},
		{name: "read host from gpu", size: 300<<10 + 1, local: -1, remote: 0, op: transport.Read},
		{name: "read gpu from host", size: 300<<10 + 1, local: 0, remote: -1, op: transport.Read},
		{name: "v1 write gpu to gpu", size: 200 << 10, local: 0, remote: 1, op: transport.Write, v1: true},
		{name: "v1 read gpu from gpu", size: 200 << 10, local: 1, remote: 0, op: transport.Read, v1: true},
		{name: "two slots", size: 1 << 20, local: 0, remote: 1, op: transport.Write, slots: 2},
		{name: "eight slots", size: 1 << 20, local: 0, remote: 1, op: transport.Read, slots: 8},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			slots := tc.slots
			if slots == 0 {
				slots = 3
			}
			g := newFakeGPU(t, slots)
			local, remote := newMem(t, g, tc.local, tc.size), newMem(t, g, tc.remote, tc.size)
			src, dst := local, remote
			if tc.op == transport.Read {
				src, dst = remote, local
			}
			want := make([]byte, tc.size)
			fill(want, uint64(i+1))
			src.set(t, want)

			tgt := gpuTransport(t, Config{}, g, remote)
			ini := gpuTransport(t, Config{ForceV1: tc.v1}, g)
			version := 2
			if tc.v1 {
				version = 1
			}
			tasks := transfer(t, ini, peerOf(tgt, version), request(tc.op, local, remote))
			requireDone(t, tasks...)
			if !tc.v1 {
				// Again as a synchronous call: one wire request (below
				// the split threshold) runs on the calling goroutine,
				// staging included.
				clear(want[:min(len(want), 64)])
				src.set(t, want)
				task := submitSync(context.Background(), ini, peerOf(tgt, version), request(tc.op, local, remote))
				if tc.size < int(DefaultSplitThreshold) {
					require.True(t, finished(task), "ran inline")
				}
				waitTask(t, task)
				requireDone(t, task)
			}
			if tc.v1 && tc.op == transport.Write {
				// v1 writes are not acknowledged: the bytes land once the
				// server has read and staged them.
				require.Eventually(t, func() bool { return bytes.Equal(want, dst.get(t)) }, 10*time.Second, time.Millisecond)
			}
			require.True(t, bytes.Equal(want, dst.get(t)), "data differs")
			if tc.local >= 0 || tc.remote >= 0 {
				require.Positive(t, g.drv.Copied(), "device memory moved through the copiers")
			}
		})
	}
}

func TestGPUMixedBatch(t *testing.T) {
	testutil.ResourceCheck(t)
	g := newFakeGPU(t, 3)
	const n = 700 << 10
	kinds := []struct{ local, remote int }{{-1, 0}, {0, -1}, {1, 0}, {-1, -1}, {0, 1}}
	var locals, remotes []*mem
	for _, k := range kinds {
		locals = append(locals, newMem(t, g, k.local, n))
		remotes = append(remotes, newMem(t, g, k.remote, n))
	}
	tgt := gpuTransport(t, Config{}, g, remotes...)
	ini := gpuTransport(t, Config{}, g)

	for round, op := range []transport.Opcode{transport.Write, transport.Read} {
		var reqs []transport.Request
		var wants [][]byte
		for i := range kinds {
			want := make([]byte, n)
			fill(want, uint64(100*round+i))
			wants = append(wants, want)
			if op == transport.Write {
				locals[i].set(t, want)
			} else {
				remotes[i].set(t, want)
			}
			reqs = append(reqs, request(op, locals[i], remotes[i]))
		}
		requireDone(t, transfer(t, ini, peerOf(tgt, 2), reqs...)...)
		for i := range kinds {
			dst := remotes[i]
			if op == transport.Read {
				dst = locals[i]
			}
			require.True(t, bytes.Equal(wants[i], dst.get(t)), "%s request %d: data differs", op, i)
		}
	}
}

func TestGPUClientCopyFailureSparesThePeer(t *testing.T) {
	testutil.ResourceCheck(t)
	iniGPU, tgtGPU := newFakeGPU(t, 3), newFakeGPU(t, 3)
	local := newMem(t, iniGPU, 0, 1<<20)
	remote := newMem(t, tgtGPU, -1, 1<<20)
	tgt := gpuTransport(t, Config{}, tgtGPU, remote)
	ini := gpuTransport(t, Config{}, iniGPU)
	pe := peerOf(tgt, 2)

	for _, op := range []transport.Opcode{transport.Write, transport.Read} {
		iniGPU.drv.FailCopiesAfter(0)
		tasks := transfer(t, ini, pe, request(op, local, remote))
		require.Equal(t, transport.Failed, tasks[0].Status(), "%s", op)
		require.ErrorIs(t, tasks[0].Err(), ErrStaging, "%s", op)
		require.NotErrorIs(t, tasks[0].Err(), ErrPeer, "%s", op)
		require.NoError(t, ini.PeerHealth(pe.Name), "a local GPU failure does not blame the peer")
		iniGPU.drv.FailCopiesAfter(-1)
		requireDone(t, transfer(t, ini, pe, request(op, local, remote))...)
	}
}

func TestGPUServerCopyFailureDropsTheConnection(t *testing.T) {
	testutil.ResourceCheck(t)
	iniGPU, tgtGPU := newFakeGPU(t, 3), newFakeGPU(t, 3)
	local := newMem(t, iniGPU, -1, 1<<20)
	remote := newMem(t, tgtGPU, 1, 1<<20)
	tgt := gpuTransport(t, Config{}, tgtGPU, remote)
	ini := gpuTransport(t, Config{}, iniGPU)
	pe := peerOf(tgt, 2)

	for _, op := range []transport.Opcode{transport.Write, transport.Read} {
		tgtGPU.drv.FailCopiesAfter(0)
		tasks := transfer(t, ini, pe, request(op, local, remote))
		require.Equal(t, transport.Failed, tasks[0].Status(), "%s", op)
		require.ErrorIs(t, tasks[0].Err(), ErrPeer, "%s: the target dropped the connection", op)
		tgtGPU.drv.FailCopiesAfter(-1)
		want := make([]byte, 1<<20)
		fill(want, 9)
		if op == transport.Write {
			local.set(t, want)
		} else {
			remote.set(t, want)
		}
		requireDone(t, transfer(t, ini, pe, request(op, local, remote))...)
		if op == transport.Write {
			require.True(t, bytes.Equal(want, remote.get(t)), "data differs")
		} else {
			require.True(t, bytes.Equal(want, local.get(t)), "data differs")
		}
	}
}

// noStages is a GPU whose staging always fails.
type noStages struct{}

var errNoStage = errors.New("no stage for you")

func (noStages) Device(uint64, uint64) int { return 0 }
func (noStages) Stage(int) (Stage, error)  { return nil, errNoStage }

func TestGPUNoStagingBuffers(t *testing.T) {
	testutil.ResourceCheck(t)
	src := testutil.Mmap(t, 4096)
	tgt := newTransport(t, Config{}, testutil.Mmap(t, 4096))
	cfg := Config{GPU: noStages{}, Logger: zaptest.NewLogger(t)}
	ini, err := New(cfg, localListener(t), &registry{})
	require.NoError(t, err)
	defer ini.Close()
	tasks := transfer(t, ini, peerOf(tgt, 2), write(src, 1))
	require.ErrorIs(t, tasks[0].Err(), ErrStaging)
	require.ErrorIs(t, tasks[0].Err(), errNoStage)
}
