package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/stretchr/testify/require"
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

// BenchmarkEngineScattered moves KV-cache-shaped batches between two
// engines over loopback: entries blocks of block bytes, in one synchronous
// batch, spread over regions registered regions per side, the remote slots
// unrelated to the local ones (SGLang and vLLM call this way; see
// python/bench/compare.py --clients for the side-by-side with Mooncake).
func BenchmarkEngineScattered(b *testing.B) {
	for _, c := range []struct {
		name           string
		block, entries int
	}{
		{"2KiBx16384", 2 << 10, 16384},
		{"32KiBx2048", 32 << 10, 2048},
		{"256KiBx256", 256 << 10, 256},
	} {
		for _, op := range []transport.Opcode{transport.Write, transport.Read} {
			b.Run(fmt.Sprintf("%s/%s", op, c.name), func(b *testing.B) { benchScattered(b, op, c.block, c.entries, 32) })
		}
	}
}

func benchScattered(b *testing.B, op transport.Opcode, block, entries, regions int) {
	per := (entries*block + regions - 1) / regions * 2 // room for the slots to be scattered
	per = (per + 4095) &^ 4095
	tgt, ini := newEngine(b, nil), newEngine(b, nil)
	var locals, remotes []uintptr
	for range regions {
		l, r := mmapBuf(b, per), mmapBuf(b, per)
		require.NoError(b, ini.RegisterMemory(addr(l), uint64(per), "*"))
		require.NoError(b, tgt.RegisterMemory(addr(r), uint64(per), "*"))
		locals, remotes = append(locals, addr(l)), append(remotes, addr(r))
	}
	seg, err := ini.OpenSegment(ctxT(b), tgt.Name())
	require.NoError(b, err)
	slotsPer := per / block
	rnd := rand.New(rand.NewPCG(7, 11))
	lslots, rslots := rnd.Perm(regions * slotsPer)[:entries], rnd.Perm(regions * slotsPer)[:entries]
	reqs := make([]Request, entries)
	for i := range reqs {
		ls, rs := lslots[i], rslots[i]
		reqs[i] = Request{Opcode: op, Segment: seg, Length: uint64(block),
			Local:  locals[ls/slotsPer] + uintptr(ls%slotsPer*block),
			Remote: uint64(remotes[rs/slotsPer] + uintptr(rs%slotsPer*block))}
	}
	ctx := ctxT(b)
	require.NoError(b, ini.Transfer(ctx, reqs, nil)) // warm up: connections, descriptors
	b.SetBytes(int64(block * entries))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ini.Transfer(ctx, reqs, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMetricsOverhead is what recording the metrics costs the data
// path: the 4 KiB synchronous write and a 64 KiB x 128 batch, from an
// engine that records and serves its metrics (on) and from one built
// without (off). Run both in one go and compare (docs/benchmarks.md):
//
//	go test -run '^$' -bench MetricsOverhead -count 8 ./core/engine/
func BenchmarkMetricsOverhead(b *testing.B) {
	for _, c := range []struct {
		name         string
		block, depth int
	}{
		{"write4KiB", 4 << 10, 1},
		{"write64KiBx128", 64 << 10, 128},
	} {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/metrics=%v", c.name, map[bool]string{false: "off", true: "on"}[on]), func(b *testing.B) {
				benchMetrics(b, c.block, c.depth, on)
			})
		}
	}
}

func benchMetrics(b *testing.B, block, depth int, on bool) {
	te := testEngine{noMetrics: !on}
	if on {
		te.env = metricsOn
	}
	ini := te.mustStart(b)
	tgt := newEngine(b, nil)
	local, remote := mmapBuf(b, block*depth), mmapBuf(b, block*depth)
	require.NoError(b, ini.RegisterMemory(addr(local), uint64(len(local)), "*"))
	require.NoError(b, tgt.RegisterMemory(addr(remote), uint64(len(remote)), "*"))
	seg, err := ini.OpenSegment(ctxT(b), tgt.Name())
	require.NoError(b, err)
	reqs := make([]Request, depth)
	for i := range reqs {
		off := i * block
		reqs[i] = Request{Opcode: transport.Write, Local: addr(local) + uintptr(off), Segment: seg, Remote: uint64(addr(remote)) + uint64(off), Length: uint64(block)}
	}
	ctx := ctxT(b)
	require.NoError(b, ini.Transfer(ctx, reqs, nil)) // warm up: connections
	b.SetBytes(int64(block * depth))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ini.Transfer(ctx, reqs, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if on {
		require.Equal(b, uint64(b.N+1)*uint64(block*depth), ini.Metrics().Transports["tcp"].Write.Bytes, "every byte recorded")
	} else {
		require.Empty(b, ini.Metrics().Transports)
	}
}
