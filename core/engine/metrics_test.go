package engine

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
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
	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/transport"
)

// metricsOn serves an engine's metrics on a free loopback port.
var metricsOn = map[string]string{"PYMOONCAKE_METRICS_PORT": "0", "PYMOONCAKE_METRICS_HOST": "127.0.0.1"}

var scrapeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// scrape reads e's endpoint and parses it as Prometheus does.
func scrape(tb testing.TB, e *Engine) map[string]*dto.MetricFamily {
	tb.Helper()
	mfs, err := scrapeErr(e)
	require.NoError(tb, err)
	return mfs
}

func scrapeErr(e *Engine) (map[string]*dto.MetricFamily, error) {
	resp, err := scrapeClient.Get("http://" + e.MetricsAddr() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("scrape: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// series is the value of family name's series with labels, or -1 if there
// is none.
func series(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
next:
	for _, m := range mfs[name].GetMetric() {
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
	return -1
}

// The endpoint, scraped while transfers run and after, counts exactly the
// bytes and requests moved, by transport and by peer.
func TestMetricsEndpointCountsTransfers(t *testing.T) {
	testutil.ResourceCheck(t)
	const block, depth = 64 << 10, 8
	p := newPair(t, 4<<20, metricsOn, nil)
	require.NotEmpty(t, p.ini.MetricsAddr())
	require.Empty(t, p.tgt.MetricsAddr(), "off unless asked for")
	reqs := make([]Request, depth)
	for i := range reqs {
		reqs[i] = Request{Opcode: transport.Write, Local: addr(p.local) + uintptr(i*block), Segment: p.seg, Remote: uint64(addr(p.remote)) + uint64(i*block), Length: block}
	}

	// Scrape all along: every scrape parses, and the counters only grow.
	stop := make(chan struct{})
	var scrapes atomic.Int64
	var scrapeErrs []error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := 0.0
		for {
			select {
			case <-stop:
				return
			default:
			}
			mfs, err := scrapeErr(p.ini)
			if err == nil {
				if v := series(mfs, "pymooncake_write_bytes_total", map[string]string{"transport": "tcp"}); v < last {
					err = fmt.Errorf("write bytes went from %v to %v", last, v)
				} else {
					last = v
				}
			}
			if err != nil {
				scrapeErrs = append(scrapeErrs, err)
				return
			}
			scrapes.Add(1)
		}
	}()
	const rounds = 50
	for i := 0; i < rounds || scrapes.Load() < 3; i++ {
		require.NoError(t, p.ini.Transfer(ctxT(t), reqs, nil))
		require.Less(t, i, 100000, "no scrape went through")
	}
	close(stop)
	wg.Wait()
	require.Empty(t, scrapeErrs)
	mfs := scrape(t, p.ini)
	writes := series(mfs, "pymooncake_write_requests_total", map[string]string{"transport": "tcp"})
	require.GreaterOrEqual(t, writes, float64(rounds*depth))
	done := int(writes) / depth

	// An asynchronous batch of reads, and a read the target rejects.
	id, err := p.ini.SubmitAsync(p.tgt.Name(), []Request{{Opcode: transport.Read, Local: addr(p.local), Remote: uint64(addr(p.remote)), Length: 1000}})
	require.NoError(t, err)
	require.NoError(t, p.ini.WaitAsync([]BatchID{id}))
	require.NoError(t, p.tgt.UnregisterMemory(addr(p.remote)))
	err = p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Read, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 10}}, nil)
	require.ErrorIs(t, err, transport.ErrRejected)

	mfs = scrape(t, p.ini)
	tcp := map[string]string{"transport": "tcp"}
	peer := map[string]string{"peer": p.tgt.Name()}
	require.Equal(t, float64(done*depth*block), series(mfs, "pymooncake_write_bytes_total", tcp))
	require.Equal(t, float64(done*depth), series(mfs, "pymooncake_write_requests_total", tcp))
	require.Equal(t, float64(done*depth), series(mfs, "pymooncake_write_latency_us", tcp))
	require.Equal(t, float64(done*depth), series(mfs, "pymooncake_write_size_bytes", tcp))
	require.Equal(t, float64(1000), series(mfs, "pymooncake_read_bytes_total", tcp))
	require.Equal(t, float64(2), series(mfs, "pymooncake_read_requests_total", tcp))
	require.Equal(t, float64(1), series(mfs, "pymooncake_read_failures_total", map[string]string{"transport": "tcp", "cause": "rejected"}))
	require.Equal(t, float64(0), series(mfs, "pymooncake_write_failures_total", map[string]string{"transport": "tcp", "cause": "peer"}))
	require.Equal(t, float64(done*depth*block), series(mfs, "pymooncake_peer_write_bytes_total", peer))
	require.Equal(t, float64(1000), series(mfs, "pymooncake_peer_read_bytes_total", peer))
	require.Equal(t, float64(1), series(mfs, "pymooncake_peer_failures_total", peer))
	require.Equal(t, float64(1), series(mfs, "pymooncake_peer_transport", map[string]string{"peer": p.tgt.Name(), "transport": "tcp"}))
	require.GreaterOrEqual(t, series(mfs, "pymooncake_peer_connections", map[string]string{"peer": p.tgt.Name(), "transport": "tcp"}), float64(1))
	require.Equal(t, float64(4<<20), series(mfs, "pymooncake_registered_bytes", map[string]string{"location": "cpu"}))
	require.Equal(t, float64(0), series(mfs, "pymooncake_batches_in_flight", nil))
	require.Equal(t, float64(0), series(mfs, "pymooncake_notifies_queued", nil))

	// Python's get_metrics reads the same figures.
	snap := p.ini.Metrics()
	require.Equal(t, uint64(done*depth*block), snap.Transports["tcp"].Write.Bytes)
	require.Equal(t, uint64(1), snap.Transports["tcp"].Read.Failures["rejected"])
	require.Equal(t, 1, snap.Peers[p.tgt.Name()].Open["tcp"])
	require.Equal(t, p.ini.MetricsAddr(), snap.Endpoint)
}

