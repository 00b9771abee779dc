package engine

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// Issue 17 item 2: one peer could queue 65,536 notifies of any size. With
// the default limits, 30 notifies of about 1 MiB from one peer stop at the
// per-peer 16 MiB: the sender is told, and the queue holds no more; once
// drained, the peer is accepted again.
func TestNotifyFloodIsBoundedAndTheSenderIsTold(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 4096, nil, nil)
	msg := strings.Repeat("x", 1<<20-64) // fits the default 1 MiB frame
	var accepted, refused int
	for i := range 30 {
		err := p.ini.SendNotify(ctxT(t), p.tgt.Name(), Notify{Name: fmt.Sprint(i), Msg: msg})
		if err != nil {
			require.ErrorIs(t, err, handshake.ErrNotifyRejected)
			require.ErrorContains(t, err, "per peer")
			refused++
			continue
		}
		require.Zero(t, refused, "no notify is accepted after the first refusal")
		accepted++
	}
	want, held := 0, 0
	for held+len(fmt.Sprint(want))+len(msg) <= config.DefaultNotifyMaxBytesPerPeer {
		held += len(fmt.Sprint(want)) + len(msg)
		want++
	}
	require.Equal(t, want, accepted)
	require.Equal(t, 30-accepted, refused)
	got := p.tgt.Notifies()
	require.Len(t, got, accepted)
	for i, n := range got {
		require.Equal(t, fmt.Sprint(i), n.Name, "in order")
	}
	require.NoError(t, p.ini.SendNotify(ctxT(t), p.tgt.Name(), Notify{Name: "after", Msg: msg}))
	require.Equal(t, []Notify{{Name: "after", Msg: msg}}, p.tgt.Notifies())
}

// The limits come from the PYMOONCAKE_NOTIFY_* variables.
func TestNotifyCountLimitFromEnv(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 4096, nil, map[string]string{"PYMOONCAKE_NOTIFY_MAX_COUNT": "5"})
	for i := range 5 {
		require.NoError(t, p.ini.SendNotify(ctxT(t), p.tgt.Name(), Notify{Name: fmt.Sprint(i)}))
	}
	err := p.ini.SendNotify(ctxT(t), p.tgt.Name(), Notify{Name: "6th"})
	require.ErrorIs(t, err, handshake.ErrNotifyRejected)
	require.ErrorContains(t, err, "5 notifies queued (limit 5)")
	require.Len(t, p.tgt.Notifies(), 5)
}

func testQueue(l notifyLimits) *notifyQueue {
	q := &notifyQueue{}
	q.init(config.Env{NotifyMaxCount: l.count, NotifyMaxCountPerPeer: l.peerCount,
		NotifyMaxBytes: l.bytes, NotifyMaxBytesPerPeer: l.peerBytes}, zap.NewNop())
	return q
}

var (
	peerA = netip.MustParseAddr("10.0.0.1")
	peerB = netip.MustParseAddr("10.0.0.2")
	peerC = netip.MustParseAddr("10.0.0.3")
)

// Each bound refuses what would pass it and changes nothing; taking frees
// the room of the peer whose notifies were taken.
func TestNotifyQueueLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits notifyLimits
		// fill is pushed first (all accepted), then next must be refused.
		fill []queuedNotify
		next queuedNotify
		want string
	}{
		{"engine count", notifyLimits{count: 2, peerCount: 2, bytes: 100, peerBytes: 100},
			[]queuedNotify{{Notify{"a", ""}, peerA}, {Notify{"b", ""}, peerB}}, queuedNotify{Notify{"c", ""}, peerC},
			"2 notifies queued (limit 2)"},
		{"engine bytes", notifyLimits{count: 10, peerCount: 10, bytes: 10, peerBytes: 8},
			[]queuedNotify{{Notify{"a", "1234"}, peerA}, {Notify{"b", "1234"}, peerB}}, queuedNotify{Notify{"c", ""}, peerC},
			"10 bytes queued, 1 more asked (limit 10)"},
		{"peer count", notifyLimits{count: 10, peerCount: 2, bytes: 100, peerBytes: 100},
			[]queuedNotify{{Notify{"a", ""}, peerA}, {Notify{"b", ""}, peerA}, {Notify{"c", ""}, peerB}}, queuedNotify{Notify{"d", ""}, peerA},
			"2 notifies queued from 10.0.0.1 (limit 2 per peer)"},
		{"peer bytes", notifyLimits{count: 10, peerCount: 10, bytes: 100, peerBytes: 6},
			[]queuedNotify{{Notify{"a", "12"}, peerA}, {Notify{"b", "12345"}, peerB}}, queuedNotify{Notify{"c", "123"}, peerA},
			"3 bytes queued from 10.0.0.1, 4 more asked (limit 6 per peer)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := testQueue(tc.limits)
			for _, v := range tc.fill {
				require.NoError(t, q.push(v.Notify, v.from))
			}
			err := q.push(tc.next.Notify, tc.next.from)
			require.ErrorIs(t, err, errNotifyLimit)
			require.ErrorContains(t, err, tc.want)

			ns, left := q.take(1, func(*Notify) bool { return true })
			require.Equal(t, []Notify{tc.fill[0].Notify}, ns)
			require.Equal(t, len(tc.fill)-1, left)
			if tc.fill[0].from == tc.next.from || tc.name[:6] == "engine" {
				require.NoError(t, q.push(tc.next.Notify, tc.next.from), "room after a take")
			}
			all, left := q.take(100, func(*Notify) bool { return true })
			require.Zero(t, left)
			require.Equal(t, tc.next.Notify, all[len(all)-1])
			require.Zero(t, q.total)
			require.Empty(t, q.peers)
		})
	}
}

// take stops at max, and at the first notify fits refuses, keeping order;
// the queue's memory is reused once drained.
func TestNotifyQueueTakeInPieces(t *testing.T) {
	q := testQueue(notifyLimits{})
	for i := range 3000 {
		require.NoError(t, q.push(Notify{Name: fmt.Sprint(i), Msg: "m"}, peerA))
	}
	next := 0
	budget := 0
	for {
		budget = 100
		ns, left := q.take(700, func(n *Notify) bool {
			if int(n.size()) > budget {
				return false
			}
			budget -= int(n.size())
			return true
		})
		for _, n := range ns {
			require.Equal(t, fmt.Sprint(next), n.Name)
			next++
		}
		require.Equal(t, 3000-next, left)
		if left == 0 {
			break
		}
		require.NotEmpty(t, ns)
	}
	require.Equal(t, 3000, next)
	q.mu.Lock()
	require.Zero(t, q.head)
	require.Empty(t, q.q)
	q.mu.Unlock()

	ns, left := q.take(10, func(*Notify) bool { return false })
	require.Empty(t, ns)
	require.Zero(t, left)
}

// Zero limits mean the defaults, and a per-peer default is never above a
// lower engine limit.
func TestNotifyLimitsDefaults(t *testing.T) {
	require.Equal(t, notifyLimits{count: 1 << 16, peerCount: 1 << 14, bytes: 64 << 20, peerBytes: 16 << 20}, notifyLimitsOf(config.Env{}))
	require.Equal(t, notifyLimits{count: 10, peerCount: 10, bytes: 1000, peerBytes: 1000},
		notifyLimitsOf(config.Env{NotifyMaxCount: 10, NotifyMaxBytes: 1000}))
}
