package handshake

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// idleFlood keeps n connections to addr open, sending nothing, spread over
// the loopback source addresses srcs: a connection the server closes is
// dialled again (after a pause, to keep the test's CPU bounded) until the
// test ends. Its connections live in the test process, outside the server.
type idleFlood struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	open int
	// dials counts the connections made, first ones included.
	dials int
}

func startIdleFlood(t *testing.T, addr string, n int, srcs ...string) *idleFlood {
	t.Helper()
	f := &idleFlood{stop: make(chan struct{})}
	var ready sync.WaitGroup
	ready.Add(n)
	for i := range n {
		src := &net.TCPAddr{IP: net.ParseIP(srcs[i%len(srcs)])}
		f.wg.Add(1)
		go f.hold(addr, src, &ready)
	}
	ready.Wait()
	t.Cleanup(func() {
		close(f.stop)
		f.wg.Wait()
	})
	return f
}

func (f *idleFlood) hold(addr string, src *net.TCPAddr, ready *sync.WaitGroup) {
	defer f.wg.Done()
	first := true
	d := net.Dialer{LocalAddr: src, Timeout: time.Second}
	for {
		c, err := d.Dial("tcp4", addr)
		if first {
			ready.Done()
			first = false
		}
		if err == nil {
			f.mu.Lock()
			f.open++
			f.dials++
			f.mu.Unlock()
			closed := make(chan struct{})
			go func() {
				_, _ = c.Read(make([]byte, 1)) // returns when the server closes it
				close(closed)
			}()
			select {
			case <-closed:
			case <-f.stop:
			}
			_ = c.Close()
			<-closed
			f.mu.Lock()
			f.open--
			f.mu.Unlock()
		}
		select {
		case <-f.stop:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Issue 17 item 5: 1,000 connections that send nothing, against the
// connection cap, must not block descriptor fetches, probes and notifies
// from other initiators. Before the fix the first 256 held every slot for
// the 5 s receive timeout and every other connection was closed at once.
func TestServerIdleFloodDoesNotStarveOthers(t *testing.T) {
	testutil.ResourceCheck(t)
	var e engineHandlers
	// Default limits; the warnings of 1,000 refusals are sampled, but
	// zaptest would still print a few hundred lines.
	s := startServer(t, ServerConfig{Logger: zap.NewNop()}, e.handlers())
	addr := s.Addr().String()
	startIdleFlood(t, addr, 1000, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")

	var c Client
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		require.NoError(t, c.Probe(ctx, addr), "probe %d", i)
		desc, err := c.FetchMetadata(ctx, addr, []byte("{}"))
		require.NoError(t, err, "fetch %d", i)
		require.Equal(t, testSegmentDesc, string(desc))
		require.NoError(t, c.SendNotify(ctx, addr, NotifyMsg{Name: "n", Msg: "m"}), "notify %d", i)
		cancel()
	}
	e.mu.Lock()
	require.Len(t, e.notifies, 5)
	e.mu.Unlock()
}

// dialFrom opens a connection to s from the loopback address src.
func dialFrom(t *testing.T, s *Server, src string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: testTimeout}
	c, err := d.Dial("tcp4", s.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(testTimeout)))
	return c.(*net.TCPConn)
}

// requireClosedByServer reads from c until the server closes it.
func requireClosedByServer(t *testing.T, c net.Conn) {
	t.Helper()
	_, err := io.ReadAll(c)
	require.NoError(t, err, "closed by the server, not timed out")
}

const probeFrame = "\x04\x00\x00\x00\x00\x00\x00\x00\x03{}\n"

// blockingHandlers answer Connection requests only once release is closed,
// counting the ones waiting in entered.
func blockingHandlers(entered chan<- struct{}, release <-chan struct{}) map[MsgType]Handler {
	return map[MsgType]Handler{
		Connection: func(ctx context.Context, _ MsgType, _ []byte) []byte {
			entered <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		},
		Probe: func(context.Context, MsgType, []byte) []byte { return ProbeReply() },
	}
}

// At the cap, the longest-idle connection makes room for a new one.
func TestServerShedsIdleAtCap(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{RecvTimeout: time.Hour, HeaderTimeout: time.Hour, MaxConns: 1}, map[MsgType]Handler{
		Probe: func(context.Context, MsgType, []byte) []byte { return ProbeReply() },
	})
	holder := dialRaw(t, s)
	require.Eventually(t, func() bool { return liveConns(s) == 1 }, testTimeout, time.Millisecond)

	var c Client
	require.NoError(t, c.Probe(testCtx(t), s.Addr().String()))
	requireClosedByServer(t, holder)
	require.Equal(t, uint64(1), s.conns.Shed())
}

