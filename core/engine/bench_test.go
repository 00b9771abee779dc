package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/batch"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metrics"
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
		l, r := testutil.Mmap(b, per), testutil.Mmap(b, per)
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

// metricsCases are the transfers the cost of the metrics is measured on.
var metricsCases = []struct {
	name         string
	block, depth int
}{
	{"write4KiB", 4 << 10, 1},
	{"write64KiBx128", 64 << 10, 128},
}

// BenchmarkMetricsOverhead is what recording the metrics costs the data
// path: the 4 KiB synchronous write and a 64 KiB x 128 batch, from an
// engine that records and serves its metrics (on) and from one built
// without (off), with their allocations. The paired benchmark below
// compares their times under the same load. Run both in one go
// (docs/benchmarks.md):
//
//	go test -run '^$' -bench MetricsOverhead -count 8 ./core/engine/
func BenchmarkMetricsOverhead(b *testing.B) {
	for _, c := range metricsCases {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/metrics=%v", c.name, map[bool]string{false: "off", true: "on"}[on]), func(b *testing.B) {
				t := newMetricsBench(b, c.block, c.depth, on)
				b.SetBytes(int64(c.block * c.depth))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t.transfer(b)
				}
				b.StopTimer()
				t.check(b, b.N)
			})
		}
	}
}

// BenchmarkMetricsOverheadPaired measures the same engines with recording
// on and off, alternating chunks of transfers, so that both see the same
// load (on a shared machine the load changes more from one second to the
// next than recording costs, and two pairs of engines differ by more than
// it too). It reports the time per transfer of each, and the overhead: the
// median over chunks of on's time over off's, in percent.
func BenchmarkMetricsOverheadPaired(b *testing.B) {
	for _, c := range metricsCases {
		b.Run(c.name, func(b *testing.B) {
			t := newMetricsBench(b, c.block, c.depth, true)
			set := t.ini.metrics
			// The engine reads its metrics only on the goroutine that
			// transfers (the endpoint keeps its own reference), so turning
			// recording off between transfers is safe here.
			record := func(on bool) {
				t.ini.metrics = nil
				if on {
					t.ini.metrics = set
				}
			}
			defer record(true)
			chunk := max(1, (1<<20)/(c.block*c.depth)) // about 1 MiB per side and chunk
			ratios := make([]float64, 0, b.N/chunk+1)
			var total [2]time.Duration // off, on
			b.SetBytes(int64(2 * c.block * c.depth))
			b.ResetTimer()
			for i := 0; i < b.N; i += chunk {
				n := min(chunk, b.N-i)
				var d [2]time.Duration
				for k := range 2 {
					if i/chunk%2 == 1 {
						k = 1 - k // alternate which goes first
					}
					record(k == 1)
					start := time.Now()
					for range n {
						t.transfer(b)
					}
					d[k] = time.Since(start)
				}
				total[0], total[1] = total[0]+d[0], total[1]+d[1]
				ratios = append(ratios, float64(d[1])/float64(d[0]))
			}
			b.StopTimer()
			record(true)
			t.check(b, b.N)
			slices.Sort(ratios)
			b.ReportMetric(float64(total[0].Nanoseconds())/float64(b.N), "off-ns/op")
			b.ReportMetric(float64(total[1].Nanoseconds())/float64(b.N), "on-ns/op")
			b.ReportMetric(100*(ratios[len(ratios)/2]-1), "overhead-%")
		})
	}
}

// metricsBench is an initiator, with or without metrics, and a target.
type metricsBench struct {
	ini        *Engine
	reqs       []Request
	on         bool
	ctx        context.Context
	block, all int
}

