package engine

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/pymooncake/pymooncake/core/batch"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
)

// The engine records its metrics where requests end: when a batch is
// freed (FreeBatch; every batch the engine runs is freed once its tasks
// have finished: synchronous transfers at once, asynchronous ones when
// they are polled or waited for, abandoned ones once they stopped), its
// tasks' outcomes are tallied per run of tasks to one peer and added to
// that peer's and its transport's counters, with the time since the run
// was submitted as its latency (Mooncake's "submission to first
// observation"). Each segment carries its peer's metrics.Link, resolved
// when the segment is opened, so nothing is looked up per request.

// startMetrics serves the metrics endpoint (Env.MetricsAddr) and starts
// Mooncake's periodic summary (Env.MetricsReport), as configured.
func (e *Engine) startMetrics() error {
	env := e.cfg.Env
	if e.metrics == nil {
		if env.MetricsAddr != "" || env.MetricsReport {
			return fmt.Errorf("metrics endpoint or report asked for by an engine without metrics: %w", ErrInvalidArgument)
		}
		return nil
	}
	if env.MetricsAddr != "" {
		ln, err := net.Listen("tcp", env.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics endpoint (PYMOONCAKE_METRICS_PORT, PYMOONCAKE_METRICS_HOST): %w", err)
		}
		e.metricsSrv = metrics.Serve(ln, e.metrics, e.log.Named("metrics"))
	}
	if env.MetricsReport {
		interval := env.MetricsInterval
		if interval <= 0 {
			interval = 5 * time.Second
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.metrics.Report(e.ctx, e.log, interval)
		}()
	}
	return nil
}

// Metrics returns the engine's figures (empty with Config.NoMetrics), and
// where they are served.
func (e *Engine) Metrics() metrics.Snapshot {
	s := e.metrics.Snapshot()
	s.Endpoint = e.MetricsAddr()
	return s
}

// MetricsAddr is the address of the metrics endpoint, or "" when the
// engine serves none.
func (e *Engine) MetricsAddr() string {
	if e.metricsSrv == nil {
		return ""
	}
	return e.metricsSrv.Addr()
}

// runs attributes the requests of one submit, segment by segment, in
// order, as the engine hands them to the transports: a run per stretch
// of requests to the same segment. buf is where they go when few.
func runs(buf []batch.Run, segs []*segment.Segment, start int64) []batch.Run {
	out := buf[:0]
	first := 0
	for i := 1; i <= len(segs); i++ {
		if i == len(segs) || segs[i] != segs[first] {
			out = append(out, batch.Run{Tasks: i - first, Link: segs[first].Link, Start: start})
			first = i
		}
	}
	return out
}

// record adds the outcomes of a freed batch's tasks to the metrics.
func (e *Engine) record(b *batch.Batch) {
	if e.metrics == nil {
		return
	}
	tasks, rs := b.Runs()
	now := metrics.Now()
	i := 0
	for _, r := range rs {
		ts := tasks[i : i+r.Tasks]
		i += r.Tasks
		if r.Link == nil {
			continue
		}
		var t metrics.Tally
		for _, task := range ts {
			switch task.Status() {
			case transport.Completed:
				t.Completed(task.Opcode, task.Transferred())
			case transport.Failed:
				t.Failed(task.Opcode, task.Err())
			}
		}
		r.Link.Add(&t, time.Duration(now-r.Start))
	}
}

// recordQueued records requests queued on a CUDA stream by a
// transport.StreamSubmitter: they count when queued, without a latency
// (the engine does not see them end).
func (e *Engine) recordQueued(s *segment.Segment, reqs []transport.Request) {
	if s.Link == nil {
		return
	}
	var t metrics.Tally
	for _, r := range reqs {
		t.Completed(r.Opcode, r.Length)
	}
	s.Link.Add(&t, -1)
}

// metricsState is what the engine holds, for the metrics when they are
// read.
func (e *Engine) metricsState() metrics.State {
	st := metrics.State{
		BatchesInFlight: e.batches.Len(),
		NotifiesQueued:  e.notifies.len(),
		Registered:      map[string]uint64{},
	}
	for _, r := range e.mem.Regions() {
		loc := "cpu"
		if r.Device != memory.Host {
			loc = "cuda:" + strconv.Itoa(r.Device)
		}
		st.Registered[loc] += r.Length
	}
	seen := map[[2]string]bool{}
	for _, s := range e.segs.All() {
		key := [2]string{s.Peer.Name, s.Transport.Name()}
		if seen[key] {
			continue // opened under several names
		}
		seen[key] = true
		conns := -1
		if cc, ok := s.Transport.(transport.ConnCounter); ok {
			conns = cc.PeerConns(s.Peer.Name)
		}
		st.Peers = append(st.Peers, metrics.PeerState{Name: s.Peer.Name, Transport: s.Transport.Name(), Conns: conns})
	}
	return st
}