// Working connections are never shed: at the cap with all of them working,
// the server stops accepting, and the next connection is served as soon as
// one finishes, not refused.
func TestServerWaitsForWorkingConnections(t *testing.T) {
	testutil.ResourceCheck(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	s := startServer(t, ServerConfig{MaxConns: 1}, blockingHandlers(entered, release))
	holder := dialFrom(t, s, "127.0.0.2")
	_, err := holder.Write([]byte(typedFrame(byte(Connection), "{}\n")))
	require.NoError(t, err)
	<-entered

	var c Client
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, c.Probe(ctx, s.Addr().String()), context.DeadlineExceeded, "waits in the backlog")

	probed := make(chan error, 1)
	go func() { probed <- c.Probe(testCtx(t), s.Addr().String()) }()
	time.Sleep(50 * time.Millisecond)
	close(release)
	require.NoError(t, holder.CloseWrite())
	got, err := io.ReadAll(holder)
	require.NoError(t, err)
	require.Equal(t, "\x06\x00\x00\x00\x00\x00\x00\x00\x00null\n", string(got))
	require.NoError(t, <-probed)
}

// One remote IP holds at most MaxConnsPerPeer connections: beyond that, its
// longest-idle one is shed, or, when all of them work, the new one is
// refused; other IPs are served meanwhile.
func TestServerPerPeerLimit(t *testing.T) {
	testutil.ResourceCheck(t)
	entered, release := make(chan struct{}, 2), make(chan struct{})
	s := startServer(t, ServerConfig{MaxConnsPerPeer: 2, RecvTimeout: time.Hour, HeaderTimeout: time.Hour},
		blockingHandlers(entered, release))
	defer close(release)

	// Two idle ones from .2: a third sheds the first.
	idle := []*net.TCPConn{dialFrom(t, s, "127.0.0.2"), dialFrom(t, s, "127.0.0.2")}
	require.Eventually(t, func() bool { return liveConns(s) == 2 }, testTimeout, time.Millisecond)
	third := dialFrom(t, s, "127.0.0.2")
	requireClosedByServer(t, idle[0])
	require.Equal(t, uint64(1), s.conns.Shed())

	// Make both of .2's working: a further one from .2 is refused at once.
	for _, c := range []*net.TCPConn{idle[1], third} {
		_, err := c.Write([]byte(typedFrame(byte(Connection), "{}\n")))
		require.NoError(t, err)
		<-entered
	}
	refused := dialFrom(t, s, "127.0.0.2")
	_, _ = refused.Write([]byte(probeFrame))
	got, _ := io.ReadAll(refused)
	require.Empty(t, got)

	// Another IP is served.
	other := dialFrom(t, s, "127.0.0.3")
	_, err := other.Write([]byte(probeFrame))
	require.NoError(t, err)
	require.NoError(t, other.CloseWrite())
	got, err = io.ReadAll(other)
	require.NoError(t, err)
	require.Equal(t, "\x16\x00\x00\x00\x00\x00\x00\x00\x03"+`{"status":"success"}`+"\n", string(got))
}

// A connection that sends nothing is closed after HeaderTimeout; once it
// has sent its frame's length, RecvTimeout applies.
func TestServerHeaderTimeout(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{HeaderTimeout: 50 * time.Millisecond, RecvTimeout: time.Hour}, nil)
	silent := dialRaw(t, s)
	start := time.Now()
	requireClosedByServer(t, silent)
	require.Less(t, time.Since(start), testTimeout/2)

	started := dialRaw(t, s)
	_, err := started.Write([]byte(probeFrame[:9]))
	require.NoError(t, err)
	require.NoError(t, started.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
	_, err = started.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "still open after the header deadline")
	_, err = started.Write([]byte(probeFrame[9:]))
	require.NoError(t, err)
	require.NoError(t, started.SetReadDeadline(time.Now().Add(testTimeout)))
	got, err := io.ReadAll(started)
	require.NoError(t, err)
	require.Equal(t, "\x06\x00\x00\x00\x00\x00\x00\x00\x03null\n", string(got))
}

// Handlers learn the remote IP of their request.
func TestServerPeerFromContext(t *testing.T) {
	testutil.ResourceCheck(t)
	got := make(chan netip.Addr, 1)
	s := startServer(t, ServerConfig{}, map[MsgType]Handler{
		Probe: func(ctx context.Context, _ MsgType, _ []byte) []byte {
			a, ok := PeerFromContext(ctx)
			require.True(t, ok)
			got <- a
			return ProbeReply()
		},
	})
	c := dialFrom(t, s, "127.0.0.7")
	_, err := c.Write([]byte(probeFrame))
	require.NoError(t, err)
	require.Equal(t, netip.MustParseAddr("127.0.0.7"), <-got)
	_, ok := PeerFromContext(context.Background())
	require.False(t, ok)
}

// The engine's configuration documents the same defaults.
func TestServerDefaultsMatchConfig(t *testing.T) {
	d := config.Defaults()
	require.Equal(t, DefaultMaxConns, d.HandshakeMaxConns)
	require.Equal(t, DefaultMaxConnsPerPeer, d.HandshakeMaxConnsPerPeer)
	require.Equal(t, DefaultHeaderTimeout, d.HandshakeHeaderTimeout)
}
