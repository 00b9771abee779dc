package tcp

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// lowerFDLimit sets the process's soft descriptor limit to n until the
// test ends.
func lowerFDLimit(t *testing.T, n uint64) {
	t.Helper()
	var old syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old))
	require.Less(t, n, old.Cur, "the limit is lowered, not raised")
	lim := old
	lim.Cur = n
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	t.Cleanup(func() { require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)) })
}

// idleConns dials n connections to addr from the loopback sources srcs and
// holds them, sending nothing, until the test ends; dials that fail (the
// process is out of descriptors) are counted, not fatal.
func idleConns(t *testing.T, addr string, n int, srcs ...string) (opened, failed int) {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for i := range n {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcs[i%len(srcs)])}, Timeout: time.Second}
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			failed++
			continue
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		opened++
	}
	return opened, failed
}

// Issue 17 item 4: idle connections to the data port took every
// descriptor of the target, so that new initiators failed and so did the
// target's own file operations. With limits, the target holds at most
// MaxConns of them (shedding the longest-idle of the IP that holds the
// most), and its established and new peers are served.
func TestIdleFloodLeavesRoom(t *testing.T) {
	testutil.ResourceCheck(t)
	const attackers, maxConns = 1000, 64
	remote := testutil.Mmap(t, 1<<16)
	target := newTransport(t, Config{MaxConns: maxConns, MaxConnsPerPeer: 32, Logger: zap.NewNop()}, remote)
	local := testutil.Mmap(t, 1<<16)
	established := newTransport(t, Config{}, local)
	fill(local, 1)
	requireDone(t, transfer(t, established, peerOf(target, 2), write(local, addrOf(remote)))...)

	// Room for the test's own descriptors, the attackers' ends, and the
	// target's share; not for the target to hold every attacker.
	lowerFDLimit(t, uint64(openFDs()+attackers+maxConns+64))
	opened, failed := idleConns(t, target.srv.ln.Addr().String(), attackers, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	require.Equal(t, attackers, opened, "%d dials failed", failed)
	settles(t, func() bool { return target.srv.conns.Len() <= maxConns }, "the target holds at most MaxConns")

	f, err := os.Open("/proc/self/status")
	require.NoError(t, err, "the target's own file operations work")
	_, err = io.Copy(io.Discard, f)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	fill(local, 2)
	requireDone(t, transfer(t, established, peerOf(target, 2), write(local, addrOf(remote)))...)
	require.Equal(t, local, remote)
	newcomer := newTransport(t, Config{}, local)
	requireDone(t, transfer(t, newcomer, peerOf(target, 2), read(local, addrOf(remote)))...)
	requireDone(t, transfer(t, newcomer, peerOf(target, 1), read(local, addrOf(remote)))...)
	require.LessOrEqual(t, target.srv.conns.Len(), maxConns)
	require.NotZero(t, target.srv.conns.Shed())
}

// rawConn dials target's data port from the loopback address src.
func rawConn(t *testing.T, target *Transport, src string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp4", target.srv.ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	return c.(*net.TCPConn)
}

// requireOK reads one OK status frame from c.
func requireOK(t *testing.T, c net.Conn) {
	t.Helper()
	var st [8]byte
	_, err := io.ReadFull(c, st[:])
	require.NoError(t, err)
	require.Equal(t, EncodeStatus(StatusOK), st)
}

// requireShed checks that the server closed c.
func requireShed(t *testing.T, c net.Conn) {
	t.Helper()
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF)
}

// A connection in the middle of a request is never shed: with every
// connection busy, the server stops accepting until one finishes, and the
// waiting connection is served then; none of the busy ones fails.
func TestBusyConnectionsAreNotShed(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<16)
	target := newTransport(t, Config{MaxConns: MinConnsPerPeer, Logger: zap.NewNop()}, remote)
	body := []byte("0123456789")
	busy := make([]*net.TCPConn, MinConnsPerPeer)
	for i := range busy {
		busy[i] = rawConn(t, target, "127.0.0.2")
		// A v2 WRITE whose body is still to come.
		_, err := busy[i].Write(append(header(uint64(len(body)), addrOf(remote)+uint64(16*i), 0x81), body[:3]...))
		require.NoError(t, err)
	}
	// Admitted, and each past its header (busy): a connection admitted but
	// not yet busy is idle and may be shed for the late one.
	settles(t, func() bool {
		return target.srv.conns.Len() == MinConnsPerPeer && target.srv.conns.IdleLen() == 0
	}, "all admitted and busy")

	late := rawConn(t, target, "127.0.0.3")
	_, err := late.Write(header(uint64(len(body)), addrOf(remote), 0x80))
	require.NoError(t, err)
	require.NoError(t, late.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	_, err = late.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "not served while every connection works")
	require.Zero(t, target.srv.conns.Shed())

	for i, c := range busy {
		_, err := c.Write(body[3:])
		require.NoError(t, err)
		requireOK(t, c)
		require.Equal(t, body, remote[16*i:16*i+len(body)])
	}
	require.NoError(t, late.SetReadDeadline(time.Now().Add(10*time.Second)))
	requireOK(t, late)
	got := make([]byte, len(body))
	_, err = io.ReadFull(late, got)
	require.NoError(t, err)
	require.Equal(t, body, got)
	require.Equal(t, uint64(1), target.srv.conns.Shed(), "an idle one made room for the late one")
}

// A connection that has sent part of its next header is mid-request,
// whether polling read those bytes (after a small reply) or the idle read
// did (polling off, or it gave up first): it stays busy, so it is not shed
// to make room (the bytes already read would be lost with it). Polling
// gives up after its budget, so on a loaded machine the first case may run
// as the second; the second always runs as itself.
func TestPartHeaderIsNotShed(t *testing.T) {
	for name, budget := range map[string]time.Duration{"polled": MaxPollBudget, "idle read": -1} {
		t.Run(name, func(t *testing.T) { testPartHeaderIsNotShed(t, budget) })
	}
}

