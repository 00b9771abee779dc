package rdma

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

func write(a, b *host, off, length int) transport.Request {
	return transport.Request{Opcode: transport.Write, Local: uintptr(a.addr(off)), Remote: b.addr(off), Length: uint64(length)}
}

func read(a, b *host, off, length int) transport.Request {
	return transport.Request{Opcode: transport.Read, Local: uintptr(a.addr(off)), Remote: b.addr(off), Length: uint64(length)}
}

func TestStriping(t *testing.T) {
	testutil.ResourceCheck(t)
	tests := []struct {
		name       string
		matrix     string
		wantLocal  []bool // which of a's NICs carry slices
		wantRemote []bool // which of b's NICs are targeted
	}{
		{name: "both preferred", matrix: `{"cpu:0":[["mlx5_0","mlx5_1"],[]]}`, wantLocal: []bool{true, true}, wantRemote: []bool{true, true}},
		{name: "one preferred", matrix: `{"cpu:0":[["mlx5_1"],["mlx5_0"]]}`, wantLocal: []bool{false, true}, wantRemote: []bool{false, true}},
		{name: "location not in matrix uses every nic", matrix: `{"cpu:7":[["mlx5_1"],["mlx5_0"]]}`, wantLocal: []bool{true, true}, wantRemote: []bool{true, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			spec := hostSpec{nics: nicSpecs(2), matrix: tc.matrix, cfg: Config{PathRoundRobin: true}}
			a, b := c.addHost("a", spec), c.addHost("b", spec)
			fill(a.mem[:1<<20], 1)
			requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
			requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
			for i, want := range tc.wantLocal {
				require.Equal(t, want, a.nics[i].Posted() > 0, "a's nic %d", i)
			}
			for i, want := range tc.wantRemote {
				targeted := false
				for _, ctx := range a.t.ctxs {
					for _, p := range ctx.store.paths() {
						targeted = targeted || p == "b@"+b.nics[i].Name()
					}
				}
				require.Equal(t, want, targeted, "b's nic %d", i)
			}
		})
	}
}

func TestRetriesRotateNICs(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	spec := hostSpec{nics: nicSpecs(2), cfg: Config{PathRoundRobin: true, RetryCnt: 4}}
	a, b := c.addHost("a", spec), c.addHost("b", spec)
	// b's mlx5_0 is unreachable from every NIC of a.
	for _, n := range a.nics {
		n.FailPath(b.nics[0], verbs.WCRetryExcErr, -1)
	}
	fill(a.mem[:2<<20], 2)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 2<<20)))
	requireEqualBytes(t, a.mem[:2<<20], b.mem[:2<<20])
	require.Positive(t, a.nics[0].Completions(verbs.WCRetryExcErr)+a.nics[1].Completions(verbs.WCRetryExcErr))
	require.NoError(t, a.t.PeerHealth("b"))

	// Now nothing is reachable: every slice tries every (local, remote)
	// pair and gives up after RetryCnt retries.
	for _, n := range a.nics {
		n.FailPath(b.nics[1], verbs.WCRetryExcErr, -1)
	}
	before := [2]int{a.nics[0].Completions(verbs.WCRetryExcErr), a.nics[1].Completions(verbs.WCRetryExcErr)}
	tasks := a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10))
	require.Equal(t, transport.Failed, tasks[0].Status())
	err := tasks[0].Err()
	require.ErrorIs(t, err, ErrRetriesExhausted)
	require.ErrorIs(t, err, verbs.WCRetryExcErr)
	var se *SliceError
	require.True(t, errors.As(err, &se))
	require.Equal(t, 4, se.Retries)
	require.Equal(t, "b", se.Peer)
	for i := range 2 {
		require.Greater(t, a.nics[i].Completions(verbs.WCRetryExcErr), before[i], "retries used a's nic %d", i)
	}
	require.ErrorIs(t, a.t.PeerHealth("b"), transport.ErrPeer)
}

func TestPartialPostFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{}), c.addHost("b", hostSpec{})
	a.nics[0].FailPostAfter(3)
	fill(a.mem[:1<<20], 3)
	tasks := a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20))
	requireDone(t, tasks) // Transferred == Length: no slice counted twice
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	require.GreaterOrEqual(t, a.nics[0].Posted(), 16, "the refused requests were posted again")
	// The endpoint that refused work left service: its QPs (the NIC's
	// first two, 1001 and 1002) are gone.
	for _, q := range a.nics[0].QPs() {
		require.Greater(t, q.Num, uint32(1002))
	}
}

