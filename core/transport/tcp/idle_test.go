package tcp

import (
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// settles polls cond until it holds or 5 s pass.
func settles(tb testing.TB, cond func() bool, msg string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

// oneShot serves one v2 write on each connection, then does what after
// says (close, or send stray bytes) and waits for the test to end.
func oneShot(tb testing.TB, after func(c net.Conn)) *fakePeer {
	return startFakeDone(tb, func(done <-chan struct{}) func(net.Conn) {
		return func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			if _, err := io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size)); err != nil {
				return
			}
			ok := EncodeStatus(StatusOK)
			if _, err := c.Write(ok[:]); err != nil {
				return
			}
			after(c)
			<-done
		}
	})
}

// TestIdleLaneEndsWhenPeerCloses: peers that closed their end (died,
// restarted elsewhere) keep no goroutine and no descriptor of the client,
// without ClosePeer; the next request dials afresh.
func TestIdleLaneEndsWhenPeerCloses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after func(c net.Conn)
	}{
		{"peer closes", func(c net.Conn) { _ = c.Close() }},
		{"peer resets", func(c net.Conn) {
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
		}},
		{"peer sends stray bytes", func(c net.Conn) { _, _ = c.Write([]byte("garbage")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			client := newTransport(t, Config{})
			local := testutil.Mmap(t, 4096)
			peers := make([]*fakePeer, 20)
			for i := range peers {
				peers[i] = oneShot(t, tc.after)
			}
			baseG := runtime.NumGoroutine()
			baseFD := openFDs()
			for i, f := range peers {
				pe := f.peer(2)
				pe.Name = "fake-" + string(rune('a'+i))
				requireDone(t, transfer(t, client, pe, write(local, 0x1000))...)
			}
			// Each fake's handler goroutine waits for the test's end, with
			// its conn open if it did not close it; what the client held
			// must be gone either way.
			fakeG, fakeFD := len(peers), 0
			if tc.name == "peer sends stray bytes" {
				fakeFD = len(peers)
			}
			settles(t, func() bool {
				return runtime.NumGoroutine() <= baseG+fakeG && openFDs() <= baseFD+fakeFD
			}, "idle lanes of closed peers kept goroutines or descriptors")
			for i, f := range peers {
				pe := f.peer(2)
				pe.Name = "fake-" + string(rune('a'+i))
				require.NoError(t, client.PeerHealth(pe.Name), "an idle close is not a failure")
				require.Equal(t, uint64(1), client.PeerCloses(pe), "the close is counted")
			}
			require.Zero(t, client.PeerCloses(peers[0].peer(2)), "a peer never used has no count")
			// A peer that comes back at the same address is dialled afresh.
			requireDone(t, transfer(t, client, peers[0].peer(2), write(local, 0x1000))...)
		})
	}
}

// TestIdleLaneWakesForWork: a lane blocked watching its idle connection
// serves new work at once, over the same connection, many times over.
func TestIdleLaneWakesForWork(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<16)
	server := newTransport(t, Config{}, remote)
	client := newTransport(t, Config{Lanes: 1})
	local := testutil.Mmap(t, 1<<16)
	pe := peerOf(server, 2)
	start := time.Now()
	for i := 0; i < 200; i++ {
		fill(local, uint64(i))
		requireDone(t, transfer(t, client, pe, write(local, addrOf(remote)))...)
		require.Equal(t, local, remote)
		if i%50 == 0 {
			time.Sleep(2 * time.Millisecond) // let the lane go idle
		}
	}
	require.Less(t, time.Since(start), 10*time.Second)
	require.Equal(t, 1, server.srv.conns.Len(), "one lane keeps one connection")
}
