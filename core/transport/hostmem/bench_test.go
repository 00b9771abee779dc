//go:build linux

package hostmem

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/transport"
)

// benchPair is an initiator and a target transport in this process, each
// with a registered buffer of size bytes.
func benchPair(b *testing.B, mode Mode, size int) (*node, transport.Peer, []byte, []byte) {
	tgt, ini := newNode(b, Config{}), newNode(b, Config{Mode: mode})
	remote, local := testutil.Mmap(b, size), testutil.Mmap(b, size)
	tgt.register(b, remote, memory.Host)
	ini.register(b, local, memory.Host)
	return ini, tgt.peer("target"), local, remote
}

// submitWait runs tasks (already Init'ed) through x and waits.
func submitWait(b *testing.B, x transport.Transport, pe transport.Peer, g *transport.Group, tasks []*transport.Task, sync bool) {
	g.Add(len(tasks))
	x.Submit(context.Background(), pe, tasks, transport.SubmitOptions{Sync: sync})
	if err := g.Wait(context.Background()); err != nil || g.Failed() > 0 {
		b.Fatalf("wait: %v, %d failed", err, g.Failed())
	}
}

// BenchmarkWrite4KSync is one synchronous 4 KiB write at a time: the
// latency of a one-entry batch_transfer_sync_write below Python.
func BenchmarkWrite4KSync(b *testing.B) {
	for _, mode := range []Mode{Auto, RingOnly} {
		b.Run(map[Mode]string{Auto: "cma", RingOnly: "shm"}[mode], func(b *testing.B) {
			ini, pe, local, remote := benchPair(b, mode, 1<<20)
			task := &transport.Task{}
			req := transport.Request{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: 4096}
			b.ReportAllocs()
			b.SetBytes(4096)
			for b.Loop() {
				g := transport.NewGroup()
				task.Init(req, g)
				submitWait(b, ini.t, pe, g, []*transport.Task{task}, true)
			}
		})
	}
}

// BenchmarkThroughput moves batches: contiguous blocks of 64 KiB and 1 MiB,
// and scattered 2 KiB and 32 KiB pages to random remote slots (the client
// patterns), synchronously, in both directions.
func BenchmarkThroughput(b *testing.B) {
	const size = 64 << 20
	for _, mode := range []Mode{Auto, RingOnly} {
		for _, c := range []struct {
			name      string
			block, n  int
			scattered bool
		}{
			{"64KiBx128", 64 << 10, 128, false},
			{"1MiBx32", 1 << 20, 32, false},
			{"2KiBx8056-scattered", 2 << 10, 8056, true},
			{"32KiBx1007-scattered", 32 << 10, 1007, true},
		} {
			for _, op := range []transport.Opcode{transport.Write, transport.Read} {
				name := fmt.Sprintf("%s/%s/%s", map[Mode]string{Auto: "cma", RingOnly: "shm"}[mode], c.name, op)
				b.Run(name, func(b *testing.B) {
					ini, pe, local, remote := benchPair(b, mode, size)
					// Scattered as a KV cache's pages are: 1,007 random
					// slots out of each 2,048 (a layer's region), in
					// random order.
					r := rand.New(rand.NewPCG(1, 1))
					var slots []int
					for w := 0; len(slots) < c.n; w++ {
						for _, s := range r.Perm(2048)[:1007] {
							slots = append(slots, w*2048+s)
						}
					}
					g := transport.NewGroup()
					tasks := make([]*transport.Task, c.n)
					reqs := make([]transport.Request, c.n)
					for i := range tasks {
						tasks[i] = &transport.Task{}
						rs := i
						if c.scattered {
							rs = slots[i]
						}
						reqs[i] = transport.Request{Opcode: op, Local: addrOf(local) + uintptr(i*c.block),
							Remote: uint64(addrOf(remote)) + uint64(rs*c.block), Length: uint64(c.block)}
					}
					b.SetBytes(int64(c.block * c.n))
					for b.Loop() {
						for i, t := range tasks {
							t.Init(reqs[i], g)
						}
						submitWait(b, ini.t, pe, g, tasks, true)
					}
				})
			}
		}
	}
}