func TestFlushErrors(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{cfg: Config{NumQPPerEP: 1}}), c.addHost("b", hostSpec{cfg: Config{NumQPPerEP: 1}})
	// The first request fails; the QP goes to ERR and every request queued
	// behind it on the QP is flushed, then retried.
	a.nics[0].FailPath(b.nics[0], verbs.WCRemOpErr, 1)
	fill(a.mem[:1<<20], 4)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	require.Equal(t, 1, a.nics[0].Completions(verbs.WCRemOpErr))
	require.Equal(t, 15, a.nics[0].Completions(verbs.WCWRFlushErr))
	// The failed endpoint was destroyed once drained; one live endpoint
	// (one QP) remains.
	require.Len(t, a.nics[0].QPs(), 1)
}

func TestSmallCQ(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	spec := hostSpec{cfg: Config{MaxCQE: 3, MaxWR: 2, SliceSize: 4096}}
	a, b := c.addHost("a", spec), c.addHost("b", spec)
	fill(a.mem[:1<<20], 5)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	require.Empty(t, c.fab.Violations())
}

// TestSimultaneousConnect has two engines connect to each other at the same
// moment: each handshake is held until the other is in flight too. Both
// must complete at once, not after a timeout (Mooncake R1).
func TestSimultaneousConnect(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	var (
		mu      sync.Mutex
		arrived = map[string]bool{}
		both    = make(chan struct{})
	)
	c.hook = func(from, to string) {
		mu.Lock()
		arrived[from] = true
		if len(arrived) == 2 {
			close(both)
		}
		mu.Unlock()
		select {
		case <-both:
		case <-time.After(5 * time.Second):
		}
	}
	spec := hostSpec{cfg: Config{HandshakeTimeout: 20 * time.Second}}
	a, b := c.addHost("a", spec), c.addHost("b", spec)
	fill(a.mem[:1<<20], 6)
	fill(b.mem[1<<20:2<<20], 7)
	start := time.Now()
	var wg sync.WaitGroup
	var ta, tb []*transport.Task
	wg.Add(2)
	go func() { defer wg.Done(); ta = a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)) }()
	go func() { defer wg.Done(); tb = b.transfer(t, context.Background(), a, write(b, a, 1<<20, 1<<20)) }()
	wg.Wait()
	requireDone(t, ta)
	requireDone(t, tb)
	require.Less(t, time.Since(start), 3*time.Second)
	select {
	case <-both:
	default:
		t.Fatal("the handshakes did not overlap")
	}
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	requireEqualBytes(t, b.mem[1<<20:2<<20], a.mem[1<<20:2<<20])
	// One endpoint per side, QP i paired with QP i.
	aq, bq := a.nics[0].QPs(), b.nics[0].QPs()
	require.Len(t, aq, 2)
	require.Len(t, bq, 2)
	for i := range aq {
		require.Equal(t, bq[i].Num, aq[i].DestQPN)
		require.Equal(t, aq[i].Num, bq[i].DestQPN)
	}
}

func TestPortEvents(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{nics: nicSpecs(2), cfg: Config{PathRoundRobin: true}})
	b := c.addHost("b", hostSpec{})
	a.nics[0].SetPort(false)
	require.Eventually(t, func() bool { return !a.t.ctxs[0].active() }, 5*time.Second, time.Millisecond)
	fill(a.mem[:1<<20], 8)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	require.Zero(t, a.nics[0].Posted(), "a port that is down carries nothing")
	require.Positive(t, a.nics[1].Posted())

	a.nics[0].SetPort(true)
	require.Eventually(t, func() bool { return a.t.ctxs[0].active() }, 5*time.Second, time.Millisecond)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	require.Positive(t, a.nics[0].Posted())
}

func TestContextPauseAndRecovery(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{nics: nicSpecs(2), cfg: Config{ContextFailureThreshold: 2, ContextRecovery: 500 * time.Millisecond,
		PathRoundRobin: true}})
	b := c.addHost("b", hostSpec{})
	// Slices start on mlx5_0, fail, and are retried on mlx5_0 first (the
	// first preferred HCA): the second failure in a row pauses it.
	a.nics[0].FailPath(b.nics[0], verbs.WCRetryExcErr, -1)
	fill(a.mem[:1<<20], 9)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	// Both QPs of the first endpoint may fail before it leaves service.
	require.GreaterOrEqual(t, a.nics[0].Completions(verbs.WCRetryExcErr), 2)
	require.LessOrEqual(t, a.nics[0].Completions(verbs.WCRetryExcErr), 4, "no new work goes to a paused hca")
	require.False(t, a.t.ctxs[0].active(), "two failures in a row pause the hca")
	a.nics[0].FailPath(b.nics[0], 0, 0)
	require.Eventually(t, func() bool { return a.t.ctxs[0].active() }, 5*time.Second, time.Millisecond, "and it comes back")
	posted := a.nics[0].Posted()
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	require.Greater(t, a.nics[0].Posted(), posted)
}

