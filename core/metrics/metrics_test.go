package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

func TestSizeBucket(t *testing.T) {
	// The bucket is the first bound the size does not exceed, as a search
	// would find it.
	search := func(n uint64) int {
		for i, b := range sizeBounds {
			if n <= b {
				return i
			}
		}
		return numSize - 1
	}
	require.Equal(t, uint64(1<<30), sizeBounds[len(sizeBounds)-1], "TENT's buckets end at 1 GiB")
	for _, n := range []uint64{0, 1, 1023, 1024, 1025, 4095, 4096, 4097, 65536, 65537, 1 << 20, 1<<30 - 1, 1 << 30, 1<<30 + 1, 1 << 40, ^uint64(0)} {
		require.Equal(t, search(n), sizeBucket(n), "size %d", n)
	}
}

func TestLatencyBucket(t *testing.T) {
	for us, want := range map[uint64]int{0: 0, 10: 0, 11: 1, 100: 3, 101: 4, 10_000_000: 18, 10_000_001: 19} {
		require.Equal(t, want, latencyBucket(us), "%d us", us)
	}
	for _, b := range []uint64{100, 500, 1000, 5000, 10000, 50000, 100000, 500000, 1000000} {
		require.Contains(t, latencyBounds, b, "TENT's latency bound %d is one of ours", b)
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestCauseOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Cause
	}{
		{"rejected", fmt.Errorf("task 3: %w", transport.ErrRejected), CauseRejected},
		{"peer", fmt.Errorf("dial: %w", transport.ErrPeer), CausePeer},
		{"deadline", fmt.Errorf("transfer: %w", context.DeadlineExceeded), CauseTimeout},
		{"deadline over a failed connection", errors.Join(transport.ErrPeer, context.DeadlineExceeded), CauseTimeout},
		{"socket timeout", &net.OpError{Op: "read", Err: timeoutErr{}}, CauseTimeout},
		{"closed", fmt.Errorf("peer dropped: %w", transport.ErrClosed), CauseClosed},
		{"cancelled", context.Canceled, CauseClosed},
		{"other", errors.New("staging copy failed"), CauseOther},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, CauseOf(tc.err))
		})
	}
}

func TestNilSetRecordsNothing(t *testing.T) {
	var s *Set
	l := s.Link("p", "tcp")
	require.Nil(t, l)
	var tl Tally
	tl.Completed(transport.Write, 10)
	l.Add(&tl, time.Millisecond)
	s.Retry(RetryPeer)
	s.Recovered(RecoveryDropped)
	s.Failover("rdma", "tcp")
	snap := s.Snapshot()
	require.Empty(t, snap.Transports)
	require.Empty(t, snap.Peers)
	s.Report(context.Background(), zap.NewNop(), time.Millisecond) // returns at once
}

