package tcp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// benchTransfer keeps window requests of size bytes in flight between two
// transports on loopback: two half-windows alternate, so the lanes never
// drain while one half is being waited for.
func benchTransfer(b *testing.B, op transport.Opcode, size, window int) {
	for _, poll := range []struct {
		name   string
		budget time.Duration
	}{{"poll", 0}, {"nopoll", -1}} {
		b.Run(poll.name, func(b *testing.B) { benchTransferPoll(b, op, size, window, poll.budget) })
	}
}

func benchTransferPoll(b *testing.B, op transport.Opcode, size, window int, poll time.Duration) {
	remote := testutil.Mmap(b, window*size)
	local := testutil.Mmap(b, window*size)
	fill(local, 1)
	server := newTransport(b, Config{PollBudget: poll}, remote)
	client := newTransport(b, Config{PollBudget: poll})
	pe := peerOf(server, 2)
	ctx := context.Background()
	half := window / 2
	var groups [2]*transport.Group
	var tasks [2][]*transport.Task
	var reqs [2][]transport.Request
	for k := range groups {
		groups[k] = transport.NewGroup()
		for i := 0; i < half; i++ {
			off := (k*half + i) * size
			reqs[k] = append(reqs[k], transport.Request{Opcode: op, Local: uintptr(addrOf(local[off:])), Remote: addrOf(remote[off:]), Length: uint64(size)})
			tasks[k] = append(tasks[k], &transport.Task{})
		}
	}
	submit := func(k int) {
		for i, task := range tasks[k] {
			task.Init(reqs[k][i], groups[k])
		}
		groups[k].Add(half)
		client.Submit(ctx, pe, tasks[k], transport.SubmitOptions{})
	}
	wait := func(k int) {
		if err := groups[k].Wait(ctx); err != nil || groups[k].Failed() > 0 {
			b.Fatalf("transfer failed: %v %v", err, tasks[k][0].Err())
		}
	}
	// Warm up: dial every lane.
	submit(0)
	wait(0)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	k, busy := 0, [2]bool{}
	for n := 0; n < b.N; n += half {
		if busy[k] {
			wait(k)
		}
		submit(k)
		busy[k] = true
		k ^= 1
	}
	for k := range busy {
		if busy[k] {
			wait(k)
		}
	}
}

func BenchmarkWrite64K(b *testing.B) { benchTransfer(b, transport.Write, 64<<10, 32) }
func BenchmarkWrite1M(b *testing.B)  { benchTransfer(b, transport.Write, 1<<20, 16) }
func BenchmarkRead64K(b *testing.B)  { benchTransfer(b, transport.Read, 64<<10, 32) }
func BenchmarkRead1M(b *testing.B)   { benchTransfer(b, transport.Read, 1<<20, 16) }

// BenchmarkWrite4KLatency runs one 4 KiB v2 write at a time: ns/op is the
// round trip including the ack.
func BenchmarkWrite4KLatency(b *testing.B) {
	remote := testutil.Mmap(b, 4096)
	local := testutil.Mmap(b, 4096)
	server := newTransport(b, Config{}, remote)
	client := newTransport(b, Config{})
	pe := peerOf(server, 2)
	ctx := context.Background()
	g := transport.NewGroup()
	task := &transport.Task{}
	tasks := []*transport.Task{task}
	req := write(local, addrOf(remote))
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		task.Init(req, g)
		g.Add(1)
		client.Submit(ctx, pe, tasks, transport.SubmitOptions{})
		if err := g.Wait(ctx); err != nil || task.Err() != nil {
			b.Fatalf("write failed: %v %v", err, task.Err())
		}
	}
}

// BenchmarkWrite4KSyncLatency is BenchmarkWrite4KLatency for a synchronous
// caller (SubmitOptions.Sync), which runs the exchange on its own
// goroutine, with and without polling.
func BenchmarkWrite4KSyncLatency(b *testing.B) {
	b.Run("poll", func(b *testing.B) { benchSyncLatency(b, 0) })
	b.Run("nopoll", func(b *testing.B) { benchSyncLatency(b, -1) })
}

func benchSyncLatency(b *testing.B, poll time.Duration) {
	remote := testutil.Mmap(b, 4096)
	local := testutil.Mmap(b, 4096)
	server := newTransport(b, Config{PollBudget: poll}, remote)
	client := newTransport(b, Config{PollBudget: poll})
	pe := peerOf(server, 2)
	ctx := context.Background()
	g := transport.NewGroup()
	task := &transport.Task{}
	tasks := []*transport.Task{task}
	req := write(local, addrOf(remote))
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		task.Init(req, g)
		g.Add(1)
		client.Submit(ctx, pe, tasks, transport.SubmitOptions{Sync: true})
		if err := g.Wait(ctx); err != nil || task.Err() != nil {
			b.Fatalf("write failed: %v %v", err, task.Err())
		}
	}
}

// BenchmarkScattered moves batches of blocks scattered on both sides
// (remote slots unrelated to local ones, as KV-cache blocks are), the tasks
// reused from one batch to the next: to a pymooncake peer in scatter-gather
// requests, and to a peer that speaks only Mooncake's framing in pipelined
// plain requests. Allocations per op are the transport's own per batch.
func BenchmarkScattered(b *testing.B) {
	for _, c := range []struct {
		name           string
		block, entries int
	}{{"2KiBx1024", 2 << 10, 1024}, {"32KiBx256", 32 << 10, 256}} {
		for _, op := range []transport.Opcode{transport.Write, transport.Read} {
			for _, sg := range []bool{true, false} {
				name := fmt.Sprintf("%s/%s/plain", c.name, op)
				if sg {
					name = fmt.Sprintf("%s/%s/sg", c.name, op)
				}
				b.Run(name, func(b *testing.B) { benchScattered(b, op, c.block, c.entries, sg) })
			}
		}
	}
}

func benchScattered(b *testing.B, op transport.Opcode, block, entries int, sg bool) {
	remote := testutil.Mmap(b, 2*block*entries)
	local := testutil.Mmap(b, 2*block*entries)
	server := newTransport(b, Config{}, remote)
	client := newTransport(b, Config{}, local)
	pe := withBuffers(peerOf(server, 2), remote)
	if sg {
		pe = sgPeer(server, remote)
	}
	r := rand.New(rand.NewPCG(5, 6))
	reqs := make([]transport.Request, entries)
	ls, rs := r.Perm(2*entries), r.Perm(2*entries)
	for i := range reqs {
		reqs[i] = transport.Request{Opcode: op, Local: uintptr(addrOf(local)) + uintptr(ls[i]*block),
			Remote: addrOf(remote) + uint64(rs[i]*block), Length: uint64(block)}
	}
	g := transport.NewGroup()
	tasks := make([]*transport.Task, entries)
	for i := range tasks {
		tasks[i] = new(transport.Task)
	}
	ctx := context.Background()
	run := func() {
		for i, t := range tasks {
			t.Init(reqs[i], g)
		}
		g.Add(entries)
		client.Submit(ctx, pe, tasks, transport.SubmitOptions{Sync: true})
		if err := g.Wait(ctx); err != nil || g.Failed() > 0 {
			b.Fatalf("transfer failed: %v %v", err, tasks[0].Err())
		}
	}
	run() // connect
	b.SetBytes(int64(block * entries))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		run()
	}
}
