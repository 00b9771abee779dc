//go:build cgo && linux

package barex

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

const xferSize = 4_096_000 // Mooncake's transfer test size

// TestTwoEngines is Mooncake's two-engine test on the fake shim: 10
// writes then 10 reads of 4,096,000 bytes, each checked, with ports
// exchanged over real handshake servers. Registrations are cut in 256 KiB
// chunks on one side and 160 KiB on the other, so pieces span chunks on
// both sides (1:2, 2:1, 2:2 and N-way).
func TestTwoEngines(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	c.rpc = true
	a := c.addHost("10.0.0.1:15000", hostSpec{mem: 2 * xferSize, cfg: Config{RegChunkSize: 256 << 10}})
	b := c.addHost("10.0.0.2:15000", hostSpec{mem: 2 * xferSize, cfg: Config{RegChunkSize: 160 << 10}})
	for i := range 10 {
		fill(a.mem[:xferSize], uint64(i))
		requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(1000+i), xferSize)))
		requireEqualBytes(t, a.mem[:xferSize], b.mem[1000+i:1000+i+xferSize])
	}
	for i := range 10 {
		fill(b.mem[:xferSize], uint64(100+i))
		requireDone(t, a.transfer(t, context.Background(), b, read(a.addr(xferSize-7*i), b.addr(0), xferSize)))
		requireEqualBytes(t, b.mem[:xferSize], a.mem[xferSize-7*i:2*xferSize-7*i])
	}
	require.NoError(t, a.t.PeerHealth(b.name))
	require.Equal(t, 1, c.handshakeCount(b.name), "one barex_port exchange per peer")
}

// TestBatchAndAsync: one Submit of many tasks (a batch), and several
// Submits in flight at once from several goroutines (async), each task's
// bytes checked; a zero-length task completes at once.
func TestBatchAndAsync(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	const chunk = 64 << 10
	a := c.addHost("a", hostSpec{mem: 5 << 20, cfg: Config{RegChunkSize: chunk}})
	b := c.addHost("b", hostSpec{mem: 5 << 20, cfg: Config{RegChunkSize: chunk}})
	fill(a.mem, 1)

	// A batch of 64 writes of odd sizes at odd offsets, plus an empty one.
	var reqs []transport.Request
	off := 0
	for i := range 64 {
		n := 1 + (i*7919)%50_000
		reqs = append(reqs, write(a.addr(off), b.addr(off+3), n))
		off += n
	}
	reqs = append(reqs, write(a.addr(0), b.addr(0), 0))
	tasks := a.transfer(t, context.Background(), b, reqs...)
	requireDone(t, tasks)
	requireEqualBytes(t, a.mem[:off], b.mem[3:off+3])

	// Async: 8 goroutines, each with 4 batches in flight before waiting.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := w * (512 << 10)
			var groups []*transport.Group
			var all []*transport.Task
			for k := range 4 {
				lo := base + k*(128<<10)
				ts, g := a.submit(context.Background(), b, read(a.addr(lo), b.addr(lo+5), 128<<10))
				groups = append(groups, g)
				all = append(all, ts...)
			}
			for _, g := range groups {
				if err := g.Wait(context.Background()); err != nil {
					errs <- err
					return
				}
			}
			for _, task := range all {
				if task.Err() != nil {
					errs <- task.Err()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	requireEqualBytes(t, b.mem[5:5+8*(512<<10)], a.mem[:8*(512<<10)])
}