func TestRecording(t *testing.T) {
	s := New(Config{State: func() State {
		return State{BatchesInFlight: 2, NotifiesQueued: 1, Registered: map[string]uint64{"cpu": 4096, "cuda:0": 1 << 20},
			Peers: []PeerState{{Name: "a", Transport: "tcp", Conns: 3}}}
	}})
	l := s.Link("a", "tcp")
	require.Same(t, l, s.Link("a", "tcp"), "one Link per peer and transport")
	var tl Tally
	tl.Completed(transport.Write, 4096)
	tl.Completed(transport.Write, 65536)
	tl.Completed(transport.Read, 100)
	tl.Failed(transport.Write, transport.ErrRejected)
	tl.Failed(transport.Read, context.DeadlineExceeded)
	l.Add(&tl, 150*time.Microsecond)
	s.Retry(RetryRestarted)
	s.Recovered(RecoveryDropped)
	s.Failover("rdma", "tcp")

	snap := s.Snapshot()
	w := snap.Transports["tcp"].Write
	require.Equal(t, uint64(4096+65536), w.Bytes)
	require.Equal(t, uint64(3), w.Requests)
	require.Equal(t, uint64(1), w.Failures["rejected"])
	require.Equal(t, uint64(1), w.Failed())
	require.Equal(t, uint64(2), w.LatencyUs.Count)
	require.Equal(t, uint64(2), w.LatencyUs.Counts[latencyBucket(150)])
	require.Equal(t, uint64(300), w.LatencyUs.Sum)
	require.Equal(t, uint64(1), w.SizeBytes.Counts[sizeBucket(4096)])
	require.Equal(t, uint64(1), w.SizeBytes.Counts[sizeBucket(65536)])
	r := snap.Transports["tcp"].Read
	require.Equal(t, uint64(100), r.Bytes)
	require.Equal(t, uint64(2), r.Requests)
	require.Equal(t, uint64(1), r.Failures["timeout"])
	p := snap.Peers["a"]
	require.Equal(t, uint64(4096+65536), p.WriteBytes)
	require.Equal(t, uint64(100), p.ReadBytes)
	require.Equal(t, uint64(3), p.WriteRequests)
	require.Equal(t, uint64(2), p.ReadRequests)
	require.Equal(t, uint64(2), p.Failures)
	require.Equal(t, map[string]int{"tcp": 1}, p.Open)
	require.Equal(t, map[string]int{"tcp": 3}, p.Connections)
	require.Equal(t, []Failover{{From: "rdma", To: "tcp", Count: 1}}, snap.Failovers)
	require.Equal(t, uint64(1), snap.Retries["restarted"])
	require.Equal(t, uint64(1), snap.Recoveries["dropped"])
	require.Equal(t, 2, snap.BatchesInFlight)
	require.Equal(t, 1, snap.NotifiesQueued)
	require.Equal(t, uint64(1<<20), snap.RegisteredBytes["cuda:0"])

	// Queued requests (latency unknown) count, but no latency.
	var q Tally
	q.Completed(transport.Write, 10)
	l.Add(&q, -1)
	w = s.Snapshot().Transports["tcp"].Write
	require.Equal(t, uint64(4), w.Requests)
	require.Equal(t, uint64(2), w.LatencyUs.Count)
	require.Equal(t, uint64(3), w.SizeBytes.Count)
}

// gather scrapes s's registry in the text format and parses it back.
func gather(t *testing.T, s *Set) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := s.Registry().Gather()
	require.NoError(t, err)
	var buf bytes.Buffer
	for _, mf := range mfs {
		_, err := expfmt.MetricFamilyToText(&buf, mf)
		require.NoError(t, err)
	}
	return parseText(t, &buf)
}

func parseText(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	out, err := p.TextToMetricFamilies(r)
	require.NoError(t, err)
	return out
}

// value is the value of the series of family name with labels.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	require.True(t, ok, "no family %s", name)
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// peerLabels lists the peer label values of a family.
func peerLabels(mfs map[string]*dto.MetricFamily, name string) []string {
	var out []string
	for _, m := range mfs[name].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "peer" {
				out = append(out, lp.GetValue())
			}
		}
	}
	return out
}

