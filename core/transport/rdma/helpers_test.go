package rdma

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

// cluster is a fake fabric and the engines on it. Peers find each other
// through it: in memory (handshake by direct call) or, with rpc, over real
// loopback handshake servers with Mooncake's framing.
type cluster struct {
	tb    testing.TB
	fab   *fake.Fabric
	rpc   bool
	quiet bool // no test logger (fuzz functions may not log)
	mu    sync.Mutex
	hosts map[string]*host
	// hook, when set, runs before a handshake is delivered.
	hook func(from, to string)
}

type host struct {
	name string
	nics []*fake.NIC
	t    *Transport
	mem  []byte
	srv  *handshake.Server
}

func newCluster(tb testing.TB) *cluster {
	tb.Helper()
	c := &cluster{tb: tb, fab: fake.NewFabric(), hosts: map[string]*host{}}
	tb.Cleanup(func() {
		c.mu.Lock()
		hosts := c.hosts
		c.hosts = map[string]*host{}
		c.mu.Unlock()
		for _, h := range hosts {
			h.close(tb)
		}
		c.fab.Close()
		if !tb.Failed() {
			require.Empty(tb, c.fab.Leaks(), "fake verbs objects leaked")
			require.Empty(tb, c.fab.Violations(), "fake fabric saw misuse")
		}
	})
	return c
}

func (h *host) close(tb testing.TB) {
	if h.t != nil {
		require.NoError(tb, h.t.Close())
		h.t = nil
	}
	if h.srv != nil {
		h.srv.Close()
		h.srv = nil
	}
	if h.mem != nil {
		require.NoError(tb, syscall.Munmap(h.mem))
		h.mem = nil
	}
}

// hostSpec says how to build one engine.
type hostSpec struct {
	nics   []fake.NICSpec
	matrix string // priority matrix JSON; default every NIC preferred for cpu:0
	cfg    Config
	mem    int // bytes of registered memory; default 16 MiB
	noReg  bool
	dmaBuf func(addr uintptr, length uint64) (gpu.DmaBuf, error)
}

func (c *cluster) addHost(name string, spec hostSpec) *host {
	tb := c.tb
	tb.Helper()
	if len(spec.nics) == 0 {
		spec.nics = []fake.NICSpec{{Name: "mlx5_0"}}
	}
	h := &host{name: name}
	var names []string
	for _, n := range spec.nics {
		h.nics = append(h.nics, c.fab.AddNIC(name, n))
		names = append(names, fmt.Sprintf("%q", n.Name))
	}
	if spec.matrix == "" {
		spec.matrix = fmt.Sprintf(`{"cpu:0":[[%s],[]]}`, join(names))
	}
	topo, err := topology.Parse([]byte(spec.matrix))
	require.NoError(tb, err)
	cfg := spec.cfg
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 5 * time.Second
	}
	if c.rpc {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(tb, err)
		h.srv = handshake.NewServer(ln, handshake.ServerConfig{}, map[handshake.MsgType]handshake.Handler{
			handshake.Connection: func(ctx context.Context, _ handshake.MsgType, payload []byte) []byte {
				req, err := handshake.DecodeHandShakeDesc(payload)
				if err != nil {
					b, _ := handshake.HandShakeDesc{ReplyMsg: err.Error()}.Marshal()
					return b
				}
				b, _ := h.t.OnConnection(ctx, req).Marshal()
				return b
			},
		})
	}
	log := zaptest.NewLogger(tb)
	if c.quiet {
		log = nil
	}
	t, err := New(context.Background(), cfg, Deps{
		Provider:  c.fab.Provider(name),
		LocalName: name,
		Topology:  topo,
		Handshake: c.handshake(name),
		PeerDesc:  c.peerDesc,
		DmaBuf:    spec.dmaBuf,
		Logger:    log,
	})
	require.NoError(tb, err)
	h.t = t
	size := spec.mem
	if size == 0 {
		size = 16 << 20
	}
	h.mem, err = syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(tb, err)
	if !spec.noReg {
		require.NoError(tb, t.RegisterMemory(h.addr(0), uint64(size), "cpu:0"))
	}
	c.mu.Lock()
	c.hosts[name] = h
	c.mu.Unlock()
	return h
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}

