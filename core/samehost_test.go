package core

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/cudaipc"
)

// gpuEngine starts an engine on the FAKE GPU driver d. pid, when not 0,
// stands for another process of this host (CUDA IPC between engines of one
// test process needs each to publish its own pid).
func gpuEngine(t *testing.T, d *fake.Driver, env map[string]string, pid int) *engine.Engine {
	t.Helper()
	cfg := configOf(t, env)
	cfg.NoGPU, cfg.GPU = false, d
	if pid != 0 {
		cfg.CUDAIPC.Identity = &cudaipc.Identity{BootID: "fake-boot", NetNS: 1, PIDNS: 1, UID: 1000, PID: pid}
		cfg.CUDAIPC.Alive = func(int) bool { return true }
	}
	e, err := New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

func newFake(t *testing.T, devices int) *fake.Driver {
	t.Helper()
	d := fake.New(devices)
	t.Cleanup(func() { require.NoError(t, d.Close(), "fake GPU resources leaked") })
	return d
}

func devAlloc(t *testing.T, d *fake.Driver, ord, n int, vmm bool) uintptr {
	t.Helper()
	var a uintptr
	var err error
	if vmm {
		a, err = d.AllocVMM(ord, n, true)
	} else {
		a, err = d.Alloc(ord, n)
	}
	require.NoError(t, err)
	return a
}

func devBytes(t *testing.T, d *fake.Driver, a uintptr, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	require.NoError(t, d.Read(a, b))
	return b
}

// issue18 runs the workload of issue 18 item 1 on the FAKE GPU, against
// the engine's own segment: one engine, two GPU buffers registered in it;
// a side stream waits for the default stream (an event), then a
// transfer_read_on_cuda or _write_on_cuda (single, or a batch over 4
// chunks) runs on it; the default stream computes meanwhile (matmul: a
// kernel), then waits for the side stream, and the result is checked on
// it. Ten iterations, each with a new fill value. The fake refuses every
// staging call made while a stream is held, as a lazily loaded kernel
// makes a real driver wait for the held stream. It returns the tickets'
// errors.
func issue18(t *testing.T, e *engine.Engine, d *fake.Driver, read, batch, matmul bool) []error {
	t.Helper()
	const n = 1 << 20
	src, dst := devAlloc(t, d, 0, n, false), devAlloc(t, d, 0, n, false)
	t.Cleanup(func() { _ = d.Free(src); _ = d.Free(dst) })
	require.NoError(t, e.RegisterMemory(src, n, "*"))
	require.NoError(t, e.RegisterMemory(dst, n, "*"))
	defer func() {
		require.NoError(t, e.UnregisterMemory(src))
		require.NoError(t, e.UnregisterMemory(dst))
	}()
	copyStream, err := d.NewStream(0)
	require.NoError(t, err)
	d.RefuseCallsWhileHeld(true)
	defer d.RefuseCallsWhileHeld(false)

	var errs []error
	for it := range 10 {
		val := byte(it + 1)
		fillBuf := make([]byte, n)
		for i := range fillBuf {
			fillBuf[i] = val
		}
		// The default stream fills the source, then records an event.
		event := make(chan struct{})
		require.NoError(t, d.Launch(0, func() { _ = d.Write(src, fillBuf); _ = d.Write(dst, make([]byte, n)) }))
		require.NoError(t, d.Launch(0, func() { close(event) }))
		// copy_stream.wait_event(event)
		require.NoError(t, d.Launch(copyStream, func() { <-event }))
		// local is where the bytes end up: a read copies src (remote) into
		// dst (local); a write copies src (local) into dst (remote).
		local, remote := dst, src
		op := transport.Read
		if !read {
			local, remote, op = src, dst, transport.Write
		}
		var reqs []engine.Request
		if batch {
			for c := range 4 {
				off := uintptr(c * n / 4)
				reqs = append(reqs, engine.Request{Opcode: op, Local: local + off, Remote: uint64(remote + off), Length: n / 4})
			}
		} else {
			reqs = []engine.Request{{Opcode: op, Local: local, Remote: uint64(remote), Length: n}}
		}
		ticket, err := e.TransferOnStream(e.Name(), reqs, copyStream, -1, 30*time.Second)
		require.NoError(t, err)
		if matmul {
			// The 4096x4096 matmul on the default stream: a kernel the
			// fake runs for a while.
			require.NoError(t, d.Launch(0, func() { time.Sleep(2 * time.Millisecond) }))
		}
		// default_stream.wait_event(copy_stream's event), then the check.
		done := make(chan struct{})
		require.NoError(t, d.Launch(copyStream, func() { close(done) }))
		require.NoError(t, d.Launch(0, func() { <-done }))
		var got []byte
		require.NoError(t, d.Launch(0, func() { got = devBytes(t, d, dst, n) }))
		require.NoError(t, d.Synchronize(ctxT(t), 0))
		require.Eventually(t, func() bool { ok, _ := e.StreamTransferStatus(ticket); return ok }, 30*time.Second, time.Millisecond)
		_, terr := e.StreamTransferStatus(ticket)
		errs = append(errs, terr)
		if terr == nil {
			requireSame(t, fillBuf, got, fmt.Sprintf("iteration %d", it))
		}
	}
	return errs
}

// Issue 18 item 1: *_on_cuda to the engine's own segment. The in-process
// transport queues the copies on the stream itself: no stream is held and
// no driver call waits for one. Reads and writes, single and batch, with
// and without the concurrent matmul.
func TestIssue18OwnSegmentOnCUDA(t *testing.T) {
	testutil.ResourceCheck(t)
	d := newFake(t, 1)
	e := gpuEngine(t, d, nil, 0)
	for _, read := range []bool{true, false} {
		for _, batch := range []bool{false, true} {
			for _, matmul := range []bool{false, true} {
				t.Run(fmt.Sprintf("read=%v/batch=%v/matmul=%v", read, batch, matmul), func(t *testing.T) {
					for i, err := range issue18(t, e, d, read, batch, matmul) {
						require.NoError(t, err, "iteration %d", i)
					}
					_, _, gates := d.Live()
					require.Zero(t, gates, "no stream was held")
				})
			}
		}
	}
}

// The cause of issue 18 item 1, shown on the fake: without the same-host
// transports (PYMOONCAKE_SAME_HOST=0) the engine's own segment goes over
// TCP loopback, the stream is held, and the serving side (this same
// process) stages GPU memory through the driver meanwhile, which a real
// driver can block on (the fake refuses it).
func TestIssue18CauseWithoutSameHost(t *testing.T) {
	testutil.ResourceCheck(t)
	d := newFake(t, 1)
	e := gpuEngine(t, d, map[string]string{"PYMOONCAKE_SAME_HOST": "0"}, 0)
	errs := issue18(t, e, d, true, false, false)
	// The serving side's staging call was refused, so it dropped the
	// connection: on a real GPU it waited instead, until the deadline.
	require.Error(t, errs[0], "the read staged GPU memory while the stream was held")
}

// Two engines of two "processes" of one host, each on its own FAKE GPU
// driver: GPU memory moves through CUDA IPC (legacy and VMM), host memory
// of the peer over the TCP fallback, *_on_cuda on the caller's stream; an
// unregistration on the target drops the initiator's mapping.
func TestCUDAIPCBetweenEngines(t *testing.T) {
	testutil.ResourceCheck(t)
	dt, di := newFake(t, 2), newFake(t, 2)
	tgt := gpuEngine(t, dt, nil, 4242)
	ini := gpuEngine(t, di, nil, 4343)
	const n = 1 << 20
	legacy, vmm := devAlloc(t, dt, 0, n, false), devAlloc(t, dt, 1, n, true)
	thost := testutil.Mmap(t, n)
	for _, a := range []uintptr{legacy, vmm, addr(thost)} {
		require.NoError(t, tgt.RegisterMemory(a, n, "*"))
	}
	idev := devAlloc(t, di, 0, n, false)
	ihost := testutil.Mmap(t, n)
	require.NoError(t, ini.RegisterMemory(idev, n, "*"))
	require.NoError(t, ini.RegisterMemory(addr(ihost), n, "*"))

	want := make([]byte, n)
	fill(want, 5)
	copy(ihost, want)
	// host → legacy GPU, legacy → VMM through the initiator's GPU, peer
	// host memory over TCP; a synchronous batch.
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []engine.Request{
		{Opcode: transport.Write, Local: addr(ihost), Remote: uint64(legacy), Length: n},
		{Opcode: transport.Write, Local: addr(ihost), Remote: uint64(addr(thost)), Length: n},
	}, nil))
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []engine.Request{
		{Opcode: transport.Read, Local: idev, Remote: uint64(legacy), Length: n},
	}, nil))
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []engine.Request{
		{Opcode: transport.Write, Local: idev, Remote: uint64(vmm), Length: n},
	}, nil))
	requireSame(t, want, devBytes(t, dt, legacy, n))
	requireSame(t, want, thost)
	requireSame(t, want, devBytes(t, dt, vmm, n))
	mappings, _, imports := di.LiveIPC()
	require.Equal(t, 2, mappings)
	require.Equal(t, 2, imports)

	// An asynchronous batch reading back into host memory.
	clear(ihost)
	h, err := ini.OpenSegment(ctxT(t), tgt.Name())
	require.NoError(t, err)
	id, err := ini.AllocateBatch(2)
	require.NoError(t, err)
	require.NoError(t, ini.Submit(id, []engine.Request{
		{Opcode: transport.Read, Local: addr(ihost), Segment: h, Remote: uint64(vmm), Length: n / 2},
		{Opcode: transport.Read, Local: addr(ihost) + n/2, Segment: h, Remote: uint64(vmm) + n/2, Length: n / 2},
	}))
	st, err := ini.Wait(ctxT(t), id)
	require.NoError(t, err)
	require.Equal(t, transport.Completed, st)
	require.NoError(t, ini.FreeBatch(id))
	requireSame(t, want, ihost)

	// *_on_cuda: queued on the caller's stream, no gate.
	s, err := di.NewStream(0)
	require.NoError(t, err)
	fill(want, 6)
	require.NoError(t, di.Launch(s, func() { _ = di.Write(idev, want) }))
	ticket, err := ini.TransferOnStream(tgt.Name(), []engine.Request{{Opcode: transport.Write, Local: idev, Remote: uint64(legacy), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	var seen []byte
	require.NoError(t, di.Launch(s, func() { seen = devBytes(t, dt, legacy, n) }))
	require.NoError(t, di.Synchronize(ctxT(t), s))
	done, err := ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done)
	requireSame(t, want, seen, "the kernel after the write saw the peer's bytes")
	_, _, gates := di.Live()
	require.Zero(t, gates)

	// *_on_cuda to the peer's host memory cannot go on the stream: the
	// engine holds the stream and the transfer goes over TCP.
	ticket, err = ini.TransferOnStream(tgt.Name(), []engine.Request{{Opcode: transport.Read, Local: idev, Remote: uint64(addr(thost)), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	require.NoError(t, di.Synchronize(ctxT(t), s))
	require.Eventually(t, func() bool { ok, _ := ini.StreamTransferStatus(ticket); return ok }, 10*time.Second, time.Millisecond)
	_, err = ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	requireSame(t, thost, devBytes(t, di, idev, n))

	// The target unregisters: the initiator has dropped its mapping when
	// that returns.
	require.NoError(t, tgt.UnregisterMemory(legacy))
	mappings, _, _ = di.LiveIPC()
	require.Equal(t, 1, mappings)
	require.NoError(t, tgt.UnregisterMemory(vmm))
	mappings, _, _ = di.LiveIPC()
	require.Zero(t, mappings)
	require.NoError(t, ini.UnregisterMemory(idev))
	require.NoError(t, dt.Free(legacy))
	require.NoError(t, dt.Free(vmm))
	require.NoError(t, di.Free(idev))
}

// PYMOONCAKE_CUDA_IPC=0: GPU memory of a same-host peer goes over TCP.
func TestCUDAIPCOff(t *testing.T) {
	testutil.ResourceCheck(t)
	dt, di := newFake(t, 1), newFake(t, 1)
	tgt := gpuEngine(t, dt, nil, 5252)
	ini := gpuEngine(t, di, map[string]string{"PYMOONCAKE_CUDA_IPC": "0"}, 5353)
	const n = 64 << 10
	remote := devAlloc(t, dt, 0, n, false)
	require.NoError(t, tgt.RegisterMemory(remote, n, "*"))
	local := testutil.Mmap(t, n)
	fill(local, 8)
	require.NoError(t, ini.RegisterMemory(addr(local), n, "*"))
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []engine.Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(remote), Length: n}}, nil))
	requireSame(t, local, devBytes(t, dt, remote, n))
	_, _, imports := di.LiveIPC()
	require.Zero(t, imports, "nothing was mapped")
	require.NoError(t, tgt.UnregisterMemory(remote))
	require.NoError(t, dt.Free(remote))
}
