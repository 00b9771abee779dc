package engine

import (
	"fmt"
	"testing"

	"github.com/pymooncake/pymooncake/core/transport"
)

// Throughput between two engines over loopback, with depth requests of
// block bytes in flight per batch, as transfer_engine_bench does.
func benchThroughput(b *testing.B, op transport.Opcode, block, depth int) {
	p := newPair(b, block*depth, nil, nil)
	reqs := make([]Request, depth)
	for i := range reqs {
		off := i * block
		reqs[i] = Request{Opcode: op, Local: addr(p.local) + uintptr(off), Segment: p.seg, Remote: uint64(addr(p.remote)) + uint64(off), Length: uint64(block)}
	}
	ctx := ctxT(b)
	b.SetBytes(int64(block * depth))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.ini.Transfer(ctx, reqs, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEngineThroughput(b *testing.B) {
	for _, op := range []transport.Opcode{transport.Write, transport.Read} {
		for _, bs := range []int{64 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/%dKiB", op, bs>>10), func(b *testing.B) { benchThroughput(b, op, bs, 32) })
		}
	}
}

// BenchmarkEngineWrite4KLatency is one synchronous 4 KiB write at a time:
// its ns/op is the latency of transfer_sync_write without Python.
func BenchmarkEngineWrite4KLatency(b *testing.B) {
	p := newPair(b, 4096, nil, nil)
	reqs := []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 4096}}
	ctx := ctxT(b)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.ini.Transfer(ctx, reqs, nil); err != nil {
			b.Fatal(err)
		}
	}
}