func TestCollectorText(t *testing.T) {
	s := New(Config{State: func() State {
		return State{Registered: map[string]uint64{"cpu": 4096}, Peers: []PeerState{{Name: "a", Transport: "tcp", Conns: -1}}}
	}})
	var tl Tally
	for range 5 {
		tl.Completed(transport.Write, 1<<20)
	}
	tl.Failed(transport.Write, transport.ErrPeer)
	s.Link("a", "tcp").Add(&tl, 3*time.Millisecond)

	mfs := gather(t, s)
	tcp := map[string]string{"transport": "tcp"}
	require.Equal(t, float64(5<<20), value(t, mfs, "pymooncake_write_bytes_total", tcp))
	require.Equal(t, float64(6), value(t, mfs, "pymooncake_write_requests_total", tcp))
	require.Equal(t, float64(1), value(t, mfs, "pymooncake_write_failures_total", map[string]string{"transport": "tcp", "cause": "peer"}))
	require.Equal(t, float64(0), value(t, mfs, "pymooncake_write_failures_total", map[string]string{"transport": "tcp", "cause": "timeout"}))
	require.Equal(t, float64(5), value(t, mfs, "pymooncake_write_latency_us", tcp))
	require.Equal(t, float64(0), value(t, mfs, "pymooncake_read_bytes_total", tcp))
	require.Equal(t, float64(5<<20), value(t, mfs, "pymooncake_peer_write_bytes_total", map[string]string{"peer": "a"}))
	require.Equal(t, float64(1), value(t, mfs, "pymooncake_peer_transport", map[string]string{"peer": "a", "transport": "tcp"}))
	require.NotContains(t, mfs, "pymooncake_peer_connections", "tcp-less transports count no connections here")
	require.Equal(t, float64(4096), value(t, mfs, "pymooncake_registered_bytes", map[string]string{"location": "cpu"}))
	require.Equal(t, float64(0), value(t, mfs, "pymooncake_batches_in_flight", nil))

	h := mfs["pymooncake_write_latency_us"].GetMetric()[0].GetHistogram()
	require.Equal(t, float64(15000), h.GetSampleSum())
	for _, b := range h.GetBucket() {
		want := uint64(0)
		if b.GetUpperBound() >= 5000 {
			want = 5 // 3 ms is in the 2000-5000 µs bucket
		}
		require.Equal(t, want, b.GetCumulativeCount(), "le=%v", b.GetUpperBound())
	}
}

// Peers beyond the limit share the label "other", however many they are.
func TestPeerLabelsBounded(t *testing.T) {
	s := New(Config{MaxPeers: 2})
	for i := range 1000 {
		var tl Tally
		tl.Completed(transport.Read, 1)
		s.Link(fmt.Sprintf("10.0.0.%d:1234", i), "tcp").Add(&tl, time.Microsecond)
	}
	require.Same(t, s.Link("late", "tcp"), s.Link("later", "tcp"))
	require.Same(t, s.Link("10.0.0.1:1234", "tcp"), s.Link("10.0.0.1:1234", "tcp"))
	snap := s.Snapshot()
	require.Len(t, snap.Peers, 3)
	require.Equal(t, uint64(998), snap.Peers[OtherPeer].ReadBytes)
	require.Equal(t, uint64(1000), snap.Transports["tcp"].Read.Bytes)
	mfs := gather(t, s)
	require.ElementsMatch(t, []string{"10.0.0.0:1234", "10.0.0.1:1234", OtherPeer}, peerLabels(mfs, "pymooncake_peer_read_bytes_total"))

	// A peer literally named "other" does not take a label of its own.
	s = New(Config{MaxPeers: 2})
	s.Link(OtherPeer, "tcp")
	s.Link("a", "tcp")
	s.Link("b", "tcp")
	require.Len(t, s.Snapshot().Peers, 3)
}

// Labels of released peers (their segments closed) go to new peers, the
// oldest released first; a peer back before that keeps its label and
// figures; with none released, new peers are "other".
func TestReleasedPeerLabelsAreReused(t *testing.T) {
	s := New(Config{MaxPeers: 2})
	read := func(peer string) *Link {
		var tl Tally
		tl.Completed(transport.Read, 10)
		l := s.Link(peer, "tcp")
		l.Add(&tl, time.Microsecond)
		return l
	}
	labels := func() []string { return peerLabels(gather(t, s), "pymooncake_peer_read_bytes_total") }
	a, b := read("a"), read("b")
	read("c")
	require.ElementsMatch(t, []string{"a", "b", OtherPeer}, labels())

	s.Release("b")
	s.Release("a")
	s.Release("c") // an "other" peer holds no label to give
	s.Release(OtherPeer)
	require.Same(t, a, s.Link("a", "tcp"), "a came back before its label went")
	read("d")
	require.ElementsMatch(t, []string{"a", "d", OtherPeer}, labels(), "d took b's label, the one released")
	snap := s.Snapshot()
	require.Equal(t, uint64(10), snap.Peers["d"].ReadBytes, "d starts from zero")
	require.Equal(t, uint64(10), snap.Peers[OtherPeer].ReadBytes)
	require.NotSame(t, b, s.Link("b", "tcp"), "b is back as \"other\"")
	require.Equal(t, OtherPeer, s.label("b"))
	require.Equal(t, uint64(40), snap.Transports["tcp"].Read.Bytes, "the transport's figures keep everything")

	// Released twice, evicted once; then nothing more to take.
	s.Release("a")
	s.Release("a")
	read("e")
	read("f")
	require.ElementsMatch(t, []string{"d", "e", OtherPeer}, labels())
}

