package tcp

import (
	"bytes"
	"context"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// submitSync submits one request under a Sync ctx and returns its task
// as Submit left it (an inline request has finished by then).
func submitSync(ctx context.Context, tr *Transport, pe transport.Peer, req transport.Request) *transport.Task {
	g := transport.NewGroup()
	task := &transport.Task{}
	task.Init(req, g)
	g.Add(1)
	tr.Submit(ctx, pe, []*transport.Task{task}, transport.SubmitOptions{Sync: true})
	return task
}

func finished(task *transport.Task) bool {
	st := task.Status()
	return st == transport.Completed || st == transport.Failed
}

// waitTask waits for a task to finish.
func waitTask(tb testing.TB, task *transport.Task) {
	tb.Helper()
	settles(tb, func() bool { return finished(task) }, "task did not finish")
}

// TestSyncWriteRead moves data both ways through the inline path, with
// and without polling; requests that are split go to the lanes.
func TestSyncWriteRead(t *testing.T) {
	const split = 256 << 10
	for _, tc := range []struct {
		name   string
		size   int
		poll   time.Duration
		inline bool
	}{
		{"1 byte", 1, 0, true},
		{"4 KiB", 4096, 0, true},
		{"4 KiB no polling", 4096, -1, true},
		{"below the split threshold", split - 1, 0, true},
		{"split", split, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			remote := testutil.Mmap(t, 2*tc.size)
			local := testutil.Mmap(t, 2*tc.size)
			server := newTransport(t, Config{PollBudget: tc.poll}, remote)
			client := newTransport(t, Config{PollBudget: tc.poll, SplitThreshold: split})
			pe := peerOf(server, 2)
			fill(local[:tc.size], uint64(tc.size))
			for i := 0; i < 3; i++ { // reuses the pooled connection
				task := submitSync(context.Background(), client, pe, write(local[:tc.size], addrOf(remote)))
				if tc.inline {
					require.True(t, finished(task), "inline task finished in Submit")
				}
				waitTask(t, task)
				requireDone(t, task)
			}
			require.True(t, bytes.Equal(local[:tc.size], remote[:tc.size]))
			task := submitSync(context.Background(), client, pe, read(local[tc.size:], addrOf(remote)))
			waitTask(t, task)
			requireDone(t, task)
			require.True(t, bytes.Equal(local[:tc.size], local[tc.size:]))
			require.NoError(t, client.PeerHealth(pe.Name))
		})
	}
}

// TestSyncRejected: an inline request outside the target's buffers fails
// with ErrRejected, not as a peer failure, and the next call succeeds on a
// fresh connection.
func TestSyncRejected(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 64<<10)
	registered := remote[:32<<10]
	server := newTransport(t, Config{}, registered)
	client := newTransport(t, Config{})
	pe := peerOf(server, 2)
	local := testutil.Mmap(t, 4096)
	for _, op := range []transport.Opcode{transport.Write, transport.Read} {
		t.Run(op.String(), func(t *testing.T) {
			bad := transport.Request{Opcode: op, Local: uintptr(addrOf(local)), Remote: addrOf(remote[40<<10:]), Length: 4096}
			task := submitSync(context.Background(), client, pe, bad)
			require.Equal(t, transport.Failed, task.Status())
			require.ErrorIs(t, task.Err(), ErrRejected)
			require.NotErrorIs(t, task.Err(), ErrPeer)
			var pErr *PeerError
			require.ErrorAs(t, task.Err(), &pErr)
			require.Equal(t, bad.Remote, pErr.Remote)
			require.NoError(t, client.PeerHealth(pe.Name))
			requireDone(t, submitSync(context.Background(), client, pe, write(local, addrOf(registered))))
		})
	}
}

// TestSyncPeerDies: a peer that dies mid-exchange fails the inline task as
// a connection failure, promptly, and marks the peer unhealthy.
func TestSyncPeerDies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		op     transport.Opcode
		handle func(c net.Conn)
	}{
		{"mid write body", transport.Write, func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			_, _ = io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size/2))
		}},
		{"before status", transport.Write, func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			_, _ = io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size))
		}},
		{"mid read body", transport.Read, func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			ok := EncodeStatus(StatusOK)
			_, _ = c.Write(append(ok[:], make([]byte, DecodeHeader(&hb).Size/2)...))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			f := startFake(t, tc.handle)
			client := newTransport(t, Config{})
			local := testutil.Mmap(t, 64<<10)
			pe := f.peer(2)
			start := time.Now()
			task := submitSync(context.Background(), client, pe, transport.Request{Opcode: tc.op, Local: uintptr(addrOf(local)), Remote: 0x1000, Length: 64 << 10})
			require.Less(t, time.Since(start), 5*time.Second)
			require.Equal(t, transport.Failed, task.Status())
			require.ErrorIs(t, task.Err(), ErrPeer)
			var pErr *PeerError
			require.ErrorAs(t, task.Err(), &pErr)
			require.Equal(t, "fake", pErr.Peer)
			require.ErrorIs(t, client.PeerHealth(pe.Name), ErrPeer)
		})
	}
}