func TestQPFatalReconnects(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{}), c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10)))
	old := a.nics[0].QPs()
	a.nics[0].QPFatal(old[0].Num)
	require.Eventually(t, func() bool { return len(a.t.ctxs[0].store.paths()) == 0 }, 5*time.Second, time.Millisecond)
	fill(a.mem[:1<<20], 10)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	now := a.nics[0].QPs()
	require.Len(t, now, 2)
	require.NotEqual(t, old[0].Num, now[0].Num, "new queue pairs")
}

func TestDeviceRemoval(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{nics: nicSpecs(2), cfg: Config{PathRoundRobin: true}})
	b := c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	a.nics[0].Remove()
	require.Eventually(t, func() bool { return a.t.ctxs[0].fatal.Load() }, 5*time.Second, time.Millisecond)
	posted := a.nics[0].Posted()
	fill(a.mem[:1<<20], 11)
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b.mem[:1<<20])
	require.Equal(t, posted, a.nics[0].Posted())
}

// TestPeerDiesAndRestarts kills the target mid-loop: transfers fail within
// a bound instead of hanging; a restarted target (new QPs, new keys) is
// reached again after a new handshake.
func TestPeerDiesAndRestarts(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	spec := hostSpec{cfg: Config{RetryCnt: 3}}
	a, b := c.addHost("a", spec), c.addHost("b", spec)
	desc := b.desc(t)
	requireDone(t, a.transferDesc(t, context.Background(), "b", desc, write(a, b, 0, 1<<20)))
	c.removeHost("b")
	start := time.Now()
	tasks := a.transferDesc(t, context.Background(), "b", desc, transport.Request{
		Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: desc.Buffers[0].Addr, Length: 1 << 20})
	require.Equal(t, transport.Failed, tasks[0].Status())
	require.Less(t, time.Since(start), 5*time.Second)
	require.ErrorIs(t, a.t.PeerHealth("b"), transport.ErrPeer)

	b2 := c.addHost("b", spec)
	fill(a.mem[:1<<20], 12)
	requireDone(t, a.transfer(t, context.Background(), b2, write(a, b2, 0, 1<<20)))
	requireEqualBytes(t, a.mem[:1<<20], b2.mem[:1<<20])
	require.NoError(t, a.t.PeerHealth("b"))
}

func TestCancelQueuedWork(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	release := make(chan struct{})
	c.hook = func(from, to string) { <-release }
	a, b := c.addHost("a", hostSpec{}), c.addHost("b", hostSpec{})
	ctx, cancel := context.WithCancel(context.Background())
	g := transport.NewGroup()
	task := &transport.Task{}
	task.Init(write(a, b, 0, 1<<20), g)
	g.Add(1)
	a.t.Submit(ctx, transport.Peer{Name: "b", Desc: b.desc(t)}, []*transport.Task{task}, transport.SubmitOptions{})
	cancel()
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	require.NoError(t, g.Wait(wctx), "cancelled work ends while the handshake still hangs")
	require.ErrorIs(t, task.Err(), context.Canceled)
	close(release)
}

func TestCloseWithWorkInFlight(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{}), c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10)))
	a.nics[0].DelayCompletions(20 * time.Millisecond)
	g := transport.NewGroup()
	tasks := make([]*transport.Task, 8)
	for i := range tasks {
		tasks[i] = &transport.Task{}
		tasks[i].Init(write(a, b, i<<20, 1<<20), g)
	}
	g.Add(len(tasks))
	a.t.Submit(context.Background(), transport.Peer{Name: "b", Desc: b.desc(t)}, tasks, transport.SubmitOptions{})
	require.NoError(t, a.t.Close())
	require.Zero(t, g.Pending(), "every task ends by the time Close returns")
	for _, task := range tasks {
		if task.Status() == transport.Failed {
			require.ErrorIs(t, task.Err(), ErrClosed)
		}
	}
	// Submit after Close fails at once.
	late := &transport.Task{}
	late.Init(write(a, b, 0, 10), nil)
	a.t.Submit(context.Background(), transport.Peer{Name: "b", Desc: b.desc(t)}, []*transport.Task{late}, transport.SubmitOptions{})
	require.ErrorIs(t, late.Err(), ErrClosed)
	require.NoError(t, a.t.Close(), "idempotent")
}

func TestClosePeer(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{}), c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10)))
	a.t.ClosePeer("b")
	require.Empty(t, a.t.ctxs[0].store.paths())
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10)))
}

var _ = fake.NICSpec{}