func newMetricsBench(b *testing.B, block, depth int, on bool) *metricsBench {
	te := testEngine{noMetrics: !on}
	if on {
		te.env = metricsOn
	}
	ini := te.mustStart(b)
	tgt := newEngine(b, nil)
	local, remote := testutil.Mmap(b, block*depth), testutil.Mmap(b, block*depth)
	require.NoError(b, ini.RegisterMemory(addr(local), uint64(len(local)), "*"))
	require.NoError(b, tgt.RegisterMemory(addr(remote), uint64(len(remote)), "*"))
	seg, err := ini.OpenSegment(ctxT(b), tgt.Name())
	require.NoError(b, err)
	t := &metricsBench{ini: ini, reqs: make([]Request, depth), on: on, ctx: ctxT(b), block: block, all: block * depth}
	for i := range t.reqs {
		off := i * block
		t.reqs[i] = Request{Opcode: transport.Write, Local: addr(local) + uintptr(off), Segment: seg, Remote: uint64(addr(remote)) + uint64(off), Length: uint64(block)}
	}
	t.transfer(b) // warm up: connections
	return t
}

func (t *metricsBench) transfer(b *testing.B) {
	if err := t.ini.Transfer(t.ctx, t.reqs, nil); err != nil {
		b.Fatal(err)
	}
}

// check makes sure the engine recorded every byte (or, off, nothing) of
// the warm-up and n transfers.
func (t *metricsBench) check(b *testing.B, n int) {
	if t.on {
		require.Equal(b, uint64(n+1)*uint64(t.all), t.ini.Metrics().Transports["tcp"].Write.Bytes, "every byte recorded")
	} else {
		require.Empty(b, t.ini.Metrics().Transports)
	}
}

// BenchmarkRecordBatch is the recording itself, without the transfer:
// the outcomes of a finished 128-task batch tallied and added to the
// counters, as FreeBatch does.
func BenchmarkRecordBatch(b *testing.B) {
	e := &Engine{metrics: metrics.New(metrics.Config{})}
	link := e.metrics.Link("peer", "tcp")
	var table batch.Table
	bt, err := table.Alloc(128)
	require.NoError(b, err)
	reqs := make([]transport.Request, 128)
	for i := range reqs {
		reqs[i] = transport.Request{Opcode: transport.Write, Length: 64 << 10}
	}
	tasks, err := bt.Add(reqs, nil, []batch.Run{{Tasks: 128, Link: link, Start: metrics.Now()}})
	require.NoError(b, err)
	for _, t := range tasks {
		t.Start(1)
		t.PartDone(64<<10, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e.record(bt)
	}
	b.StopTimer()
	require.Equal(b, uint64(b.N)*128*64<<10, e.Metrics().Transports["tcp"].Write.Bytes)
}

// BenchmarkEngineRegister is register_memory + unregister_memory of one
// 4 KiB region without Python, and unregistering 2,048 registered regions
// one at a time, as a KV connector's shutdown does (ns/op is per region).
func BenchmarkEngineRegister(b *testing.B) {
	for _, sameHost := range []string{"0", "1"} {
		b.Run("pair/samehost="+sameHost, func(b *testing.B) {
			e := newEngine(b, map[string]string{"PYMOONCAKE_SAME_HOST": sameHost})
			buf := testutil.Mmap(b, 4096)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := e.RegisterMemory(addr(buf), 4096, "*"); err != nil {
					b.Fatal(err)
				}
				if err := e.UnregisterMemory(addr(buf)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("unregister2048/samehost="+sameHost, func(b *testing.B) {
			const n = 2048
			e := newEngine(b, map[string]string{"PYMOONCAKE_SAME_HOST": sameHost})
			buf := testutil.Mmap(b, n*4096)
			b.ReportAllocs()
			for i := 0; i < b.N; i += n {
				b.StopTimer()
				for j := 0; j < n; j++ {
					if err := e.RegisterMemory(addr(buf)+uintptr(j*4096), 4096, "*"); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				for j := 0; j < n && i+j < b.N; j++ {
					if err := e.UnregisterMemory(addr(buf) + uintptr(j*4096)); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				for j := 0; j < n; j++ {
					_ = e.UnregisterMemory(addr(buf) + uintptr(j*4096)) // those past b.N
				}
				b.StartTimer()
			}
		})
	}
}
