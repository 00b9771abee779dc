package metrics

import (
	"context"
	"errors"
	"math/bits"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pymooncake/pymooncake/core/transport"
)

// OtherPeer is the label the peers beyond Config.MaxPeers share.
const OtherPeer = "other"

// DefaultMaxPeers is Config.MaxPeers when it is zero.
const DefaultMaxPeers = 64

// Cause is why a request failed, from the transport-neutral sentinels its
// error matches.
type Cause uint8

const (
	// CauseRejected: the target refused the address range
	// (transport.ErrRejected).
	CauseRejected Cause = iota
	// CausePeer: the connection to the peer failed (transport.ErrPeer).
	CausePeer
	// CauseTimeout: the request's deadline passed (context.DeadlineExceeded,
	// or an I/O timeout).
	CauseTimeout
	// CauseClosed: the transport, the peer's connections or the request's
	// context were closed first (transport.ErrClosed, context.Canceled).
	CauseClosed
	// CauseOther: anything else (a local GPU copy, a protocol error).
	CauseOther
	numCauses
)

var causeNames = [numCauses]string{"rejected", "peer", "timeout", "closed", "other"}

func (c Cause) String() string {
	if c < numCauses {
		return causeNames[c]
	}
	return "unknown"
}

// CauseOf classifies a request's error. A deadline wins over the sentinel
// it may also match (a transport reports an expired request as a failed
// connection too).
func CauseOf(err error) Cause {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return CauseTimeout
	case errors.Is(err, transport.ErrRejected):
		return CauseRejected
	case errors.Is(err, transport.ErrPeer):
		return CausePeer
	case errors.Is(err, transport.ErrClosed), errors.Is(err, context.Canceled):
		return CauseClosed
	}
	return CauseOther
}

// Retry is why a synchronous transfer was run a second time.
type Retry uint8

const (
	// RetryRecovered: another call had dropped the segment meanwhile.
	RetryRecovered Retry = iota
	// RetryPeer: the peer's connections failed (it died or restarted).
	RetryPeer
	// RetryRestarted: a new incarnation of the peer rejected the range.
	RetryRestarted
	numRetries
)

var retryNames = [numRetries]string{"recovered", "peer", "restarted"}

// Recovery is what recovering a failed segment did.
type Recovery uint8

const (
	// RecoveryDropped: the segment's connections had failed; it was
	// dropped, to be resolved again on next use.
	RecoveryDropped Recovery = iota
	// RecoveryRestarted: the peer restarted at the same address; its
	// fresh descriptor replaced the cached one.
	RecoveryRestarted
	numRecoveries
)

var recoveryNames = [numRecoveries]string{"dropped", "restarted"}

// latencyBounds are the upper bounds of the latency buckets, in
// microseconds: Mooncake's MC_TE_METRIC buckets, which hold every bound of
// TENT's (100, 500, 1000, ... 1000000).
var latencyBounds = []uint64{
	10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
	100000, 200000, 500000, 1000000, 2000000, 5000000, 10000000,
}

// sizeBounds are TENT's request size buckets, 1 KiB to 1 GiB by powers of
// four: bound i is 2^(10+2i), which sizeBucket computes without a search.
var sizeBounds = func() []uint64 {
	b := make([]uint64, 11)
	for i := range b {
		b[i] = 1 << (10 + 2*i)
	}
	return b
}()

const (
	numLatency = 19 + 1 // len(latencyBounds) and the overflow bucket
	numSize    = 11 + 1 // len(sizeBounds) and the overflow bucket
)

// sizeBucket is the bucket of a request of n bytes.
func sizeBucket(n uint64) int {
	if n <= 1<<10 {
		return 0
	}
	i := (bits.Len64(n-1) - 9) / 2 // the smallest i with n <= 2^(10+2i)
	return min(i, numSize-1)
}

// latencyBucket is the bucket of a latency of us microseconds.
func latencyBucket(us uint64) int {
	for i, b := range latencyBounds {
		if us <= b {
			return i
		}
	}
	return numLatency - 1
}

// latencyHist and sizeHist count observations per bucket (not cumulated)
// and add them up.
type (
	latencyHist struct {
		counts [numLatency]atomic.Uint64
		sum    atomic.Uint64
	}
	sizeHist struct {
		counts [numSize]atomic.Uint64
		sum    atomic.Uint64
	}
)

// direction holds one transport's figures for reads or for writes.
type direction struct {
	bytes    atomic.Uint64 // moved by completed requests
	requests atomic.Uint64 // finished: completed or failed
	failures [numCauses]atomic.Uint64
	latency  latencyHist // completed requests, µs
	size     sizeHist    // completed requests, bytes
}

