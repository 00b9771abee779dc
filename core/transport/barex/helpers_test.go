//go:build cgo && linux

package barex

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
)

// The FAKE shim (testdata/fakeshim), built once by TestMain with gcc and
// loaded by every test through the real dlopen path. ctl is one more
// reference to it that the tests hold, to read its process-wide counters.
var (
	fakeShim  string
	fakeErr   error
	fakeDir   string
	ctl       *shimLib
	buildOnce sync.Once
)

// TestMain also checks the whole package: no fake engine left open, and no
// channel ever left for an engine's close to clean up.
func TestMain(m *testing.M) {
	code := m.Run()
	if ctl != nil {
		engines, _ := ctl.testControl(nil, "live_engines", 0)
		chans, _ := ctl.testControl(nil, "chans_at_close", 0)
		if code == 0 && (engines != 0 || chans != 0) {
			fmt.Fprintf(os.Stderr, "barex tests leaked %d fake engines and left %d channels to engine close\n", engines, chans)
			code = 1
		}
		ctl.close()
	}
	if fakeDir != "" {
		os.RemoveAll(fakeDir)
	}
	os.Exit(code)
}

// buildShim compiles the fake shim with extra gcc flags into out.
func buildShim(out string, flags ...string) error {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return err
	}
	args := append([]string{"-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", "-Ishim"}, flags...)
	args = append(args, "-o", out, filepath.Join("testdata", "fakeshim", "fake_barex_shim.c"))
	if b, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("gcc %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// requireFake returns the fake shim's path, building it on first use. It
// skips only when gcc is absent; a failed build fails the test.
func requireFake(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if _, err := exec.LookPath("gcc"); err != nil {
			fakeErr = err
			return
		}
		dir, err := os.MkdirTemp("", "barex-fake-")
		if err != nil {
			fakeErr = err
			return
		}
		fakeDir = dir
		path := filepath.Join(dir, ShimName)
		if err := buildShim(path); err != nil {
			fakeErr = err
			return
		}
		fakeShim = path
		ctl, fakeErr = loadShim(path)
	})
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skipf("gcc is needed to build the fake barex shim: %v", err)
	}
	require.NoError(t, fakeErr, "build or load the fake shim")
	return fakeShim
}

// global reads a process-wide counter of the fake.
func global(t testing.TB, key string) int64 {
	t.Helper()
	v, ok := ctl.testControl(nil, key, 0)
	require.True(t, ok, "the fake exports mcbx_test_control")
	return v
}

// knob sets a fault knob (or reads a counter) of a transport's fake engine.
func knob(t testing.TB, tr *Transport, key string, arg int64) int64 {
	t.Helper()
	e, ok := tr.nat.(*shimEngine)
	require.True(t, ok)
	v, ok := e.lib.testControl(e, key, arg)
	require.True(t, ok)
	require.GreaterOrEqual(t, v, int64(0), "fake control %q", key)
	return v
}

// counter reads a counter of a transport's fake engine.
func counter(t testing.TB, tr *Transport, key string) int64 { return knob(t, tr, key, 0) }

// fakeLeakCheck fails the test if a transport left channels or
// registrations for the shim to clean up at close (the teardown order of
// §5.9), or left an engine open. Call it after ResourceCheck.
func fakeLeakCheck(t *testing.T) {
	requireFake(t)
	engines, chans, mrs := global(t, "live_engines"), global(t, "chans_at_close"), global(t, "mrs_at_close")
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		require.Equal(t, engines, global(t, "live_engines"), "fake engines left open")
		require.Equal(t, chans, global(t, "chans_at_close"), "channels still open when the engine closed")
		require.Equal(t, mrs, global(t, "mrs_at_close"), "memory still registered when the engine closed")
	})
}

// cluster is the engines of one test. Peers exchange barex ports by
// calling each other's OnConnection, or, with rpc, through real handshake
// servers with Mooncake's framing on loopback.
type cluster struct {
	tb    testing.TB
	rpc   bool
	mu    sync.Mutex
	hosts map[string]*host
	// hook, when set, runs before a handshake is delivered; an error
	// fails it.
	hook       func(from, to string) error
	handshakes map[string]int // by target
}

