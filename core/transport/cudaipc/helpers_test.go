package cudaipc

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/hostid"
)

// The tests run two "processes" of one host in this one: each side is a
// Transport with its own memory table, its own FAKE GPU driver (whose IPC
// maps the other driver's pages) and its own published pid.

var nextPID = 1000

// side is one "process".
type side struct {
	t        *testing.T
	name     string
	instance string
	x        *Transport
	mem      *memory.Table
	d        *fake.Driver
	fb       *fallback
}

func hostIdentity(pid int) *hostid.Identity {
	return &hostid.Identity{BootID: "fake-boot", NetNS: 1, PIDNS: 1, UID: 1000, PID: pid}
}

// newSide starts a side with a FAKE driver of devices GPUs. cfg's seams
// are filled in; its timeouts are kept.
func newSide(t *testing.T, name string, devices int, cfg Config) *side {
	t.Helper()
	nextPID++
	s := &side{t: t, name: name, instance: fmt.Sprintf("%016x", nextPID), mem: memory.New(), d: fake.New(devices)}
	t.Cleanup(func() { require.NoError(t, s.d.Close(), "fake GPU resources of %s leaked", name) })
	s.fb = &fallback{drivers: map[*fake.Driver]bool{}}
	cfg.Identity = hostIdentity(nextPID)
	if cfg.Alive == nil {
		cfg.Alive = func(int) bool { return true }
	}
	x, err := New(cfg, Deps{Name: name, Instance: s.instance, Memory: s.mem, GPU: s.d,
		Fallback: []transport.Transport{s.fb}, Logger: zaptest.NewLogger(t).Named(name)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, x.Close()) })
	s.x = x
	return s
}

// desc is the side's descriptor as its peers see it.
func (s *side) desc() *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{Name: s.name, Protocol: "tcp",
		Extra: map[string]json.RawMessage{metadata.InstanceKey: json.RawMessage(`"` + s.instance + `"`)}}
	s.x.Describe(d)
	for _, r := range s.mem.Regions() {
		d.Buffers = append(d.Buffers, metadata.BufferDesc{Name: s.name, Addr: r.Addr, Length: r.Length})
	}
	// As peers decode it from the wire.
	b, err := d.Marshal(false)
	require.NoError(s.t, err)
	out, err := metadata.DecodeSegmentDesc(b)
	require.NoError(s.t, err)
	return out
}

func (s *side) peer() transport.Peer {
	return transport.Peer{Name: s.name, Host: "127.0.0.1", Desc: s.desc()}
}

// register registers memory as the engine does (with the transport too).
func (s *side) register(addr uintptr, n int) {
	s.t.Helper()
	ord, err := s.d.Locate(addr, uint64(n))
	require.NoError(s.t, err)
	loc := "cpu:0"
	if ord != gpu.Host {
		loc = fmt.Sprintf("cuda:%d", ord)
	}
	require.NoError(s.t, s.mem.Add([]memory.Region{{Addr: uint64(addr), Length: uint64(n), Location: loc, Device: ord}}))
	require.NoError(s.t, s.x.RegisterMemory(uint64(addr), uint64(n), loc))
}

// unregister unregisters as the engine does: out of the table, pins
// drained, then the transports.
func (s *side) unregister(addr uintptr) error {
	s.t.Helper()
	_, err := s.mem.Remove([]uint64{uint64(addr)})
	require.NoError(s.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(s.t, s.mem.Wait(ctx, time.Minute, []uint64{uint64(addr)}))
	return s.x.UnregisterMemory(uint64(addr))
}

func (s *side) alloc(ord, n int) uintptr {
	s.t.Helper()
	a, err := s.d.Alloc(ord, n)
	require.NoError(s.t, err)
	s.register(a, n)
	return a
}

func (s *side) allocVMM(ord, n int, shareable bool) uintptr {
	s.t.Helper()
	a, err := s.d.AllocVMM(ord, n, shareable)
	require.NoError(s.t, err)
	s.register(a, n)
	return a
}

func (s *side) host(n int) []byte {
	s.t.Helper()
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	require.NoError(s.t, err)
	s.t.Cleanup(func() { _ = syscall.Munmap(b) })
	s.register(addrOf(b), n)
	return b
}

func (s *side) read(addr uintptr, n int) []byte {
	s.t.Helper()
	b := make([]byte, n)
	require.NoError(s.t, s.d.Read(addr, b))
	return b
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31) ^ seed
	}
	return b
}

// run submits reqs from s to peer and waits; it returns the tasks.
func (s *side) run(peer transport.Peer, opts transport.SubmitOptions, reqs ...transport.Request) []*transport.Task {
	s.t.Helper()
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	s.x.Submit(context.Background(), peer, tasks, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(s.t, g.Wait(ctx))
	return tasks
}

// fallback is a FAKE fallback transport: it records what it was given and
// copies in place, reaching "remote" device memory through the fake driver
// that owns it (both "processes" live in this one).
type fallback struct {
	mu      sync.Mutex
	got     []transport.Request
	drivers map[*fake.Driver]bool // every side's, to find device memory
	refuse  bool
	closes  uint64
}

func (f *fallback) Name() string { return "fallback" }

func (f *fallback) Accept(*metadata.SegmentDesc) error {
	if f.refuse {
		return fmt.Errorf("fallback refuses")
	}
	return nil
}

func (f *fallback) requests() []transport.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transport.Request(nil), f.got...)
}

func (f *fallback) Submit(_ context.Context, _ transport.Peer, tasks []*transport.Task, _ transport.SubmitOptions) {
	for _, task := range tasks {
		f.mu.Lock()
		f.got = append(f.got, task.Request)
		f.mu.Unlock()
		task.Start(1)
		task.PartDone(task.Length, f.copy(task.Request))
	}
}

// copy moves a request, local memory being host memory.
func (f *fallback) copy(r transport.Request) error {
	local := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(nil), r.Local)), r.Length)
	f.mu.Lock()
	defer f.mu.Unlock()
	for d := range f.drivers {
		if ord, err := d.Locate(uintptr(r.Remote), r.Length); err == nil && ord != gpu.Host {
			if r.Opcode == transport.Write {
				return d.Write(uintptr(r.Remote), local)
			}
			return d.Read(uintptr(r.Remote), local)
		}
	}
	remote := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(nil), uintptr(r.Remote))), r.Length)
	if r.Opcode == transport.Write {
		copy(remote, local)
	} else {
		copy(local, remote)
	}
	return nil
}

func (f *fallback) ClosePeer(string) {}
func (f *fallback) Close() error     { return nil }
func (f *fallback) PeerCloses(transport.Peer) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closes
}

// pair starts a target and an initiator; the initiator's fallback reaches
// the target's device memory.
func pair(t *testing.T, cfg Config) (tgt, ini *side) {
	t.Helper()
	tgt, ini = newSide(t, "target", 2, cfg), newSide(t, "initiator", 2, cfg)
	ini.fb.drivers[tgt.d] = true
	return tgt, ini
}