// removeHost closes an engine, as if its process died.
func (c *cluster) removeHost(name string) {
	c.mu.Lock()
	h := c.hosts[name]
	delete(c.hosts, name)
	c.mu.Unlock()
	h.close(c.tb)
}

func (c *cluster) host(name string) (*host, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.hosts[name]
	return h, ok
}

func (c *cluster) handshake(from string) func(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
	return func(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
		if c.hook != nil {
			c.hook(from, peer)
		}
		h, ok := c.host(peer)
		if !ok {
			return handshake.HandShakeDesc{}, fmt.Errorf("peer %q: connection refused", peer)
		}
		if h.srv == nil {
			return h.t.OnConnection(ctx, req), nil
		}
		body, err := req.Marshal()
		if err != nil {
			return handshake.HandShakeDesc{}, err
		}
		cl := &handshake.Client{}
		reply, err := cl.Call(ctx, h.srv.Addr().String(), handshake.Connection, body)
		if err != nil {
			return handshake.HandShakeDesc{}, err
		}
		return handshake.DecodeHandShakeDesc(reply)
	}
}

// peerDesc returns a host's descriptor as a peer would see it: encoded and
// decoded with Mooncake's codec.
func (c *cluster) peerDesc(_ context.Context, name string) (*metadata.SegmentDesc, error) {
	h, ok := c.host(name)
	if !ok {
		return nil, fmt.Errorf("segment %q: %w", name, metadata.ErrNotFound)
	}
	return h.desc(c.tb), nil
}

func (h *host) addr(off int) uint64 { return uint64(addrOf(h.mem)) + uint64(off) }

func (h *host) desc(tb testing.TB) *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{Name: h.name, Protocol: "tcp", Buffers: []metadata.BufferDesc{{Name: h.name, Addr: h.addr(0), Length: uint64(len(h.mem))}}}
	h.t.Describe(d)
	b, err := d.Marshal(true)
	require.NoError(tb, err)
	back, err := metadata.DecodeSegmentDesc(b)
	require.NoError(tb, err)
	return back
}

// transfer runs requests to peer and waits for them.
func (h *host) transfer(tb testing.TB, ctx context.Context, peer *host, reqs ...transport.Request) []*transport.Task {
	tb.Helper()
	return h.transferDesc(tb, ctx, peer.name, peer.desc(tb), reqs...)
}

func (h *host) transferDesc(tb testing.TB, ctx context.Context, peer string, desc *metadata.SegmentDesc, reqs ...transport.Request) []*transport.Task {
	tb.Helper()
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	h.t.Submit(ctx, transport.Peer{Name: peer, Desc: desc}, tasks, transport.SubmitOptions{})
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(tb, g.Wait(wctx), "tasks did not finish")
	return tasks
}

func requireDone(tb testing.TB, tasks []*transport.Task) {
	tb.Helper()
	for i, task := range tasks {
		require.NoError(tb, task.Err(), "task %d", i)
		require.Equal(tb, transport.Completed, task.Status(), "task %d", i)
		require.Equal(tb, task.Length, task.Transferred(), "task %d", i)
	}
}

func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

func requireEqualBytes(tb testing.TB, want, got []byte) {
	tb.Helper()
	if !bytes.Equal(want, got) {
		i := 0
		for i < len(want) && want[i] == got[i] {
			i++
		}
		tb.Fatalf("data differs first at byte %d of %d", i, len(want))
	}
}

// transportGroup submits requests and returns a function that waits for
// them.
func transportGroup(tb testing.TB, h, peer *host, reqs ...transport.Request) func() []*transport.Task {
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	h.t.Submit(context.Background(), transport.Peer{Name: peer.name, Desc: peer.desc(tb)}, tasks, transport.SubmitOptions{})
	return func() []*transport.Task {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		require.NoError(tb, g.Wait(ctx))
		return tasks
	}
}
