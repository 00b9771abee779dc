package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The exported metric families. Names follow TENT's (tent_read_bytes_total
// is pymooncake_read_bytes_total here), with pymooncake's additions.
var (
	descBytes = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_read_bytes_total", "Bytes read by completed read requests.", []string{"transport"}, nil),
		prometheus.NewDesc("pymooncake_write_bytes_total", "Bytes written by completed write requests.", []string{"transport"}, nil),
	}
	descRequests = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_read_requests_total", "Read requests finished, completed or failed.", []string{"transport"}, nil),
		prometheus.NewDesc("pymooncake_write_requests_total", "Write requests finished, completed or failed.", []string{"transport"}, nil),
	}
	descFailures = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_read_failures_total", "Read requests failed, by cause (rejected, peer, timeout, closed, other).", []string{"transport", "cause"}, nil),
		prometheus.NewDesc("pymooncake_write_failures_total", "Write requests failed, by cause (rejected, peer, timeout, closed, other).", []string{"transport", "cause"}, nil),
	}
	descLatency = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_read_latency_us", "Latency of completed read requests, from submission until the engine saw their batch finished, in microseconds.", []string{"transport"}, nil),
		prometheus.NewDesc("pymooncake_write_latency_us", "Latency of completed write requests, from submission until the engine saw their batch finished, in microseconds.", []string{"transport"}, nil),
	}
	descSize = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_read_size_bytes", "Size of completed read requests, in bytes.", []string{"transport"}, nil),
		prometheus.NewDesc("pymooncake_write_size_bytes", "Size of completed write requests, in bytes.", []string{"transport"}, nil),
	}
	descPeerBytes = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_peer_read_bytes_total", "Bytes read from the peer by completed requests (peers beyond the label limit are \"other\").", []string{"peer"}, nil),
		prometheus.NewDesc("pymooncake_peer_write_bytes_total", "Bytes written to the peer by completed requests (peers beyond the label limit are \"other\").", []string{"peer"}, nil),
	}
	descPeerRequests = [2]*prometheus.Desc{
		prometheus.NewDesc("pymooncake_peer_read_requests_total", "Read requests to the peer finished, completed or failed.", []string{"peer"}, nil),
		prometheus.NewDesc("pymooncake_peer_write_requests_total", "Write requests to the peer finished, completed or failed.", []string{"peer"}, nil),
	}
	descPeerFailures    = prometheus.NewDesc("pymooncake_peer_failures_total", "Requests to the peer failed.", []string{"peer"}, nil)
	descPeerTransport   = prometheus.NewDesc("pymooncake_peer_transport", "Peers of open segments reached over the transport (1 for a peer with a label of its own).", []string{"peer", "transport"}, nil)
	descPeerConnections = prometheus.NewDesc("pymooncake_peer_connections", "Open connections of the transport to the peer, for transports that count them.", []string{"peer", "transport"}, nil)
	descFailover        = prometheus.NewDesc("pymooncake_transport_failover_total", "Peers whose transport changed, from one transport to another.", []string{"from", "to"}, nil)
	descRetries         = prometheus.NewDesc("pymooncake_retries_total", "Synchronous transfers run again after re-resolving the peer, by reason (recovered, peer, restarted).", []string{"reason"}, nil)
	descRecoveries      = prometheus.NewDesc("pymooncake_recoveries_total", "Failed segments recovered, by action (dropped, restarted).", []string{"action"}, nil)
	descBatches         = prometheus.NewDesc("pymooncake_batches_in_flight", "Batches allocated and not yet freed.", nil, nil)
	descNotifies        = prometheus.NewDesc("pymooncake_notifies_queued", "Notifies received and not yet drained by get_notifies.", nil, nil)
	descRegistered      = prometheus.NewDesc("pymooncake_registered_bytes", "Registered memory, by location (cpu, cuda:N).", []string{"location"}, nil)
)

// collector is a Set as a prometheus.Collector: each scrape reads one
// Snapshot.
type collector struct{ s *Set }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for op := range 2 {
		ch <- descBytes[op]
		ch <- descRequests[op]
		ch <- descFailures[op]
		ch <- descLatency[op]
		ch <- descSize[op]
		ch <- descPeerBytes[op]
		ch <- descPeerRequests[op]
	}
	for _, d := range []*prometheus.Desc{descPeerFailures, descPeerTransport, descPeerConnections, descFailover,
		descRetries, descRecoveries, descBatches, descNotifies, descRegistered} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.s.Snapshot()
	// A metric that cannot be built is sent as an invalid one (the scrape
	// reports it), never a panic: a panic in a collector ends the process.
	send := func(d *prometheus.Desc, m prometheus.Metric, err error) {
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
		send(d, m, err)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, labels...)
		send(d, m, err)
	}
	histogram := func(d *prometheus.Desc, h Histogram, labels ...string) {
		m, err := constHistogram(d, h, labels...)
		send(d, m, err)
	}
	for _, name := range sortedKeys(snap.Transports) {
		tf := snap.Transports[name]
		for op, f := range [2]DirectionFigures{tf.Read, tf.Write} {
			counter(descBytes[op], f.Bytes, name)
			counter(descRequests[op], f.Requests, name)
			for _, cause := range causeNames {
				counter(descFailures[op], f.Failures[cause], name, cause)
			}
			histogram(descLatency[op], f.LatencyUs, name)
			histogram(descSize[op], f.SizeBytes, name)
		}
	}
	for _, label := range sortedKeys(snap.Peers) {
		p := snap.Peers[label]
		counter(descPeerBytes[0], p.ReadBytes, label)
		counter(descPeerBytes[1], p.WriteBytes, label)
		counter(descPeerRequests[0], p.ReadRequests, label)
		counter(descPeerRequests[1], p.WriteRequests, label)
		counter(descPeerFailures, p.Failures, label)
		for _, x := range sortedKeys(p.Open) {
			gauge(descPeerTransport, float64(p.Open[x]), label, x)
		}
		for _, x := range sortedKeys(p.Connections) {
			gauge(descPeerConnections, float64(p.Connections[x]), label, x)
		}
	}
	for _, f := range snap.Failovers {
		counter(descFailover, f.Count, f.From, f.To)
	}
	for _, r := range retryNames {
		counter(descRetries, snap.Retries[r], r)
	}
	for _, r := range recoveryNames {
		counter(descRecoveries, snap.Recoveries[r], r)
	}
	gauge(descBatches, float64(snap.BatchesInFlight))
	gauge(descNotifies, float64(snap.NotifiesQueued))
	for _, loc := range sortedKeys(snap.RegisteredBytes) {
		gauge(descRegistered, float64(snap.RegisteredBytes[loc]), loc)
	}
}

// constHistogram is h in Prometheus's form: cumulative counts by upper
// bound, the overflow bucket implicit in the count.
func constHistogram(d *prometheus.Desc, h Histogram, labels ...string) (prometheus.Metric, error) {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[float64(b)] = cum
	}
	return prometheus.NewConstHistogram(d, h.Count, float64(h.Sum), buckets, labels...)
}