type host struct {
	c     *cluster
	name  string
	t     *Transport
	mem   []byte
	base  uint64
	regs  []uint64 // registration addresses, for Describe
	srv   *handshake.Server
	close sync.Once
}

type hostSpec struct {
	cfg     Config
	mem     int    // bytes of registered host memory (default 1 MiB)
	devices string // MCBX_FAKE_DEVICES (default "fake_0,fake_1")
	topo    string // priority matrix JSON (default: every device preferred for cpu:0 and cuda:0)
	locate  func(addr, length uint64) (string, error)
	noReg   bool
}

func newCluster(tb testing.TB) *cluster {
	tb.Helper()
	requireFake(tb)
	c := &cluster{tb: tb, hosts: map[string]*host{}, handshakes: map[string]int{}}
	tb.Cleanup(func() {
		c.mu.Lock()
		hosts := c.hosts
		c.hosts = map[string]*host{}
		c.mu.Unlock()
		for _, h := range hosts {
			h.shutdown(tb)
		}
	})
	return c
}

// matrix prefers every device for cpu:0 and cuda:0.
func matrix(devices ...string) string {
	q := `["` + strings.Join(devices, `","`) + `"]`
	return fmt.Sprintf(`{"cpu:0":[%s,[]],"cuda:0":[%s,[]]}`, q, q)
}

func testConfig(cfg Config) Config {
	if cfg.ShimPath == "" {
		cfg.ShimPath = fakeShim
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = time.Second
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 3 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	return cfg
}

func (c *cluster) newTransport(name string, spec hostSpec) (*Transport, error) {
	devices := spec.devices
	if devices == "" {
		devices = "fake_0,fake_1"
	}
	c.tb.Setenv("MCBX_FAKE_DEVICES", devices)
	m := spec.topo
	if m == "" {
		var names []string
		for _, d := range strings.Split(devices, ",") {
			names = append(names, strings.Split(d, ":")[0])
		}
		m = matrix(names...)
	}
	topo, err := topology.Parse([]byte(m))
	require.NoError(c.tb, err)
	return New(context.Background(), testConfig(spec.cfg), Deps{
		LocalName: name,
		Topology:  topo,
		Handshake: c.handshake(name),
		Locate:    spec.locate,
		Logger:    zaptest.NewLogger(c.tb),
	})
}

// addHost starts a transport and registers spec.mem bytes of mmap'd
// memory as "cpu:0".
func (c *cluster) addHost(name string, spec hostSpec) *host {
	c.tb.Helper()
	tr, err := c.newTransport(name, spec)
	require.NoError(c.tb, err)
	h := &host{c: c, name: name, t: tr}
	size := spec.mem
	if size == 0 {
		size = 1 << 20
	}
	h.mem, err = syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(c.tb, err)
	h.base = addrOf(h.mem)
	if !spec.noReg {
		require.NoError(c.tb, tr.RegisterMemory(h.base, uint64(size), "cpu:0"))
		h.regs = append(h.regs, h.base)
	}
	if c.rpc {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(c.tb, err)
		h.srv = handshake.NewServer(ln, handshake.ServerConfig{}, map[handshake.MsgType]handshake.Handler{
			handshake.Connection: func(ctx context.Context, _ handshake.MsgType, payload []byte) []byte {
				req, err := handshake.DecodeHandShakeDesc(payload)
				if err != nil {
					b, _ := handshake.HandShakeDesc{ReplyMsg: err.Error()}.Marshal()
					return b
				}
				b, _ := tr.OnConnection(ctx, req).Marshal()
				return b
			},
		})
	}
	c.mu.Lock()
	c.hosts[name] = h
	c.mu.Unlock()
	return h
}

func (h *host) shutdown(tb testing.TB) {
	h.close.Do(func() {
		if h.t != nil {
			require.NoError(tb, h.t.Close())
		}
		if h.srv != nil {
			h.srv.Close()
		}
		if h.mem != nil {
			require.NoError(tb, syscall.Munmap(h.mem))
		}
	})
}

func (c *cluster) handshake(from string) func(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
	return func(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
		c.mu.Lock()
		h := c.hosts[peer]
		hook := c.hook
		c.handshakes[peer]++
		c.mu.Unlock()
		if hook != nil {
			if err := hook(from, peer); err != nil {
				return handshake.HandShakeDesc{}, err
			}
		}
		if h == nil {
			return handshake.HandShakeDesc{}, fmt.Errorf("peer %q: connection refused", peer)
		}
		if h.srv == nil {
			return h.t.OnConnection(ctx, req), nil
		}
		body, err := req.Marshal()
		if err != nil {
			return handshake.HandShakeDesc{}, err
		}
		reply, err := (&handshake.Client{}).Call(ctx, h.srv.Addr().String(), handshake.Connection, body)
		if err != nil {
			return handshake.HandShakeDesc{}, err
		}
		return handshake.DecodeHandShakeDesc(reply)
	}
}

func (c *cluster) handshakeCount(peer string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handshakes[peer]
}

// addr is the address of byte off of h's memory.
func (h *host) addr(off int) uint64 { return h.base + uint64(off) }

// desc is h's descriptor, as a peer would fetch it.
func (h *host) desc() *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{Name: h.name}
	for _, a := range h.regs {
		d.Buffers = append(d.Buffers, metadata.BufferDesc{Addr: a})
	}
	h.t.Describe(d)
	return d
}

