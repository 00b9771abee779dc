package metrics

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Report logs Mooncake's periodic summary (MC_TE_METRIC) through log, at
// INFO, every interval until ctx ends: the throughput of the completed
// requests in MB/s (MiB, as Mooncake counts them) and the distribution of
// their latencies over Mooncake's buckets, in Mooncake's words, so that
// what operators grep for is there:
//
//	[Metrics] Transfer Engine Stats (over last 5s): Throughput: 524.50 MB/s | Latency Distribution (count=8392): 0-10μs:58.0%, 50-100μs:39.5%, 100-200μs:2.5%
//
// Buckets holding less than 0.1% are left out. An interval in which no
// request finished logs nothing; the line carries the interval's bytes,
// completed and failed requests as fields too. A nil Set reports nothing.
func (s *Set) Report(ctx context.Context, log *zap.Logger, interval time.Duration) {
	if s == nil || interval <= 0 {
		return
	}
	prev := s.totals()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	log.Info("metrics reporting started (MC_TE_METRIC)", zap.Stringer("interval", interval))
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cur := s.totals()
		d := cur.minus(prev)
		if msg, ok := summary(d, interval); ok {
			log.Info(msg, zap.Uint64("bytes", d.bytes), zap.Uint64("completed", d.completed), zap.Uint64("failed", d.failed))
		}
		prev = cur
	}
}

// totals adds up the figures of every transport and direction.
type totals struct {
	bytes, completed, failed uint64
	latency                  [numLatency]uint64
}

func (s *Set) totals() totals {
	s.mu.Lock()
	xps := make([]*transportStats, 0, len(s.transports))
	for _, x := range s.transports {
		xps = append(xps, x)
	}
	s.mu.Unlock()
	var t totals
	for _, x := range xps {
		for op := range x.dirs {
			d := &x.dirs[op]
			t.bytes += d.bytes.Load()
			for c := range d.failures {
				t.failed += d.failures[c].Load()
			}
			for i := range d.latency.counts {
				n := d.latency.counts[i].Load()
				t.latency[i] += n
				t.completed += n
			}
		}
	}
	return t
}

func (t totals) minus(o totals) totals {
	d := totals{bytes: t.bytes - o.bytes, completed: t.completed - o.completed, failed: t.failed - o.failed}
	for i := range d.latency {
		d.latency[i] = t.latency[i] - o.latency[i]
	}
	return d
}

// summary is Mooncake's line for what happened in one interval, and
// whether there is anything to say.
func summary(d totals, interval time.Duration) (string, bool) {
	if d.bytes == 0 && d.completed == 0 && d.failed == 0 {
		return "", false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[Metrics] Transfer Engine Stats (over last %gs):", interval.Seconds())
	if d.bytes > 0 {
		fmt.Fprintf(&b, " Throughput: %.2f MB/s", float64(d.bytes)/(interval.Seconds()*(1<<20)))
	}
	if d.completed == 0 {
		return b.String(), true
	}
	fmt.Fprintf(&b, " | Latency Distribution (count=%d): ", d.completed)
	first := true
	for i, n := range d.latency {
		pct := float64(n) * 100 / float64(d.completed)
		if n == 0 || pct < 0.1 {
			continue
		}
		if !first {
			b.WriteString(", ")
		}
		first = false
		switch {
		case i == len(latencyBounds):
			fmt.Fprintf(&b, ">%dμs", latencyBounds[i-1])
		case i == 0:
			fmt.Fprintf(&b, "0-%dμs", latencyBounds[0])
		default:
			fmt.Fprintf(&b, "%d-%dμs", latencyBounds[i-1], latencyBounds[i])
		}
		fmt.Fprintf(&b, ":%.1f%%", pct)
	}
	return b.String(), true
}