func TestSummaryLine(t *testing.T) {
	var d totals
	d.bytes = 10 << 20
	d.latency[0], d.latency[3], d.latency[19] = 58, 41, 1
	d.completed = 100
	msg, ok := summary(d, 2*time.Second)
	require.True(t, ok)
	require.Equal(t, "[Metrics] Transfer Engine Stats (over last 2s): Throughput: 5.00 MB/s | Latency Distribution (count=100): 0-10μs:58.0%, 50-100μs:41.0%, >10000000μs:1.0%", msg)

	d = totals{completed: 10000}
	d.latency[4], d.latency[5] = 9995, 5
	msg, ok = summary(d, time.Second)
	require.True(t, ok)
	require.Equal(t, "[Metrics] Transfer Engine Stats (over last 1s): | Latency Distribution (count=10000): 100-200μs:100.0%", msg, "buckets under 0.1% are left out")

	_, ok = summary(totals{}, time.Second)
	require.False(t, ok, "an idle interval logs nothing")
}

func TestReportLogsEachInterval(t *testing.T) {
	testutil.ResourceCheck(t)
	s := New(Config{})
	core, logs := observer.New(zapcore.InfoLevel)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Report(ctx, zap.New(core), 20*time.Millisecond)
	}()
	t.Cleanup(func() { cancel(); <-done })
	// What happened before reporting started is not an interval's.
	require.Eventually(t, func() bool { return logs.FilterMessageSnippet("reporting started").Len() == 1 }, 5*time.Second, time.Millisecond)
	var tl Tally
	tl.Completed(transport.Write, 1<<20)
	s.Link("a", "tcp").Add(&tl, 70*time.Microsecond)
	require.Eventually(t, func() bool {
		return logs.FilterMessageSnippet("[Metrics] Transfer Engine Stats").Len() > 0
	}, 5*time.Second, 5*time.Millisecond)
	e := logs.FilterMessageSnippet("[Metrics] Transfer Engine Stats").All()[0]
	require.Contains(t, e.Message, "Latency Distribution (count=1): 50-100μs:100.0%")
	require.Equal(t, uint64(1<<20), e.ContextMap()["bytes"])
	n := logs.FilterMessageSnippet("[Metrics]").Len()
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, n, logs.FilterMessageSnippet("[Metrics]").Len(), "idle intervals log nothing")
}

func TestServerServesAndCloses(t *testing.T) {
	testutil.ResourceCheck(t)
	s := New(Config{})
	var tl Tally
	tl.Completed(transport.Read, 512)
	s.Link("a", "tcp").Add(&tl, time.Millisecond)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sv := Serve(ln, s, zap.NewNop())
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	resp, err := client.Get("http://" + sv.Addr() + "/metrics")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	mfs := parseText(t, resp.Body)
	resp.Body.Close()
	require.Equal(t, float64(512), value(t, mfs, "pymooncake_read_bytes_total", map[string]string{"transport": "tcp"}))
	require.NotContains(t, mfs, "go_goroutines", "the registry is the engine's own")

	resp, err = client.Get("http://" + sv.Addr() + "/metrics/json")
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.True(t, strings.Contains(string(b), `"read":{"bytes":512`), string(b))

	require.NoError(t, sv.Close())
	require.NoError(t, sv.Close(), "idempotent")
	_, err = client.Get("http://" + sv.Addr() + "/metrics")
	require.Error(t, err, "the listener is closed")
}