// Gauges of the engine's state: batches in flight, notifies queued.
func TestMetricsState(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	id, err := p.ini.AllocateBatch(1)
	require.NoError(t, err)
	require.Equal(t, 1, p.ini.Metrics().BatchesInFlight)
	require.NoError(t, p.ini.SendNotify(ctxT(t), p.tgt.Name(), Notify{Name: "n", Msg: "m"}))
	require.Equal(t, 1, p.tgt.Metrics().NotifiesQueued)
	require.Len(t, p.tgt.Notifies(), 1)
	require.Zero(t, p.tgt.Metrics().NotifiesQueued)
	require.NoError(t, p.ini.FreeBatch(id))
	require.Zero(t, p.ini.Metrics().BatchesInFlight)
	require.Equal(t, uint64(1<<20), p.tgt.Metrics().RegisteredBytes["cpu"])
}

// Off by default: no endpoint, no listener, no goroutine; recording goes
// on for get_metrics.
func TestMetricsEndpointOffByDefault(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEngine(t, nil)
	require.Empty(t, e.MetricsAddr())
	require.Nil(t, e.metricsSrv)
	require.NotNil(t, e.metrics)
}

// A port that cannot be bound fails initialize, naming the variable, and
// leaves nothing behind.
func TestMetricsPortInUseFailsInit(t *testing.T) {
	testutil.ResourceCheck(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	require.NoError(t, err)
	_, err = testEngine{env: map[string]string{"PYMOONCAKE_METRICS_PORT": port, "PYMOONCAKE_METRICS_HOST": "127.0.0.1"}}.start(t)
	require.ErrorContains(t, err, "PYMOONCAKE_METRICS_PORT")
	require.ErrorContains(t, err, "address already in use")
}

// Peers beyond PYMOONCAKE_METRICS_MAX_PEERS are counted as "other", until
// a peer with a label of its own is closed.
func TestMetricsPeerLabelsBounded(t *testing.T) {
	testutil.ResourceCheck(t)
	ini := newEngine(t, map[string]string{"PYMOONCAKE_METRICS_MAX_PEERS": "1"})
	local := testutil.Mmap(t, 4096)
	require.NoError(t, ini.RegisterMemory(addr(local), 4096, "*"))
	var names []string
	for range 3 {
		tgt := newEngine(t, nil)
		remote := testutil.Mmap(t, 4096)
		require.NoError(t, tgt.RegisterMemory(addr(remote), 4096, "*"))
		require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 100}}, nil))
		names = append(names, tgt.Name())
	}
	snap := ini.Metrics()
	require.Len(t, snap.Peers, 2)
	require.Equal(t, uint64(100), snap.Peers[names[0]].WriteBytes)
	require.Equal(t, uint64(200), snap.Peers[metrics.OtherPeer].WriteBytes)
	require.Equal(t, 2, snap.Peers[metrics.OtherPeer].Open["tcp"], "two open peers share the label")

	// The first peer's segment closed, its label goes to the next new
	// peer (P2P peers that restart come back under new names).
	h, err := ini.OpenSegment(ctxT(t), names[0])
	require.NoError(t, err)
	require.NoError(t, ini.CloseSegment(h))
	tgt := newEngine(t, nil)
	remote := testutil.Mmap(t, 4096)
	require.NoError(t, tgt.RegisterMemory(addr(remote), 4096, "*"))
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 100}}, nil))
	snap = ini.Metrics()
	require.Len(t, snap.Peers, 2)
	require.NotContains(t, snap.Peers, names[0])
	require.Equal(t, uint64(100), snap.Peers[tgt.Name()].WriteBytes)
	require.Equal(t, uint64(200), snap.Peers[metrics.OtherPeer].WriteBytes)
}

// MC_TE_METRIC=1 logs Mooncake's summary line every interval, through the
// engine's logger; Close stops it.
func TestMooncakeMetricReport(t *testing.T) {
	testutil.ResourceCheck(t)
	core, logs := observer.New(zapcore.InfoLevel)
	ini, err := testEngine{env: map[string]string{"MC_TE_METRIC": "1", "MC_TE_METRIC_INTERVAL_SECONDS": "1"}, log: zap.New(core)}.start(t)
	require.NoError(t, err)
	defer func() { require.NoError(t, ini.Close()) }()
	tgt := newEngine(t, nil)
	local, remote := testutil.Mmap(t, 1<<20), testutil.Mmap(t, 1<<20)
	require.NoError(t, ini.RegisterMemory(addr(local), 1<<20, "*"))
	require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<20, "*"))
	require.Eventually(t, func() bool { return logs.FilterMessageSnippet("metrics reporting started").Len() == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 1 << 20}}, nil))
	require.Eventually(t, func() bool {
		return logs.FilterMessageSnippet("[Metrics] Transfer Engine Stats (over last 1s): Throughput: 1.00 MB/s | Latency Distribution (count=1): ").Len() == 1
	}, 5*time.Second, 10*time.Millisecond, "%v", logs.All())
}
