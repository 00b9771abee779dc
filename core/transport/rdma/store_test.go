package rdma

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

func TestEndpointStoreEviction(t *testing.T) {
	testutil.ResourceCheck(t)
	tests := []struct {
		name    string
		policy  StorePolicy
		visit   []string // paths looked up again before the inserts
		insert  []string
		want    []string // live paths, newest first
		evicted []string
	}{
		// SIEVE: the hand starts at the oldest (p1, visited: spared, bit
		// cleared), moves to p2 (unvisited): evicted. Then p3 goes.
		{name: "sieve", policy: StoreSIEVE, visit: []string{"p1@x"}, insert: []string{"p4@x", "p5@x"},
			want: []string{"p5@x", "p4@x", "p1@x"}, evicted: []string{"p2@x", "p3@x"}},
		// SIEVE with every entry visited clears all bits and evicts the oldest.
		{name: "sieve all visited", policy: StoreSIEVE, visit: []string{"p1@x", "p2@x", "p3@x"}, insert: []string{"p4@x"},
			want: []string{"p4@x", "p3@x", "p2@x"}, evicted: []string{"p1@x"}},
		// FIFO ignores visits.
		{name: "fifo", policy: StoreFIFO, visit: []string{"p1@x"}, insert: []string{"p4@x", "p5@x"},
			want: []string{"p5@x", "p4@x", "p3@x"}, evicted: []string{"p1@x", "p2@x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			h := c.addHost("h", hostSpec{cfg: Config{MaxEPPerCtx: 3, EndpointStore: tc.policy}, noReg: true})
			ctx := h.t.ctxs[0]
			made := map[string]*endpoint{}
			get := func(p string) *endpoint {
				ep, err := ctx.store.getOrCreate(p, func() (*endpoint, error) {
					ep, err := newEndpoint(ctx, p)
					made[p] = ep
					return ep, err
				})
				require.NoError(t, err)
				return ep
			}
			for _, p := range []string{"p1@x", "p2@x", "p3@x"} {
				get(p)
			}
			for _, p := range tc.visit {
				get(p)
			}
			for _, p := range tc.insert {
				get(p)
			}
			require.Equal(t, tc.want, ctx.store.paths())
			for _, p := range tc.evicted {
				require.Equal(t, modeEvicted, made[p].mode.Load(), p)
				made[p].mu.Lock()
				require.True(t, made[p].destroyed, "an idle evicted endpoint is destroyed at once")
				made[p].mu.Unlock()
			}
		})
	}
}

// TestEvictionWaitsForWorkInFlight evicts an endpoint while its work is in
// flight: it leaves the store but its QPs live until the work completes
// (the fake fabric records destroying a QP with work in flight as a
// violation, checked at cleanup).
func TestEvictionWaitsForWorkInFlight(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{cfg: Config{MaxEPPerCtx: 1}})
	b, d := c.addHost("b", hostSpec{}), c.addHost("d", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a, b, 0, 64<<10)))
	a.nics[0].DelayCompletions(30 * time.Millisecond)

	g := transportGroup(t, a, b, write(a, b, 0, 4<<20))
	// The endpoint to d evicts the one to b, whose work is in flight.
	fill(a.mem[4<<20:5<<20], 13)
	requireDone(t, a.transfer(t, context.Background(), d, write(a, d, 4<<20, 1<<20)))
	requireEqualBytes(t, a.mem[4<<20:5<<20], d.mem[4<<20:5<<20])
	requireDone(t, g())
	require.Equal(t, []string{"d@mlx5_0"}, a.t.ctxs[0].store.paths())
	require.Eventually(t, func() bool { return len(a.nics[0].QPs()) == 2 }, 5*time.Second, time.Millisecond,
		"the evicted endpoint's QPs are destroyed once drained")
	require.Empty(t, c.fab.Violations())
}
