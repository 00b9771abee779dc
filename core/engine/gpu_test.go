package engine

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// newFakeGPU returns a FAKE GPU driver with 2 devices, checked for leaks
// when the test ends (after the engines, created later, are closed).
func newFakeGPU(t *testing.T) *fake.Driver {
	t.Helper()
	d := fake.New(2)
	t.Cleanup(func() { require.NoError(t, d.Close(), "fake GPU resources leaked") })
	return d
}

func newGPUEngine(t *testing.T, d gpu.Driver) *Engine {
	t.Helper()
	return testEngine{gpu: d, staging: gpu.StagingConfig{Chunk: 256 << 10}}.mustStart(t)
}

// devMem is fake device memory of one test.
type devMem struct {
	d    *fake.Driver
	addr uintptr
	n    int
}

func allocDev(t *testing.T, d *fake.Driver, ord, n int) devMem {
	t.Helper()
	a, err := d.Alloc(ord, n)
	require.NoError(t, err)
	return devMem{d: d, addr: a, n: n}
}

func (m devMem) bytes(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, m.n)
	require.NoError(t, m.d.Read(m.addr, b))
	return b
}

func (m devMem) set(t *testing.T, b []byte) {
	t.Helper()
	require.NoError(t, m.d.Write(m.addr, b))
}

func locations(t *testing.T, e *Engine) []string {
	t.Helper()
	var d map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(e.Descriptor(), &d))
	raw, ok := d[LocationsKey]
	if !ok {
		return nil
	}
	var locs []string
	require.NoError(t, json.Unmarshal(raw, &locs))
	return locs
}

func TestRegisterDetectsGPUMemory(t *testing.T) {
	testutil.ResourceCheck(t)
	d := newFakeGPU(t)
	e := newGPUEngine(t, d)
	host := testutil.Mmap(t, 4096)
	dev0, dev1 := allocDev(t, d, 0, 8192), allocDev(t, d, 1, 4096)

	require.NoError(t, e.RegisterMemory(addr(host), 4096, "*"))
	require.Nil(t, locations(t, e), "no GPU buffer: the descriptor is Mooncake's own")

	tests := []struct {
		name     string
		addr     uintptr
		n        uint64
		location string
		want     string
		err      error
	}{
		{name: "detected", addr: dev0.addr, n: 4096, location: "*", want: "cuda:0"},
		{name: "caller said cpu", addr: dev0.addr + 4096, n: 4096, location: "cpu:0", want: "cuda:0"},
		{name: "caller named the wrong gpu", addr: dev1.addr, n: 4096, location: "cuda:0", want: "cuda:1"},
		{name: "past its allocation", addr: dev1.addr + 100, n: 4096, location: "*", err: ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := e.RegisterMemory(tc.addr, tc.n, tc.location)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.ErrorIs(t, err, gpu.ErrInvalidRange)
				return
			}
			require.NoError(t, err)
			locs := locations(t, e)
			require.Equal(t, tc.want, locs[len(locs)-1])
			require.Equal(t, "*", locs[0], "host memory keeps the caller's location")
			require.Equal(t, e.mem.Device(uint64(tc.addr), tc.n), int(tc.want[len(tc.want)-1]-'0'))
		})
	}
	var desc struct {
		Buffers []struct{ Name string } `json:"buffers"`
	}
	require.NoError(t, json.Unmarshal(e.Descriptor(), &desc))
	for _, b := range desc.Buffers {
		require.Equal(t, e.Name(), b.Name, "TCP buffers carry the segment name, as Mooncake's")
	}
	require.Equal(t, gpu.Host, e.mem.Device(uint64(addr(host)), 1))
}

// chunking is a FAKE stand-in for RDMA's and barex's Describe over a TCP
// transport: each buffer is published as chunks of chunkBytes, and the
// buffer at skip is left out (not registered with the transport).
type chunking struct {
	transport.Transport
	skip uint64
}

const chunkBytes = 4096

func (c chunking) Describe(d *metadata.SegmentDesc) {
	if ds, ok := c.Transport.(transport.Describer); ok {
		ds.Describe(d)
	}
	var out []metadata.BufferDesc
	for _, b := range d.Buffers {
		if b.Addr == c.skip {
			continue
		}
		for off := uint64(0); off < b.Length; off += chunkBytes {
			out = append(out, metadata.BufferDesc{Name: "cpu:0", Addr: b.Addr + off, Length: min(chunkBytes, b.Length-off)})
		}
	}
	d.Buffers = out
}