func testPartHeaderIsNotShed(t *testing.T, budget time.Duration) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<16)
	target := newTransport(t, Config{MaxConns: MinConnsPerPeer, PollBudget: budget, Logger: zap.NewNop()}, remote)
	body := []byte("0123456789")
	polled := rawConn(t, target, "127.0.0.2")
	_, err := polled.Write(append(header(uint64(len(body)), addrOf(remote), 0x81), body...))
	require.NoError(t, err)
	requireOK(t, polled)
	// The server polls for the next header after that small reply: give
	// it the first bytes at once, the rest later.
	next := append(header(uint64(len(body)), addrOf(remote)+16, 0x81), body...)
	_, err = polled.Write(next[:3])
	require.NoError(t, err)
	busy := make([]*net.TCPConn, MinConnsPerPeer-1)
	for i := range busy {
		busy[i] = rawConn(t, target, "127.0.0.2")
		_, err := busy[i].Write(append(header(uint64(len(body)), addrOf(remote)+uint64(16*(i+2)), 0x81), body[:3]...))
		require.NoError(t, err)
	}
	settles(t, func() bool {
		return target.srv.conns.Len() == MinConnsPerPeer && target.srv.conns.IdleLen() == 0
	}, "all admitted and busy, the one mid-header too")

	late := rawConn(t, target, "127.0.0.3")
	_, err = late.Write(header(uint64(len(body)), addrOf(remote), 0x80))
	require.NoError(t, err)
	require.NoError(t, late.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
	_, err = late.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "not served while every connection works")
	require.Zero(t, target.srv.conns.Shed())

	_, err = polled.Write(next[3:])
	require.NoError(t, err)
	requireOK(t, polled)
	require.Equal(t, body, remote[16:16+len(body)], "the request whose header came in parts landed")
	for _, c := range busy {
		_, err := c.Write(body[3:])
		require.NoError(t, err)
		requireOK(t, c)
	}
	require.NoError(t, late.SetReadDeadline(time.Now().Add(10*time.Second)))
	requireOK(t, late)
}

// One remote IP holds at most MaxConnsPerPeer: beyond it, its longest-idle
// connection is shed, or the new one refused when all of its work.
func TestPerPeerConnectionLimit(t *testing.T) {
	testutil.ResourceCheck(t)
	const per = MinConnsPerPeer
	remote := testutil.Mmap(t, 1<<16)
	target := newTransport(t, Config{MaxConnsPerPeer: per, Logger: zap.NewNop()}, remote)
	conns := make([]*net.TCPConn, per)
	for i := range conns {
		conns[i] = rawConn(t, target, "127.0.0.2")
	}
	settles(t, func() bool { return target.srv.conns.Len() == per }, "all admitted")
	extra := rawConn(t, target, "127.0.0.2")
	requireShed(t, conns[0])

	// Make all of .2's busy: one more from .2 is refused at once.
	body := []byte("abcd")
	for _, c := range append(conns[1:], extra) {
		_, err := c.Write(append(header(uint64(len(body)), addrOf(remote), 0x81), body[:1]...))
		require.NoError(t, err)
	}
	settles(t, func() bool { return target.srv.conns.IdleLen() == 0 }, "all busy")
	refused := rawConn(t, target, "127.0.0.2")
	requireShed(t, refused)
	other := rawConn(t, target, "127.0.0.3")
	_, err := other.Write(header(uint64(len(body)), addrOf(remote), 0x80))
	require.NoError(t, err)
	requireOK(t, other)
}

func TestConnLimitsConfig(t *testing.T) {
	quarter := max(MinConnsPerPeer, min(DefaultMaxConns, fdLimit()/4))
	for _, tc := range []struct {
		name     string
		in       Config
		max, per int
		invalid  bool
	}{
		{name: "defaults", max: quarter, per: min(DefaultMaxConnsPerPeer, quarter)},
		{name: "total lowers the per-peer default", in: Config{MaxConns: 100}, max: 100, per: 100},
		{name: "per-peer raises the total default", in: Config{MaxConnsPerPeer: 1 << 16}, max: max(quarter, 1<<16), per: 1 << 16},
		{name: "both", in: Config{MaxConns: 200, MaxConnsPerPeer: 50}, max: 200, per: 50},
		{name: "total below the least", in: Config{MaxConns: MinConnsPerPeer - 1}, invalid: true},
		{name: "per-peer below the least", in: Config{MaxConnsPerPeer: MinConnsPerPeer - 1}, invalid: true},
		{name: "per-peer above the total", in: Config{MaxConns: 100, MaxConnsPerPeer: 101}, invalid: true},
		{name: "total above the limit", in: Config{MaxConns: MaxConnsLimit + 1}, invalid: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.withDefaults()
			if tc.invalid {
				require.ErrorIs(t, err, ErrInvalidConfig)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.max, got.MaxConns)
			require.Equal(t, tc.per, got.MaxConnsPerPeer)
		})
	}
}

// A connection that sends the first bytes of a header and no more holds
// its (unsheddable) slot for headerRest, not for the I/O timeout.
func TestPartHeaderTimesOut(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<16)
	target := newTransport(t, Config{IOTimeout: time.Minute, Logger: zap.NewNop()}, remote)
	c := rawConn(t, target, "127.0.0.2")
	_, err := c.Write([]byte{0})
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "closed by the server")
	require.Less(t, time.Since(start), headerRest+2*time.Second)
}