// TestSyncDeadline: an inline request to a peer that never answers ends
// with its ctx, whether the ctx expires or is cancelled.
func TestSyncDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			f := stuckPeer(t)
			client := newTransport(t, Config{})
			local := testutil.Mmap(t, 4096)
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			task := submitSync(ctx, client, f.peer(2), write(local, 0x1000))
			require.Less(t, time.Since(start), 5*time.Second)
			require.ErrorIs(t, task.Err(), tc.want)
			require.NotErrorIs(t, task.Err(), ErrPeer)
			require.NoError(t, client.PeerHealth("fake"))
		})
	}
}

// heldPeer serves v2 writes but holds each status frame until release is
// closed; got receives a token per request read.
func heldPeer(tb testing.TB) (f *fakePeer, got chan struct{}, release chan struct{}) {
	got, release = make(chan struct{}, 16), make(chan struct{})
	f = startFakeDone(tb, func(done <-chan struct{}) func(net.Conn) {
		return func(c net.Conn) {
			for {
				var hb [HeaderSize]byte
				if _, err := io.ReadFull(c, hb[:]); err != nil {
					return
				}
				if _, err := io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size)); err != nil {
					return
				}
				got <- struct{}{}
				select {
				case <-release:
				case <-done:
					return
				}
				ok := EncodeStatus(StatusOK)
				if _, err := c.Write(ok[:]); err != nil {
					return
				}
			}
		}
	})
	return f, got, release
}

// TestSyncFallbackWhenBusy: with every sync connection in use, a sync
// submit goes to the lanes and returns without waiting for the network.
func TestSyncFallbackWhenBusy(t *testing.T) {
	testutil.ResourceCheck(t)
	f, got, release := heldPeer(t)
	client := newTransport(t, Config{Lanes: 1})
	local := testutil.Mmap(t, 8192)
	first := make(chan *transport.Task)
	go func() { first <- submitSync(context.Background(), client, f.peer(2), write(local[:4096], 0x1000)) }()
	<-got // the first call holds the only sync connection
	second := submitSync(context.Background(), client, f.peer(2), write(local[4096:], 0x1000))
	require.False(t, finished(second), "went to a lane")
	<-got
	close(release)
	requireDone(t, <-first)
	waitTask(t, second)
	requireDone(t, second)
}

// TestSyncCloseInFlight: closing the transport (or the peer) fails an
// inline request in flight with ErrClosed, waits for it, and leaks nothing.
func TestSyncCloseInFlight(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(tr *Transport)
	}{
		{"transport", func(tr *Transport) { require.NoError(t, tr.Close()) }},
		{"peer", func(tr *Transport) { tr.ClosePeer("fake") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			f, got, _ := heldPeer(t)
			client := newTransport(t, Config{})
			local := testutil.Mmap(t, 4096)
			done := make(chan *transport.Task)
			go func() { done <- submitSync(context.Background(), client, f.peer(2), write(local, 0x1000)) }()
			<-got
			tc.close(client)
			task := <-done
			require.ErrorIs(t, task.Err(), ErrClosed)
		})
	}
}

// TestSyncStaleConnection: a pooled sync connection that the peer closed
// is noticed (PeerCloses counts it) and the next call dials afresh.
func TestSyncStaleConnection(t *testing.T) {
	testutil.ResourceCheck(t)
	f := oneShot(t, func(c net.Conn) { _ = c.Close() })
	client := newTransport(t, Config{})
	local := testutil.Mmap(t, 4096)
	pe := f.peer(2)
	for i := 0; i < 3; i++ {
		requireDone(t, submitSync(context.Background(), client, pe, write(local, 0x1000)))
		want := uint64(i + 1)
		settles(t, func() bool { return client.PeerCloses(pe) == want }, "close not counted")
	}
	require.NoError(t, client.PeerHealth("fake"))
}

