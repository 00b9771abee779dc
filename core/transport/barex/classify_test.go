//go:build cgo && linux

package barex

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// sentinels are the transport-neutral sentinels the engine branches on.
var sentinels = []error{transport.ErrPeer, transport.ErrRejected, transport.ErrClosed}

// requireOnly checks that err matches want and no other sentinel; a nil
// want means none of them.
func requireOnly(tb testing.TB, err, want error) {
	tb.Helper()
	require.Error(tb, err)
	for _, s := range sentinels {
		require.Equal(tb, s == want, errors.Is(err, s), "%v\nmatches %q: want %v", err, s, s == want)
	}
}

// TestFailureSentinels runs every way a task fails on the FAKE shim
// (testdata/fakeshim, standing in for barex and the NICs this host lacks)
// and checks that the task's error matches exactly the right
// transport-neutral sentinel, and what PeerHealth then says of the peer:
// the engine's recovery looks at nothing else.
func TestFailureSentinels(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	aSpec := withCfg(oneDev, Config{DrainTimeout: 100 * time.Millisecond})
	// gone stops b as if its process died: its engine, its port and its
	// handshake listener are gone.
	gone := func(c *cluster, b *host) {
		c.mu.Lock()
		delete(c.hosts, b.name)
		c.mu.Unlock()
		b.shutdown(c.tb)
	}
	tests := []struct {
		name string
		// run fails a transfer from a to the peer called "b" and returns
		// the task's error.
		run    func(t *testing.T, c *cluster, a, b *host) error
		want   error // the one sentinel the error matches; nil for none
		health error // what PeerHealth("b") matches after; nil for healthy
	}{
		{
			name: "peer dies: its channels go inactive and its port and listener are gone",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 4096)))
				desc := b.desc()
				gone(c, b)
				tasks, g := a.submitDesc(context.Background(), b, desc, write(a.addr(0), desc.Buffers[0].Addr, 4096))
				wait(t, g)
				return tasks[0].Err()
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "peer unreachable before any channel",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				desc := b.desc()
				gone(c, b)
				tasks, g := a.submitDesc(context.Background(), b, desc, write(a.addr(0), desc.Buffers[0].Addr, 4096))
				wait(t, g)
				require.ErrorIs(t, tasks[0].Err(), ErrHandshake)
				return tasks[0].Err()
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "peer restarts under the same name: new port, new keys",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 4096)))
				old := b.desc()
				gone(c, b)
				// Another port range than the first incarnation's: a new port.
				b2 := c.addHost("b", hostSpec{cfg: Config{MinPort: 35001, MaxPort: 36000}})
				tasks, g := a.submitDesc(context.Background(), b2, old, write(a.addr(0), old.Buffers[0].Addr, 4096))
				wait(t, g)
				require.ErrorIs(t, tasks[0].Err(), CodeAccess)
				// What the engine's recovery does next: the new descriptor
				// works, over the channels already open to the new port.
				requireDone(t, a.transfer(t, context.Background(), b2, write(a.addr(0), b2.addr(0), 4096)))
				require.Equal(t, 2, c.handshakeCount("b"), "the port was exchanged again once")
				return tasks[0].Err()
			},
			want: transport.ErrRejected,
		},
		{
			name: "channel goes bad under a batch",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 4096)))
				knob(t, a.t, "hold", 1)
				tasks, g := a.submit(context.Background(), b, write(a.addr(0), b.addr(0), 4096))
				for _, h := range a.channels(t, "b", 0) {
					knob(t, a.t, "deactivate", int64(h))
				}
				knob(t, a.t, "hold", 0)
				wait(t, g)
				require.ErrorIs(t, tasks[0].Err(), CodeIO)
				return tasks[0].Err()
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "channel setup fails",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				knob(t, a.t, "fail_connect", 1)
				err := a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 4096))[0].Err()
				require.ErrorIs(t, err, ErrChannel)
				return err
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "key rejected",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				bad := b.desc().Clone()
				for i := range bad.Buffers {
					for k := range bad.Buffers[i].RKey {
						bad.Buffers[i].RKey[k]++
					}
				}
				tasks, g := a.submitDesc(context.Background(), b, bad, write(a.addr(0), b.addr(0), 4096))
				wait(t, g)
				return tasks[0].Err()
			},
			want: transport.ErrRejected,
		},
		{
			name: "ClosePeer with a batch in flight",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 4096)))
				knob(t, a.t, "hold", 1)
				tasks, g := a.submit(context.Background(), b, write(a.addr(0), b.addr(0), 4096))
				a.t.ClosePeer("b")
				knob(t, a.t, "hold", 0)
				wait(t, g)
				require.ErrorIs(t, tasks[0].Err(), CodeIO, "the code barex reported is kept")
				return tasks[0].Err()
			},
			want: transport.ErrClosed,
		},
		{
			name: "Close with work queued behind a port exchange",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				release := make(chan struct{})
				c.hook = func(string, string) error { <-release; return nil }
				tasks, g := a.submit(context.Background(), b, write(a.addr(0), b.addr(0), 4096))
				closed := make(chan error, 1)
				go func() { closed <- a.t.Close() }()
				eventually(t, a.t.life.Ended, "Close started")
				close(release)
				wait(t, g)
				require.NoError(t, <-closed)
				return tasks[0].Err()
			},
			want: transport.ErrClosed, health: transport.ErrClosed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			a, b := c.addHost("a", aSpec), c.addHost("b", hostSpec{})
			err := tc.run(t, c, a, b)
			requireOnly(t, err, tc.want)
			if tc.health == nil {
				require.NoError(t, a.t.PeerHealth("b"))
			} else {
				requireOnly(t, a.t.PeerHealth("b"), tc.health)
			}
		})
	}
}

// TestCodeSentinels: each shim code matches at most one transport-neutral
// sentinel.
func TestCodeSentinels(t *testing.T) {
	tests := []struct {
		code Code
		want error
	}{
		{CodeConnect, transport.ErrPeer},
		{CodeInactive, transport.ErrPeer},
		{CodeIO, transport.ErrPeer},
		{CodeBadChannel, transport.ErrPeer},
		{CodeAccess, transport.ErrRejected},
		{CodeClosed, transport.ErrClosed},
		{CodeTimedOut, nil},
		{CodeNotRegistered, nil},
		{CodeAgain, nil},
		{CodeInvalid, nil},
	}
	for _, tc := range tests {
		t.Run(tc.code.Error(), func(t *testing.T) {
			err := &SliceError{Peer: "b", Err: &ShimError{Op: "mcbx_post", Code: tc.code}}
			for _, s := range sentinels {
				require.Equal(t, s == tc.want, errors.Is(err, s), "matches %v", s)
			}
		})
	}
	closed := &SliceError{Err: channelError(&channel{nativeChannel: nativeChannel{handle: 7}}, "batch", CodeIO)}
	require.ErrorIs(t, closed, transport.ErrPeer, "a channel this side did not close")
	ch := &channel{nativeChannel: nativeChannel{handle: 7}}
	cause := error(ErrClosed)
	ch.closed.Store(&cause)
	closed = &SliceError{Err: channelError(ch, "batch", CodeIO)}
	requireOnly(t, closed, transport.ErrClosed)
	require.ErrorIs(t, closed, CodeIO)
	require.ErrorContains(t, closed, "barex i/o error")
}
