package inproc

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

const instance = "0123456789abcdef"

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// env is a transport over its own memory table and, optionally, the FAKE
// GPU driver.
type env struct {
	t   *testing.T
	x   *Transport
	mem *memory.Table
	d   *fake.Driver
}

func newEnv(t *testing.T, withGPU bool) *env {
	t.Helper()
	e := &env{t: t, mem: memory.New()}
	cfg := Config{Instance: instance, Memory: e.mem, Logger: zaptest.NewLogger(t)}
	if withGPU {
		e.d = fake.New(2)
		t.Cleanup(func() { require.NoError(t, e.d.Close(), "fake GPU resources leaked") })
		cfg.GPU = e.d
	}
	x, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, x.Close()) })
	e.x = x
	return e
}

func (e *env) register(addr uintptr, n int, dev int) {
	e.t.Helper()
	loc := "cpu:0"
	if dev != memory.Host {
		loc = "cuda:0"
	}
	require.NoError(e.t, e.mem.Add([]memory.Region{{Addr: uint64(addr), Length: uint64(n), Location: loc, Device: dev}}))
}

func (e *env) dev(ord, n int) uintptr {
	e.t.Helper()
	a, err := e.d.Alloc(ord, n)
	require.NoError(e.t, err)
	e.register(a, n, ord)
	return a
}

// run submits reqs and waits for them, returning each task.
func (e *env) run(ctx context.Context, sync bool, reqs ...transport.Request) []*transport.Task {
	e.t.Helper()
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	e.x.Submit(ctx, transport.Peer{Name: "self"}, tasks, transport.SubmitOptions{Sync: sync})
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(e.t, g.Wait(wctx))
	return tasks
}

func descWith(id string) *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{Name: "127.0.0.1:1234", Protocol: "tcp"}
	if id != "" {
		d.Extra = map[string]json.RawMessage{metadata.InstanceKey: json.RawMessage(`"` + id + `"`)}
	}
	return d
}

func TestAccept(t *testing.T) {
	x := newEnv(t, false).x
	require.NoError(t, x.Accept(descWith(instance)))
	require.Error(t, x.Accept(descWith("fedcba9876543210")), "another engine")
	require.Error(t, x.Accept(descWith("")), "a Mooncake peer")
	_, err := New(Config{Memory: memory.New()})
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestHostCopies(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEnv(t, false)
	const n = 1 << 16
	a, b := testutil.Mmap(t, n), testutil.Mmap(t, n)
	e.register(addrOf(a), n, memory.Host)
	e.register(addrOf(b), n, memory.Host)
	for i := range a {
		a[i] = byte(i * 7)
	}
	for _, sync := range []bool{true, false} {
		clear(b)
		tasks := e.run(context.Background(), sync,
			transport.Request{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(b)), Length: n / 2},
			transport.Request{Opcode: transport.Read, Local: addrOf(b) + n/2, Remote: uint64(addrOf(a)) + n/2, Length: n / 2},
			transport.Request{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(b)), Length: 0},
		)
		for _, task := range tasks {
			require.Equal(t, transport.Completed, task.Status(), "sync %v", sync)
		}
		require.Equal(t, uint64(n/2), tasks[0].Transferred())
		require.Equal(t, a, b)
	}
}

func TestRejectsUnregisteredRanges(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEnv(t, true)
	const n = 4096
	a, b := testutil.Mmap(t, n), testutil.Mmap(t, n)
	e.register(addrOf(a), n, memory.Host)
	copy(b, bytes.Repeat([]byte{3}, n)) // b is not registered
	tasks := e.run(context.Background(), true,
		transport.Request{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(b)), Length: n},
		transport.Request{Opcode: transport.Read, Local: addrOf(a), Remote: uint64(addrOf(a)) + 1, Length: n},
	)
	for _, task := range tasks {
		require.ErrorIs(t, task.Err(), transport.ErrRejected)
	}
	require.Equal(t, bytes.Repeat([]byte{3}, n), b, "untouched")

	s, err := e.d.NewStream(0)
	require.NoError(t, err)
	dev := e.dev(0, n)
	err = e.x.SubmitOnStream(transport.Peer{}, []transport.Request{
		{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(dev), Length: n},
		{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(b)), Length: n},
	}, s, 0)
	require.ErrorIs(t, err, transport.ErrRejected)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, e.d.Synchronize(ctx, s))
	require.Zero(t, e.d.Copied(), "nothing was queued")
}