// transportStats is one transport's figures, by direction (indexed by
// transport.Opcode: Read 0, Write 1).
type transportStats struct {
	name string
	dirs [2]direction
}

// peerStats is one peer label's figures.
type peerStats struct {
	label    string
	bytes    [2]atomic.Uint64
	requests [2]atomic.Uint64
	failures atomic.Uint64
}

// Link is where the outcomes of requests to one peer over one transport
// are recorded: the peer's figures (or "other"'s) and the transport's. The
// engine resolves one per opened segment (Set.Link) and keeps it with the
// segment.
type Link struct {
	peer *peerStats
	xp   *transportStats
}

// Tally adds up the outcomes of some requests to one peer, on the caller's
// stack, before Link.Add adds them to the shared counters in one go. The
// zero value is empty.
type Tally struct {
	dirs [2]tallyDir
}

type tallyDir struct {
	completed, bytes uint64
	failed           [numCauses]uint64
	sizes            [numSize]uint64
	sizeSum          uint64
}

// Completed records a request that completed, having moved n bytes.
func (t *Tally) Completed(op transport.Opcode, n uint64) {
	d := &t.dirs[op&1]
	d.completed++
	d.bytes += n
	d.sizes[sizeBucket(n)]++
	d.sizeSum += n
}

// Failed records a request that failed with err.
func (t *Tally) Failed(op transport.Opcode, err error) {
	t.dirs[op&1].failed[CauseOf(err)]++
}

// Add adds t to the link's counters. latency is how long the requests
// took, from their submission until the engine saw them finished: it goes
// into the latency histogram once per completed request. A negative
// latency (requests queued on a CUDA stream, whose end the engine does not
// see) records none. Add on a nil Link does nothing.
func (l *Link) Add(t *Tally, latency time.Duration) {
	if l == nil {
		return
	}
	us := uint64(0)
	if latency > 0 {
		us = uint64(latency / time.Microsecond)
	}
	lb := latencyBucket(us)
	for op := range t.dirs {
		td := &t.dirs[op]
		var failed uint64
		for c, n := range td.failed {
			if n > 0 {
				l.xp.dirs[op].failures[c].Add(n)
				failed += n
			}
		}
		if td.completed == 0 && failed == 0 {
			continue
		}
		d := &l.xp.dirs[op]
		d.requests.Add(td.completed + failed)
		l.peer.requests[op].Add(td.completed + failed)
		if failed > 0 {
			l.peer.failures.Add(failed)
		}
		if td.completed == 0 {
			continue
		}
		d.bytes.Add(td.bytes)
		l.peer.bytes[op].Add(td.bytes)
		for b, n := range td.sizes {
			if n > 0 {
				d.size.counts[b].Add(n)
			}
		}
		d.size.sum.Add(td.sizeSum)
		if latency >= 0 {
			d.latency.counts[lb].Add(td.completed)
			d.latency.sum.Add(us * td.completed)
		}
	}
}

// epoch is what Now counts from: a monotonic reading.
var epoch = time.Now()

// Now is a monotonic clock reading in nanoseconds, for latencies: cheaper
// to keep than a time.Time.
func Now() int64 { return int64(time.Since(epoch)) }

// State is what the engine is holding when its metrics are read.
type State struct {
	// BatchesInFlight counts the batches allocated and not yet freed.
	BatchesInFlight int
	// NotifiesQueued counts the notifies received and not yet drained.
	NotifiesQueued int
	// Registered is the registered memory's bytes by location: "cpu" for
	// host memory, "cuda:N" for GPU N's.
	Registered map[string]uint64
	// Peers are the peers of the open segments.
	Peers []PeerState
}

// PeerState is an open segment's peer as its transport sees it.
type PeerState struct {
	Name, Transport string
	// Conns counts the transport's open connections to the peer; -1 when
	// the transport does not count them (transport.ConnCounter).
	Conns int
}

// Config configures a Set.
type Config struct {
	// MaxPeers bounds the peers that get a label of their own; the others
	// share OtherPeer. Zero means DefaultMaxPeers.
	MaxPeers int
	// State reads the engine's state when the metrics are read; nil means
	// an empty one.
	State func() State
}

