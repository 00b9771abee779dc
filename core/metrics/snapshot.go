package metrics

import (
	"sort"
	"sync/atomic"
)

// Snapshot is a Set's figures at one moment, as Python's get_metrics
// returns them (JSON). Counters count since the engine started; the
// state's figures (batches, notifies, registered bytes, open peers,
// connections) are the current ones.
type Snapshot struct {
	// Transports are the figures of each transport requests went over.
	Transports map[string]TransportFigures `json:"transports"`
	// Peers are the figures by peer label: a peer's name, or OtherPeer.
	Peers map[string]PeerFigures `json:"peers"`
	// Failovers count peers whose transport changed, by from and to.
	Failovers []Failover `json:"failovers"`
	// Retries count synchronous transfers run again, by reason
	// ("recovered", "peer", "restarted").
	Retries map[string]uint64 `json:"retries"`
	// Recoveries count failed segments recovered, by action ("dropped",
	// "restarted").
	Recoveries map[string]uint64 `json:"recoveries"`
	// BatchesInFlight counts the batches allocated and not yet freed.
	BatchesInFlight int `json:"batches_in_flight"`
	// NotifiesQueued counts the notifies received and not yet drained.
	NotifiesQueued int `json:"notifies_queued"`
	// RegisteredBytes is the registered memory by location ("cpu",
	// "cuda:N").
	RegisteredBytes map[string]uint64 `json:"registered_bytes"`
	// Endpoint is the address of the HTTP endpoint serving these figures,
	// or empty when none is (the engine fills it in).
	Endpoint string `json:"endpoint"`
}

// TransportFigures are one transport's figures by direction.
type TransportFigures struct {
	Read  DirectionFigures `json:"read"`
	Write DirectionFigures `json:"write"`
}

// DirectionFigures count the reads or the writes of one transport.
type DirectionFigures struct {
	// Bytes moved by completed requests.
	Bytes uint64 `json:"bytes"`
	// Requests finished: completed or failed.
	Requests uint64 `json:"requests"`
	// Failures by cause ("rejected", "peer", "timeout", "closed",
	// "other"), zeros included.
	Failures map[string]uint64 `json:"failures"`
	// LatencyUs is the latency of completed requests, from submission
	// until the engine saw their batch finished, in microseconds.
	LatencyUs Histogram `json:"latency_us"`
	// SizeBytes is the size of completed requests.
	SizeBytes Histogram `json:"size_bytes"`
}

// Failed adds up the failures.
func (d DirectionFigures) Failed() uint64 {
	var n uint64
	for _, v := range d.Failures {
		n += v
	}
	return n
}

// Histogram is a distribution: Counts[i] observations were at most
// Bounds[i] (and above the bound before); the last count is of those
// above every bound.
type Histogram struct {
	Bounds []uint64 `json:"bounds"`
	Counts []uint64 `json:"counts"`
	Count  uint64   `json:"count"`
	Sum    uint64   `json:"sum"`
}

// PeerFigures are one peer label's figures.
type PeerFigures struct {
	ReadBytes     uint64 `json:"read_bytes"`
	WriteBytes    uint64 `json:"write_bytes"`
	ReadRequests  uint64 `json:"read_requests"`
	WriteRequests uint64 `json:"write_requests"`
	Failures      uint64 `json:"failures"`
	// Open counts, by transport, the peers under this label that open
	// segments reach over it (1 for a peer of its own).
	Open map[string]int `json:"open"`
	// Connections counts, by transport, the open connections to those
	// peers, for the transports that count them.
	Connections map[string]int `json:"connections"`
}

// Failover counts the peers whose transport went from From to To.
type Failover struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Count uint64 `json:"count"`
}

// Snapshot reads s's figures and the engine's state. A nil Set has none.
func (s *Set) Snapshot() Snapshot {
	out := Snapshot{
		Transports:      map[string]TransportFigures{},
		Peers:           map[string]PeerFigures{},
		Failovers:       []Failover{},
		Retries:         map[string]uint64{},
		Recoveries:      map[string]uint64{},
		RegisteredBytes: map[string]uint64{},
	}
	if s == nil {
		return out
	}
	st := s.state()
	out.BatchesInFlight, out.NotifiesQueued = st.BatchesInFlight, st.NotifiesQueued
	for k, v := range st.Registered {
		out.RegisteredBytes[k] = v
	}
	for i, n := range retryNames {
		out.Retries[n] = s.retries[i].Load()
	}
	for i, n := range recoveryNames {
		out.Recoveries[n] = s.recoveries[i].Load()
	}

	s.mu.Lock()
	xps := make([]*transportStats, 0, len(s.transports))
	for _, x := range s.transports {
		xps = append(xps, x)
	}
	peers := make([]*peerStats, 0, len(s.peers))
	for _, p := range s.peers {
		peers = append(peers, p)
	}
	for k, n := range s.failovers {
		out.Failovers = append(out.Failovers, Failover{From: k[0], To: k[1], Count: n})
	}
	s.mu.Unlock()
	sort.Slice(out.Failovers, func(i, j int) bool {
		a, b := out.Failovers[i], out.Failovers[j]
		return a.From < b.From || a.From == b.From && a.To < b.To
	})

	for _, x := range xps {
		out.Transports[x.name] = TransportFigures{Read: x.dirs[0].figures(), Write: x.dirs[1].figures()}
	}
	for _, p := range peers {
		out.Peers[p.label] = PeerFigures{
			ReadBytes: p.bytes[0].Load(), WriteBytes: p.bytes[1].Load(),
			ReadRequests: p.requests[0].Load(), WriteRequests: p.requests[1].Load(),
			Failures: p.failures.Load(), Open: map[string]int{}, Connections: map[string]int{},
		}
	}
	for _, ps := range st.Peers {
		label := s.label(ps.Name)
		f, ok := out.Peers[label]
		if !ok {
			f = PeerFigures{Open: map[string]int{}, Connections: map[string]int{}}
		}
		f.Open[ps.Transport]++
		if ps.Conns >= 0 {
			f.Connections[ps.Transport] += ps.Conns
		}
		out.Peers[label] = f
	}
	return out
}

func (d *direction) figures() DirectionFigures {
	f := DirectionFigures{
		Bytes:     d.bytes.Load(),
		Requests:  d.requests.Load(),
		Failures:  make(map[string]uint64, numCauses),
		LatencyUs: histogramOf(latencyBounds, d.latency.counts[:], &d.latency.sum),
		SizeBytes: histogramOf(sizeBounds, d.size.counts[:], &d.size.sum),
	}
	for c, n := range causeNames {
		f.Failures[n] = d.failures[c].Load()
	}
	return f
}

// histogramOf reads a histogram; its count is the sum of its buckets, so
// that a scrape during recording stays consistent.
func histogramOf(bounds []uint64, counts []atomic.Uint64, sum *atomic.Uint64) Histogram {
	h := Histogram{Bounds: bounds, Counts: make([]uint64, len(counts)), Sum: sum.Load()}
	for i := range counts {
		h.Counts[i] = counts[i].Load()
		h.Count += h.Counts[i]
	}
	return h
}