func TestGPUCopies(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEnv(t, true)
	const n = 1 << 16
	host := testutil.Mmap(t, n)
	e.register(addrOf(host), n, memory.Host)
	d0, d1 := e.dev(0, n), e.dev(1, n)
	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i*13 + 1)
	}
	copy(host, want)
	// host → device 0 → device 1 → host (cleared first), every direction
	// through the driver's copy queues.
	tasks := e.run(context.Background(), false,
		transport.Request{Opcode: transport.Write, Local: addrOf(host), Remote: uint64(d0), Length: n},
		transport.Request{Opcode: transport.Read, Local: d1, Remote: uint64(d0), Length: n},
	)
	for _, task := range tasks {
		require.NoError(t, task.Err())
	}
	clear(host)
	tasks = e.run(context.Background(), true,
		transport.Request{Opcode: transport.Write, Local: d1, Remote: uint64(addrOf(host)), Length: n})
	require.NoError(t, tasks[0].Err())
	require.Equal(t, want, host)
	copiers, _, _ := e.d.Live()
	require.LessOrEqual(t, copiers, 2, "copy queues are pooled per device")
}

func TestCancelledAndClosed(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEnv(t, false)
	a := testutil.Mmap(t, 4096)
	e.register(addrOf(a), 4096, memory.Host)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tasks := e.run(ctx, false, transport.Request{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(a)), Length: 16})
	require.ErrorIs(t, tasks[0].Err(), context.Canceled)
	require.NoError(t, e.x.Close())
	tasks = e.run(context.Background(), true, transport.Request{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(a)), Length: 16})
	require.ErrorIs(t, tasks[0].Err(), transport.ErrClosed)
	require.ErrorIs(t, e.x.SubmitOnStream(transport.Peer{}, nil, 0, 0), transport.ErrClosed)
	require.NoError(t, e.x.Close(), "idempotent")
}

// A range being unregistered takes no new copy: once unregister_memory has
// taken it out of the table, the copy fails instead of touching it.
func TestRangeBeingUnregisteredIsRefused(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEnv(t, false)
	const n = 1 << 20
	a, b := testutil.Mmap(t, n), testutil.Mmap(t, n)
	e.register(addrOf(a), n, memory.Host)
	e.register(addrOf(b), n, memory.Host)
	_, err := e.mem.Remove([]uint64{uint64(addrOf(b))})
	require.NoError(t, err)
	copy(a, bytes.Repeat([]byte{1}, n))
	tasks := e.run(context.Background(), true, transport.Request{Opcode: transport.Write, Local: addrOf(a), Remote: uint64(addrOf(b)), Length: n})
	require.ErrorIs(t, tasks[0].Err(), transport.ErrRejected)
	require.Equal(t, make([]byte, n), b, "untouched")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	require.NoError(t, e.mem.Wait(ctx, time.Minute, []uint64{uint64(addrOf(b))}), "no pin left behind")
}

// SubmitOnStream queues the copies on the caller's stream: they run after
// the kernels queued before the call and before those queued after it,
// without a gate.
func TestSubmitOnStreamIsOrdered(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEnv(t, true)
	e.d.RefuseCallsWhileHeld(true)
	const n = 4096
	host := testutil.Mmap(t, n)
	e.register(addrOf(host), n, memory.Host)
	src, dst := e.dev(0, n), e.dev(1, n)
	s, err := e.d.NewStream(0)
	require.NoError(t, err)

	release := make(chan struct{})
	require.NoError(t, e.d.Launch(s, func() {
		<-release
		_ = e.d.Write(src, bytes.Repeat([]byte{7}, n)) // the kernel before
	}))
	reqs := []transport.Request{
		{Opcode: transport.Read, Local: dst, Remote: uint64(src), Length: n},                    // device 0 → device 1
		{Opcode: transport.Write, Local: dst, Remote: uint64(addrOf(host)), Length: n},          // device 1 → host
		{Opcode: transport.Write, Local: addrOf(host), Remote: uint64(addrOf(host)), Length: 0}, // nothing
	}
	require.NoError(t, e.x.SubmitOnStream(transport.Peer{}, reqs, s, 0))
	seen := make(chan []byte, 1)
	require.NoError(t, e.d.Launch(s, func() { seen <- bytes.Clone(host) })) // the kernel after
	require.Zero(t, e.d.Copied(), "queued, not run: the stream is still in the kernel before")
	close(release)
	select {
	case got := <-seen:
		require.Equal(t, bytes.Repeat([]byte{7}, n), got)
	case <-time.After(10 * time.Second):
		t.Fatal("the stream did not run the copies")
	}
	_, _, gates := e.d.Live()
	require.Zero(t, gates, "no gate: nothing held the stream")
}