func (h *host) peer() transport.Peer { return transport.Peer{Name: h.name, Host: "127.0.0.1"} }

// submit hands reqs to h's transport as one Submit against target and
// returns the tasks and their group.
func (h *host) submit(ctx context.Context, target *host, reqs ...transport.Request) ([]*transport.Task, *transport.Group) {
	return h.submitDesc(ctx, target, target.desc(), reqs...)
}

func (h *host) submitDesc(ctx context.Context, target *host, desc *metadata.SegmentDesc, reqs ...transport.Request) ([]*transport.Task, *transport.Group) {
	g := transport.NewGroup()
	g.Add(len(reqs))
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	pe := target.peer()
	pe.Desc = desc
	h.t.Submit(ctx, pe, tasks, transport.SubmitOptions{})
	return tasks, g
}

// transfer submits and waits (at most 10 s).
func (h *host) transfer(t testing.TB, ctx context.Context, target *host, reqs ...transport.Request) []*transport.Task {
	t.Helper()
	tasks, g := h.submit(ctx, target, reqs...)
	wait(t, g)
	return tasks
}

func wait(t testing.TB, g *transport.Group) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, g.Wait(ctx), "tasks did not finish")
}

func requireDone(t testing.TB, tasks []*transport.Task) {
	t.Helper()
	for i, task := range tasks {
		require.NoError(t, task.Err(), "task %d", i)
		require.Equal(t, transport.Completed, task.Status(), "task %d", i)
		require.Equal(t, task.Length, task.Transferred(), "task %d", i)
	}
}

// fill writes a pattern that differs for every seed and offset.
func fill(b []byte, seed uint64) {
	x := seed*0x9e3779b97f4a7c15 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
}

func requireEqualBytes(t testing.TB, want, got []byte) {
	t.Helper()
	if !bytes.Equal(want, got) {
		for i := range want {
			if want[i] != got[i] {
				t.Fatalf("bytes differ from offset %d of %d", i, len(want))
			}
		}
	}
}

func write(local uint64, remote uint64, n int) transport.Request {
	return transport.Request{Opcode: transport.Write, Local: uintptr(local), Remote: remote, Length: uint64(n)}
}

func read(local uint64, remote uint64, n int) transport.Request {
	return transport.Request{Opcode: transport.Read, Local: uintptr(local), Remote: remote, Length: uint64(n)}
}

// channels returns the live channel handles of h's set for peer and local
// device index dev.
func (h *host) channels(t testing.TB, peer string, dev int) []uint64 {
	t.Helper()
	h.t.peersMu.RLock()
	p := h.t.peers[peer]
	h.t.peersMu.RUnlock()
	require.NotNil(t, p, "no state for peer %q", peer)
	p.mu.Lock()
	s := p.sets[dev]
	p.mu.Unlock()
	require.NotNil(t, s, "no channel set for device %d", dev)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []uint64
	for _, ch := range s.chans {
		if ch != nil {
			out = append(out, ch.handle)
		}
	}
	return out
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t testing.TB, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", msg)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
