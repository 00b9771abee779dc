package rdma

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
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

// TestFailureSentinels runs every way a task fails on the FAKE fabric
// (verbs/fake, standing in for the HCAs this host lacks) and checks that
// the task's error matches exactly the right transport-neutral sentinel,
// and what PeerHealth then says of the peer: the engine's recovery looks
// at nothing else.
func TestFailureSentinels(t *testing.T) {
	testutil.ResourceCheck(t)
	spec := hostSpec{cfg: Config{RetryCnt: 3}}
	tests := []struct {
		name string
		// run fails a transfer from a to the peer called "b" and returns
		// the task's error.
		run    func(t *testing.T, c *cluster, a, b *host) error
		want   error // the one sentinel the error matches; nil for none
		health error // what PeerHealth("b") matches after; nil for healthy
	}{
		{
			name: "peer dies: its queue pairs are gone and its handshake listener too",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				desc := b.desc(t)
				requireDone(t, a.transferDesc(t, context.Background(), "b", desc, write(a, b, 0, 64<<10)))
				c.removeHost("b")
				return a.transferDesc(t, context.Background(), "b", desc, writeTo(a, desc, 64<<10))[0].Err()
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "peer unreachable before any connection",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				desc := b.desc(t)
				c.removeHost("b")
				return a.transferDesc(t, context.Background(), "b", desc, writeTo(a, desc, 64<<10))[0].Err()
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "peer restarts under the same name: new queue pairs and keys",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				old := b.desc(t)
				requireDone(t, a.transferDesc(t, context.Background(), "b", old, write(a, b, 0, 64<<10)))
				c.removeHost("b")
				b2 := c.addHost("b", spec)
				err := a.transferDesc(t, context.Background(), "b", old, writeTo(a, old, 64<<10))[0].Err()
				require.ErrorIs(t, err, verbs.WCRemAccessErr)
				// What the engine's recovery does next: the new descriptor
				// works.
				requireDone(t, a.transfer(t, context.Background(), b2, write(a, b2, 0, 64<<10)))
				return err
			},
			want: transport.ErrRejected,
		},
		{
			name: "transport retries exceeded on every path",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				a.nics[0].FailPath(b.nics[0], verbs.WCRetryExcErr, -1)
				return a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10))[0].Err()
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "remote access error",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				a.nics[0].FailPath(b.nics[0], verbs.WCRemAccessErr, -1)
				return a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10))[0].Err()
			},
			want: transport.ErrRejected,
		},
		{
			name: "handshake refused: the peer runs another MC_NUM_QP_PER_EP",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				c.removeHost("b")
				b = c.addHost("b", hostSpec{cfg: Config{RetryCnt: 3, NumQPPerEP: 3}})
				err := a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10))[0].Err()
				require.ErrorIs(t, err, ErrHandshake)
				return err
			},
			want: transport.ErrPeer, health: transport.ErrPeer,
		},
		{
			name: "local protection error blames no peer",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				a.nics[0].FailPath(b.nics[0], verbs.WCLocProtErr, -1)
				return a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10))[0].Err()
			},
		},
		{
			name: "ClosePeer with work queued behind a handshake",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				release := make(chan struct{})
				c.hook = func(string, string) { <-release }
				defer close(release)
				tasks, g := submitTo(t, a, b, write(a, b, 0, 64<<10))
				a.t.ClosePeer("b")
				waitGroup(t, g)
				return tasks[0].Err()
			},
			want: transport.ErrClosed,
		},
		{
			name: "Close with work queued behind a handshake",
			run: func(t *testing.T, c *cluster, a, b *host) error {
				release := make(chan struct{})
				c.hook = func(string, string) { <-release }
				tasks, g := submitTo(t, a, b, write(a, b, 0, 64<<10))
				closed := make(chan error, 1)
				go func() { closed <- a.t.Close() }()
				waitGroup(t, g)
				close(release)
				require.NoError(t, <-closed)
				return tasks[0].Err()
			},
			want: transport.ErrClosed, health: transport.ErrClosed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			a, b := c.addHost("a", spec), c.addHost("b", spec)
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

// writeTo is a write of n bytes from a to the first buffer of desc.
func writeTo(a *host, desc *metadata.SegmentDesc, n uint64) transport.Request {
	return transport.Request{Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: desc.Buffers[0].Addr, Length: n}
}

// submitTo starts reqs from h to peer without waiting.
func submitTo(tb testing.TB, h, peer *host, reqs ...transport.Request) ([]*transport.Task, *transport.Group) {
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	h.t.Submit(context.Background(), transport.Peer{Name: peer.name, Desc: peer.desc(tb)}, tasks, transport.SubmitOptions{})
	return tasks, g
}

func waitGroup(tb testing.TB, g *transport.Group) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(tb, g.Wait(ctx), "tasks did not finish")
}

func TestClassify(t *testing.T) {
	tests := []struct {
		st   verbs.WCStatus
		want error
	}{
		{verbs.WCRemAccessErr, transport.ErrRejected},
		{verbs.WCRemInvReqErr, transport.ErrRejected},
		{verbs.WCRetryExcErr, transport.ErrPeer},
		{verbs.WCRNRRetryExcErr, transport.ErrPeer},
		{verbs.WCWRFlushErr, transport.ErrPeer},
		{verbs.WCRemOpErr, transport.ErrPeer},
		{verbs.WCLocProtErr, nil},
		{verbs.WCLocLenErr, nil},
		{verbs.WCFatalErr, nil},
	}
	for _, tc := range tests {
		t.Run(tc.st.Error(), func(t *testing.T) {
			require.Equal(t, tc.want, classify(tc.st))
			se := &SliceError{Peer: "b", Exhausted: true, Err: tc.st}
			require.ErrorIs(t, se, ErrRetriesExhausted)
			require.ErrorIs(t, se, tc.st, "the native status stays in the chain")
			for _, s := range sentinels {
				require.Equal(t, s == tc.want, errors.Is(se, s), "matches %v", s)
			}
		})
	}
	// Causes other than a completion carry their own sentinel.
	requireOnly(t, &SliceError{Err: fmt.Errorf("connect b@mlx5_0: %w: refused", ErrHandshake)}, transport.ErrPeer)
	requireOnly(t, &SliceError{Err: fmt.Errorf("peer %q closed: %w", "b", ErrClosed)}, transport.ErrClosed)
	requireOnly(t, &SliceError{Err: context.DeadlineExceeded}, nil)
}
