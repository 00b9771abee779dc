package tcp

import (
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	memtable "github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// mmapBuf returns n bytes of anonymous memory outside the Go heap, as the
// engine's registered buffers are; it is unmapped when the test ends (after
// the transports, registered later, are closed).
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

// region is a registered buffer of the fake engine.
type region struct{ start, end uint64 }

// registry is the validator of a test engine: ranges inside one region.
type registry struct {
	regions []region
	all     bool // everything is registered
}

func (r *registry) add(b []byte) {
	r.regions = append(r.regions, region{addrOf(b), addrOf(b) + uint64(len(b))})
}

// Pin is Contains without holding anything: the tests that check
// unregistration use the engine's table.
func (r *registry) Pin(addr, size uint64) (memtable.Pin, bool) {
	return memtable.Pin{}, r.Contains(addr, size)
}

func (r *registry) Contains(addr, size uint64) bool {
	if r.all {
		return true
	}
	for _, g := range r.regions {
		if addr >= g.start && addr+size <= g.end && addr+size >= addr {
			return true
		}
	}
	return false
}

func localListener(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	return ln
}

// newTransport starts a transport on loopback whose server accepts the
// given buffers, closed when the test ends.
func newTransport(tb testing.TB, cfg Config, bufs ...[]byte) *Transport {
	tb.Helper()
	reg := &registry{}
	for _, b := range bufs {
		reg.add(b)
	}
	if cfg.Logger == nil {
		if t, ok := tb.(*testing.T); ok {
			cfg.Logger = zaptest.NewLogger(t)
		}
	}
	tr, err := New(cfg, localListener(tb), reg)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, tr.Close()) })
	return tr
}

// tcpPeer is the Peer of a TCP target on loopback at port, speaking
// version, as the engine builds it from the target's descriptor.
func tcpPeer(name string, port, version int) transport.Peer {
	return transport.Peer{Name: name, Host: "127.0.0.1", Desc: &metadata.SegmentDesc{
		Name: name, Protocol: metadata.ProtocolTCP, TCPDataPort: port, TCPProtoVersion: version}}
}

func peerOf(tr *Transport, version int) transport.Peer {
	return tcpPeer("target", tr.Port(), version)
}

func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		*(*uint64)(unsafe.Pointer(&b[i])) = v
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
}

// transfer submits reqs as one batch and waits for them.
func transfer(tb testing.TB, tr *Transport, pe transport.Peer, reqs ...transport.Request) []*transport.Task {
	tb.Helper()
	return transferCtx(tb, context.Background(), tr, pe, reqs...)
}

func transferCtx(tb testing.TB, ctx context.Context, tr *Transport, pe transport.Peer, reqs ...transport.Request) []*transport.Task {
	tb.Helper()
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	tr.Submit(ctx, pe, tasks, transport.SubmitOptions{})
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NoError(tb, g.Wait(wctx), "tasks did not finish")
	return tasks
}

func write(local []byte, remote uint64) transport.Request {
	return transport.Request{Opcode: transport.Write, Local: uintptr(addrOf(local)), Remote: remote, Length: uint64(len(local))}
}

func read(local []byte, remote uint64) transport.Request {
	return transport.Request{Opcode: transport.Read, Local: uintptr(addrOf(local)), Remote: remote, Length: uint64(len(local))}
}

func requireDone(tb testing.TB, tasks ...*transport.Task) {
	tb.Helper()
	for i, task := range tasks {
		require.NoError(tb, task.Err(), "task %d", i)
		require.Equal(tb, transport.Completed, task.Status(), "task %d", i)
		require.Equal(tb, task.Length, task.Transferred(), "task %d", i)
	}
}

// fakePeer is a hand-written server speaking raw bytes, for peers that
// misbehave or that speak only v1.
type fakePeer struct {
	ln    net.Listener
	done  chan struct{} // closed when the test ends
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startFake(tb testing.TB, handle func(c net.Conn)) *fakePeer {
	tb.Helper()
	return startFakeDone(tb, func(<-chan struct{}) func(net.Conn) { return handle })
}

// stuckPeer accepts connections and then neither reads nor writes, like a
// stopped process, until the test ends.
func stuckPeer(tb testing.TB) *fakePeer {
	tb.Helper()
	return startFakeDone(tb, func(done <-chan struct{}) func(net.Conn) {
		return func(net.Conn) { <-done }
	})
}

// startFakeDone starts a fake peer whose handler may block on done, which
// is closed when the test ends.
func startFakeDone(tb testing.TB, mk func(done <-chan struct{}) func(c net.Conn)) *fakePeer {
	tb.Helper()
	f := &fakePeer{ln: localListener(tb), done: make(chan struct{})}
	handle := mk(f.done)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns = append(f.conns, c)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	tb.Cleanup(f.close)
	return f
}

func (f *fakePeer) close() {
	close(f.done)
	_ = f.ln.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakePeer) peer(version int) transport.Peer {
	return tcpPeer("fake", f.ln.Addr().(*net.TCPAddr).Port, version)
}

func zaptestNop() *zap.Logger { return zap.NewNop() }