// TestPoller checks the bounded poll on a connected pair.
func TestPoller(t *testing.T) {
	never := func() bool { return false }
	for _, tc := range []struct {
		name      string
		prepare   func(t *testing.T, peer net.Conn)
		budget    time.Duration
		stop      func() bool
		wantReady bool
		wantIdle  bool
	}{
		{"nothing within budget", func(*testing.T, net.Conn) {}, time.Millisecond, never, false, true},
		{"bytes waiting", func(t *testing.T, c net.Conn) { _, err := c.Write([]byte{1}); require.NoError(t, err) }, time.Hour, never, true, false},
		{"peer closed", func(t *testing.T, c net.Conn) { require.NoError(t, c.Close()) }, time.Hour, never, true, false},
		{"stopped", func(*testing.T, net.Conn) {}, time.Hour, func() bool { return true }, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			ln := localListener(t)
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			peer, err := ln.Accept()
			require.NoError(t, err)
			defer peer.Close()
			tc.prepare(t, peer)
			p := newPoller(c, tc.budget, tc.stop)
			require.NotNil(t, p)
			if tc.wantReady {
				settles(t, func() bool { return !p.idle() }, "never readable") // loopback delivery
			}
			require.Equal(t, tc.wantReady, p.wait())
			require.Equal(t, tc.wantIdle, p.idle())
		})
	}
	t.Run("backs off after misses", func(t *testing.T) {
		ln := localListener(t)
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		peer, err := ln.Accept()
		require.NoError(t, err)
		defer peer.Close()
		p := newPoller(c, time.Millisecond, never)
		require.False(t, p.wait(), "a miss")
		require.Equal(t, 2, p.skip)
		_, err = peer.Write([]byte{1})
		require.NoError(t, err)
		settles(t, func() bool { return !p.idle() }, "never readable")
		start := time.Now()
		require.False(t, p.wait(), "skipped: parks at once even though bytes wait")
		require.False(t, p.wait())
		require.Less(t, time.Since(start), time.Millisecond)
		require.True(t, p.wait(), "polls again after the skips, and hits")
		require.Zero(t, p.misses)
		require.Zero(t, p.skip)
		for i := 0; i < 20; i++ { // misses in a row saturate at maxSkip
			p.skip = 0
			var b [1]byte
			if !p.idle() {
				_, err := c.Read(b[:])
				require.NoError(t, err)
			}
			p.wait()
		}
		require.Equal(t, maxSkip, p.skip)
	})
	t.Run("disabled", func(t *testing.T) {
		var p *poller
		require.Nil(t, newPoller(nil, time.Second, nil))
		require.False(t, p.wait())
		require.True(t, p.idle())
		n, err := p.waitInto(make([]byte, 8))
		require.Zero(t, n)
		require.NoError(t, err)
	})
}

// TestPollerWaitInto: polling that reads what arrives hands over the bytes
// (all or part of what the caller wants), the peer's close as io.EOF and a
// reset as the system call's error; nothing within the budget reads
// nothing.
func TestPollerWaitInto(t *testing.T) {
	pair := func(t *testing.T) (c, peer net.Conn) {
		ln := localListener(t)
		t.Cleanup(func() { ln.Close() })
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		peer, err = ln.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { peer.Close() })
		return c, peer
	}
	never := func() bool { return false }
	t.Run("nothing", func(t *testing.T) {
		c, _ := pair(t)
		n, err := newPoller(c, time.Millisecond, never).waitInto(make([]byte, 8))
		require.Zero(t, n)
		require.NoError(t, err)
	})
	t.Run("part of a frame, then the rest", func(t *testing.T) {
		c, peer := pair(t)
		_, err := peer.Write([]byte{1, 2, 3})
		require.NoError(t, err)
		p := newPoller(c, time.Hour, never)
		b := make([]byte, 8)
		n, err := p.waitInto(b)
		require.NoError(t, err)
		require.Equal(t, []byte{1, 2, 3}, b[:n])
		_, err = peer.Write([]byte{4, 5, 6, 7, 8, 9})
		require.NoError(t, err)
		_, err = io.ReadFull(c, b[n:])
		require.NoError(t, err)
		require.Equal(t, []byte{1, 2, 3, 4, 5, 6, 7, 8}, b)
		require.False(t, p.idle(), "the ninth byte is left for the next read")
	})
	t.Run("closed", func(t *testing.T) {
		c, peer := pair(t)
		require.NoError(t, peer.Close())
		n, err := newPoller(c, time.Hour, never).waitInto(make([]byte, 8))
		require.Zero(t, n)
		require.ErrorIs(t, err, io.EOF)
	})
	t.Run("reset", func(t *testing.T) {
		c, peer := pair(t)
		require.NoError(t, peer.(*net.TCPConn).SetLinger(0))
		require.NoError(t, peer.Close())
		n, err := newPoller(c, time.Hour, never).waitInto(make([]byte, 8))
		require.Zero(t, n)
		require.ErrorIs(t, err, syscall.ECONNRESET)
		var op *net.OpError
		require.ErrorAs(t, err, &op)
	})
}

// TestServerPollStopsOnClose: a server polling for the next header with a
// long budget closes promptly and leaks nothing.
func TestServerPollStopsOnClose(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 4096)
	local := testutil.Mmap(t, 4096)
	server, err := New(Config{PollBudget: MaxPollBudget}, localListener(t), &registry{regions: []region{{addrOf(remote), addrOf(remote) + 4096}}})
	require.NoError(t, err)
	client := newTransport(t, Config{PollBudget: -1})
	for i := 0; i < 20; i++ {
		requireDone(t, transfer(t, client, peerOf(server, 2), write(local, addrOf(remote)))...)
	}
	start := time.Now()
	require.NoError(t, server.Close())
	require.Less(t, time.Since(start), time.Second)
}

// TestSyncSweep: a pooled sync connection whose peer closed it is released
// without another call to that peer.
func TestSyncSweep(t *testing.T) {
	testutil.ResourceCheck(t)
	f := oneShot(t, func(c net.Conn) { _ = c.Close() })
	client := newTransport(t, Config{})
	local := testutil.Mmap(t, 4096)
	before := openFDs()
	requireDone(t, submitSync(context.Background(), client, f.peer(2), write(local, 0x1000)))
	settles(t, func() bool { return openFDs() <= before }, "pooled connection kept")
}