// The locations are paired with the buffers as the transports publish
// them, chunked and filtered (they were paired with the engine's regions,
// so a peer took host chunks for GPU ones and the reverse).
func TestLocationsFollowPublishedBuffers(t *testing.T) {
	testutil.ResourceCheck(t)
	d := newFakeGPU(t)
	skipped := testutil.Mmap(t, 4096)
	e := testEngine{gpu: d, wrap: func(x transport.Transport) transport.Transport {
		return chunking{Transport: x, skip: uint64(addr(skipped))}
	}}.mustStart(t)
	host := testutil.Mmap(t, 3*chunkBytes)
	dev := allocDev(t, d, 0, 2*chunkBytes)
	require.NoError(t, e.RegisterMemory(addr(skipped), 4096, "*"))
	require.NoError(t, e.RegisterMemory(addr(host), 3*chunkBytes, "cpu:0"))
	require.NoError(t, e.RegisterMemory(dev.addr, 2*chunkBytes, "*"))
	var desc struct {
		Buffers []struct {
			Addr uint64 `json:"addr"`
		} `json:"buffers"`
	}
	require.NoError(t, json.Unmarshal(e.Descriptor(), &desc))
	locs := locations(t, e)
	require.Len(t, locs, len(desc.Buffers))
	require.Len(t, locs, 5, "three host chunks and two GPU ones; the skipped buffer is not published")
	for i, b := range desc.Buffers {
		want := "cpu:0"
		if b.Addr >= uint64(dev.addr) && b.Addr < uint64(dev.addr)+2*chunkBytes {
			want = "cuda:0"
		}
		require.Equal(t, want, locs[i], "buffer %d at %#x", i, b.Addr)
	}
}

// gpuPair is two engines on one fake GPU host: an initiator with host and
// device buffers, a target with host and device buffers.
type gpuPair struct {
	d                *fake.Driver
	ini, tgt         *Engine
	iniHost, tgtHost []byte
	iniDev, tgtDev   devMem
	seg              SegmentHandle
}

func newGPUPair(t *testing.T, n int) *gpuPair {
	t.Helper()
	p := &gpuPair{d: newFakeGPU(t)}
	p.tgt, p.ini = newGPUEngine(t, p.d), newGPUEngine(t, p.d)
	p.iniHost, p.tgtHost = testutil.Mmap(t, n), testutil.Mmap(t, n)
	p.iniDev, p.tgtDev = allocDev(t, p.d, 0, n), allocDev(t, p.d, 1, n)
	require.NoError(t, p.ini.RegisterMemoryBatch([]uintptr{addr(p.iniHost), p.iniDev.addr}, []uint64{uint64(n), uint64(n)}, "*"))
	require.NoError(t, p.tgt.RegisterMemoryBatch([]uintptr{addr(p.tgtHost), p.tgtDev.addr}, []uint64{uint64(n), uint64(n)}, "*"))
	seg, err := p.ini.OpenSegment(ctxT(t), p.tgt.Name())
	require.NoError(t, err)
	p.seg = seg
	return p
}

func TestGPUTransfersBetweenEngines(t *testing.T) {
	testutil.ResourceCheck(t)
	const n = 3<<20 + 17
	p := newGPUPair(t, n)
	half := uint64(n / 2)
	for round, op := range []transport.Opcode{transport.Write, transport.Read} {
		// One batch: GPU to GPU, host to GPU (first half), GPU to host.
		srcDev, srcHost := make([]byte, n), make([]byte, n)
		fill(srcDev, uint64(round)+1)
		fill(srcHost, uint64(round)+11)
		reqs := []Request{
			{Opcode: op, Local: p.iniDev.addr, Segment: p.seg, Remote: uint64(p.tgtDev.addr), Length: half},
			{Opcode: op, Local: addr(p.iniHost), Segment: p.seg, Remote: uint64(p.tgtDev.addr) + half, Length: uint64(n) - half},
			{Opcode: op, Local: p.iniDev.addr + uintptr(half), Segment: p.seg, Remote: uint64(addr(p.tgtHost)), Length: uint64(n) - half},
		}
		if op == transport.Write {
			p.iniDev.set(t, srcDev)
			copy(p.iniHost, srcHost)
		} else {
			p.tgtDev.set(t, srcDev)
			copy(p.tgtHost, srcHost)
		}
		require.NoError(t, p.ini.Transfer(ctxT(t), reqs, nil))
		if op == transport.Write {
			got := p.tgtDev.bytes(t)
			requireSame(t, srcDev[:half], got[:half], "gpu to gpu")
			requireSame(t, srcHost[:uint64(n)-half], got[half:], "host to gpu")
			requireSame(t, srcDev[half:], p.tgtHost[:uint64(n)-half], "gpu to host")
		} else {
			got := p.iniDev.bytes(t)
			requireSame(t, srcDev[:half], got[:half], "gpu from gpu")
			requireSame(t, srcDev[half:], p.iniHost[:uint64(n)-half], "host from gpu")
			requireSame(t, srcHost[:uint64(n)-half], got[half:], "gpu from host")
		}
	}
	require.Positive(t, p.d.Copied())
}