// Set is one engine's metrics. All methods are safe for concurrent use.
type Set struct {
	maxPeers int
	state    func() State
	reg      *prometheus.Registry

	mu         sync.Mutex
	transports map[string]*transportStats // guarded by mu
	peers      map[string]*peerStats      // guarded by mu; OtherPeer's too
	links      map[[2]string]*Link        // guarded by mu: by peer label and transport
	failovers  map[[2]string]uint64       // guarded by mu: by from and to
	released   map[string]uint64          // guarded by mu: own labels of peers gone, by when (releases)
	releases   uint64                     // guarded by mu

	retries    [numRetries]atomic.Uint64
	recoveries [numRecoveries]atomic.Uint64
}

// New returns an empty Set, with a Prometheus registry of its own that
// collects it.
func New(cfg Config) *Set {
	if cfg.MaxPeers <= 0 {
		cfg.MaxPeers = DefaultMaxPeers
	}
	if cfg.State == nil {
		cfg.State = func() State { return State{} }
	}
	s := &Set{
		maxPeers:   cfg.MaxPeers,
		state:      cfg.State,
		reg:        prometheus.NewRegistry(),
		transports: map[string]*transportStats{},
		peers:      map[string]*peerStats{},
		links:      map[[2]string]*Link{},
		failovers:  map[[2]string]uint64{},
		released:   map[string]uint64{},
	}
	s.reg.MustRegister(collector{s})
	return s
}

// Registry is the Prometheus registry that collects s (and nothing else).
func (s *Set) Registry() *prometheus.Registry { return s.reg }

// Link returns where requests to the peer called peer over the named
// transport are recorded. The first MaxPeers peers get their own label;
// later ones take the label of a peer released longest ago (Release), or
// share OtherPeer's when none was. Calls with the same arguments return
// the same Link while the peer keeps its label. A nil Set returns nil.
func (s *Set) Link(peer, transportName string) *Link {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.peerLocked(peer)
	key := [2]string{ps.label, transportName}
	if l := s.links[key]; l != nil {
		return l
	}
	xp := s.transports[transportName]
	if xp == nil {
		xp = &transportStats{name: transportName}
		s.transports[transportName] = xp
	}
	l := &Link{peer: ps, xp: xp}
	s.links[key] = l
	return l
}

// peerLocked returns the figures of peer's label, creating them while
// fewer than maxPeers peers have a label of their own, or in place of the
// peer released longest ago.
func (s *Set) peerLocked(peer string) *peerStats {
	if ps := s.peers[peer]; ps != nil {
		delete(s.released, peer) // back before its label went
		return ps
	}
	own := len(s.peers)
	if _, ok := s.peers[OtherPeer]; ok {
		own--
	}
	if own >= s.maxPeers && peer != OtherPeer && len(s.released) > 0 {
		s.evictLocked()
		own--
	}
	label := peer
	if own >= s.maxPeers || peer == OtherPeer {
		label = OtherPeer
		if ps := s.peers[OtherPeer]; ps != nil {
			return ps
		}
	}
	ps := &peerStats{label: label}
	s.peers[label] = ps
	return ps
}

// evictLocked drops the label of the peer released longest ago: its
// series leave the scrape (Prometheus marks them stale), and requests
// still in flight to it are no longer counted.
func (s *Set) evictLocked() {
	victim, when := "", uint64(0)
	for p, at := range s.released {
		if victim == "" || at < when {
			victim, when = p, at
		}
	}
	delete(s.released, victim)
	delete(s.peers, victim)
	for key := range s.links {
		if key[0] == victim {
			delete(s.links, key)
		}
	}
}

// Release says that the engine holds no segment of the peer called peer
// any more (it was closed, or dropped after a failure): when the labels
// run out, its label may go to a new peer. Peers that restart under new
// names (P2P names carry the port) thus do not end up as "other" in a
// long-lived engine. A Link for the peer before that keeps its label.
func (s *Set) Release(peer string) {
	if s == nil || peer == OtherPeer {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ps := s.peers[peer]; ps != nil && ps.label == peer {
		s.releases++
		s.released[peer] = s.releases
	}
}

// label is the label peer's figures are under: its name, or OtherPeer.
func (s *Set) label(peer string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ps := s.peers[peer]; ps != nil {
		return ps.label
	}
	return OtherPeer
}

// Retry counts a synchronous transfer run again, and why.
func (s *Set) Retry(why Retry) {
	if s != nil && why < numRetries {
		s.retries[why].Add(1)
	}
}

// Recovered counts a failed segment recovered, and how.
func (s *Set) Recovered(how Recovery) {
	if s != nil && how < numRecoveries {
		s.recoveries[how].Add(1)
	}
}

// Failover counts a peer that was reached over the transport from and is
// now reached over another, to (the peer restarted with other transports,
// or ours changed).
func (s *Set) Failover(from, to string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.failovers[[2]string{from, to}]++
	s.mu.Unlock()
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