// stream returns a fake stream of device ord and a kernel launcher on it.
func fakeStream(t *testing.T, d *fake.Driver, ord int) uintptr {
	t.Helper()
	s, err := d.NewStream(ord)
	require.NoError(t, err)
	return s
}

func syncStream(t *testing.T, d *fake.Driver, s uintptr) {
	t.Helper()
	require.NoError(t, d.Synchronize(ctxT(t), s))
}

func TestTransferOnStreamIsOrdered(t *testing.T) {
	testutil.ResourceCheck(t)
	const n = 1 << 20
	p := newGPUPair(t, n)
	s := fakeStream(t, p.d, 0)
	first, second := make([]byte, n), make([]byte, n)
	fill(first, 1)
	fill(second, 2)

	// Write: a kernel before the transfer produces the data, one after it
	// overwrites the source. The peer must get the first kernel's bytes.
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	require.NoError(t, p.d.Launch(s, func() { <-release; _ = p.d.Write(p.iniDev.addr, first) }))
	ticket, err := p.ini.TransferOnStream(p.tgt.Name(), []Request{{Opcode: transport.Write, Local: p.iniDev.addr, Remote: uint64(p.tgtDev.addr), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	var after []byte
	require.NoError(t, p.d.Launch(s, func() { require.NoError(t, p.d.Write(p.iniDev.addr, second)) }))
	done, err := p.ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.False(t, done, "the stream has not reached the transfer")
	close(release)
	syncStream(t, p.d, s)
	done, err = p.ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done, "the stream went on only after the transfer")
	requireSame(t, first, p.tgtDev.bytes(t), "peer got the first kernel's bytes")
	requireSame(t, second, p.iniDev.bytes(t))

	// Read: a kernel after the transfer sees the peer's bytes.
	p.tgtDev.set(t, first)
	ticket, err = p.ini.TransferOnStream(p.tgt.Name(), []Request{{Opcode: transport.Read, Local: p.iniDev.addr, Remote: uint64(p.tgtDev.addr), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	require.NoError(t, p.d.Launch(s, func() { after = make([]byte, n); require.NoError(t, p.d.Read(p.iniDev.addr, after)) }))
	syncStream(t, p.d, s)
	requireSame(t, first, after, "the kernel after the read saw the peer's bytes")
	done, err = p.ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done)

	// The default stream of a device (stream 0).
	ticket, err = p.ini.TransferOnStream(p.tgt.Name(), []Request{{Opcode: transport.Write, Local: addr(p.iniHost), Remote: uint64(addr(p.tgtHost)), Length: 10}}, 0, 1, 30*time.Second)
	require.NoError(t, err)
	require.Eventually(t, func() bool { done, err := p.ini.StreamTransferStatus(ticket); return done && err == nil }, 10*time.Second, time.Millisecond)
}

// TestTransferOnStreamNeedsNoDriverWhileHeld: while the stream is held,
// the transfer makes no driver call (a device-wide synchronisation in
// another thread would wait for the held stream and block the driver). The
// target's memory is host memory here: a GPU target in the same process
// would need its own staging copies while the initiator's stream is held.
func TestTransferOnStreamNeedsNoDriverWhileHeld(t *testing.T) {
	testutil.ResourceCheck(t)
	const n = 3<<20 + 5
	d := newFakeGPU(t)
	tgt, ini := newGPUEngine(t, d), newGPUEngine(t, d)
	remote := testutil.Mmap(t, n)
	src := allocDev(t, d, 1, n)
	require.NoError(t, tgt.RegisterMemory(addr(remote), n, "*"))
	require.NoError(t, ini.RegisterMemory(src.addr, n, "*"))
	s := fakeStream(t, d, 1)
	d.RefuseCallsWhileHeld(true)
	defer d.RefuseCallsWhileHeld(false)

	want := make([]byte, n)
	fill(want, 42)
	require.NoError(t, d.Launch(s, func() { _ = d.Write(src.addr, want) }))
	ticket, err := ini.TransferOnStream(tgt.Name(), []Request{{Opcode: transport.Write, Local: src.addr, Remote: uint64(addr(remote)), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	syncStream(t, d, s)
	done, err := ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done)
	requireSame(t, want, remote)

	fill(remote, 43)
	ticket, err = ini.TransferOnStream(tgt.Name(), []Request{{Opcode: transport.Read, Local: src.addr, Remote: uint64(addr(remote)), Length: n}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	var after []byte
	require.NoError(t, d.Launch(s, func() { after = make([]byte, n); _ = d.Read(src.addr, after) }))
	syncStream(t, d, s)
	done, err = ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done)
	requireSame(t, remote, after)

	// The staging path of an ordinary transfer would call the driver.
	require.Positive(t, d.Copied())
}

func TestTransferOnStreamFailures(t *testing.T) {
	testutil.ResourceCheck(t)
	const n = 64 << 10
	p := newGPUPair(t, n)
	s := fakeStream(t, p.d, 1)
	write := func(remote uint64) []Request {
		return []Request{{Opcode: transport.Write, Local: p.iniDev.addr, Remote: remote, Length: n}}
	}

	// Refused at once: nothing is queued on the stream.
	_, err := p.ini.TransferOnStream(p.tgt.Name(), write(12345), s, -1, time.Second)
	require.ErrorIs(t, err, ErrAddressNotRegistered)
	_, err = p.ini.TransferOnStream(p.tgt.Name(), nil, s, -1, time.Second)
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = p.ini.TransferOnStream(p.tgt.Name(), write(uint64(p.tgtDev.addr)), 0xdead0, -1, time.Second)
	require.ErrorIs(t, err, fake.ErrInvalidValue, "an unknown stream")
	_, err = p.ini.StreamTransferStatus(999)
	require.ErrorIs(t, err, ErrUnknownTicket)
	_, _, gates := p.d.Live()
	require.Zero(t, gates)

	// Closing the engine while the stream has not reached the transfer:
	// the ticket fails and the stream is let go.
	ini2 := newGPUEngine(t, p.d)
	require.NoError(t, ini2.RegisterMemory(p.iniDev.addr, n, "*"))
	release := holdStream(t, p.d, s)
	ticket, err := ini2.TransferOnStream(p.tgt.Name(), write(uint64(p.tgtDev.addr)), s, -1, time.Second)
	require.NoError(t, err)
	// Close cancels the engine, then waits for the stream to be done with
	// the bounce buffer, which it is once let go.
	closed := make(chan error, 1)
	go func() { closed <- ini2.Close() }()
	require.Eventually(t, func() bool { return ini2.ctx.Err() != nil }, 10*time.Second, time.Millisecond)
	release()
	require.NoError(t, <-closed)
	done, err := ini2.StreamTransferStatus(ticket)
	require.True(t, done)
	require.ErrorIs(t, err, ErrClosed)
	syncStream(t, p.d, s)
	_, err = ini2.TransferOnStream(p.tgt.Name(), write(uint64(p.tgtDev.addr)), s, -1, time.Second)
	require.ErrorIs(t, err, ErrClosed)

	// Failing once the stream reaches it: the peer is gone by then. The
	// failure is kept in the ticket and the stream goes on.
	release = holdStream(t, p.d, s)
	ticket, err = p.ini.TransferOnStream(p.tgt.Name(), write(uint64(p.tgtDev.addr)), s, -1, 2*time.Second)
	require.NoError(t, err)
	ran := false
	require.NoError(t, p.d.Launch(s, func() { ran = true }))
	require.NoError(t, p.tgt.Close())
	release()
	syncStream(t, p.d, s)
	require.True(t, ran, "the stream was let go")
	done, err = p.ini.StreamTransferStatus(ticket)
	require.True(t, done)
	require.Error(t, err)
}

// holdStream queues a kernel that runs until the returned release is
// called (at the latest when the test ends).
func holdStream(t *testing.T, d *fake.Driver, s uintptr) (release func()) {
	t.Helper()
	hold := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	require.NoError(t, d.Launch(s, func() { <-hold }))
	return release
}

func TestTransferOnStreamNeedsAGPU(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEngine(t, nil)
	_, err := e.TransferOnStream("x", []Request{{Opcode: transport.Write, Length: 1}}, 0, 0, time.Second)
	require.ErrorIs(t, err, ErrNotSupported)
}

func TestTicketsKeepTheLastOutcomes(t *testing.T) {
	var tt ticketTable
	var wg struct{ sync.WaitGroup }
	var first *streamOp
	for i := range ticketsKept + 1 {
		op, err := tt.start(&wg.WaitGroup, func(op *streamOp) { op.done.Store(true) })
		require.NoError(t, err)
		if i == 0 {
			first = op
		}
	}
	wg.Wait()
	require.Nil(t, tt.get(first.ticket), "the oldest outcome was dropped")
	require.NotNil(t, tt.get(first.ticket+1))
	require.NotNil(t, tt.get(ticketsKept+1))
	require.Nil(t, tt.get(ticketsKept+2))
	tt.close()
	_, err := tt.start(&wg.WaitGroup, func(*streamOp) {})
	require.ErrorIs(t, err, ErrClosed)
}
