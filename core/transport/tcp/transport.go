package tcp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/internal/connlimit"
	"github.com/pymooncake/pymooncake/core/internal/listen"
	memtable "github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Memory is the local registered memory (the engine's memory.Table). Its
// methods are lock-free: they run for every request.
type Memory interface {
	// Contains reports whether [addr, addr+size) lies inside one
	// registered region (the client's check before coalescing).
	Contains(addr, size uint64) bool
	// Pin is Contains that also holds the region until Unpin: the server
	// pins every range it reads or writes for as long as it touches it,
	// so that unregister_memory waits for it and no peer writes into a
	// region once that has returned.
	Pin(addr, size uint64) (memtable.Pin, bool)
}

// Defaults and limits of Config.
const (
	DefaultLanes          = 4
	MaxLanes              = 16
	DefaultSplitThreshold = 4 << 20
	DefaultStatusTimeout  = 30 * time.Second
	DefaultIOTimeout      = 30 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	DefaultWindow         = 16
	MaxWindow             = 1024
	// minPart is the smallest part a large request is split into.
	minPart = 1 << 20
)

// Config configures a Transport. Zero values mean the documented defaults.
type Config struct {
	// Lanes is the number of persistent connections per peer
	// (MC_TCP_LANES_PER_PEER): default 4, at most 16.
	Lanes int
	// SplitThreshold: a request of at least this many bytes is split into
	// parts of at least 1 MiB spread over the lanes. Default 4 MiB.
	SplitThreshold uint64
	// StatusTimeout bounds each wait for a v2 status frame
	// (MC_TCP_STATUS_TIMEOUT_SEC). Default 30 s.
	StatusTimeout time.Duration
	// IOTimeout bounds each socket read or write that makes no progress, so
	// a stopped or dead peer fails its tasks within it. Default 30 s.
	IOTimeout time.Duration
	// DialTimeout bounds each connect. Default 5 s.
	DialTimeout time.Duration
	// ForceV1 speaks v1 even to targets that advertise v2 (MC_TCP_PROTO=1).
	ForceV1 bool
	// Window is how many requests may be in flight on one connection: the
	// lanes write the next requests without waiting for the replies of
	// the previous ones (PYMOONCAKE_TCP_WINDOW). Default 16, at most 1024.
	Window int
	// NoScatterGather keeps to Mooncake's framing with pymooncake peers too,
	// and leaves SGKey out of the descriptor (PYMOONCAKE_TCP_SG=0).
	NoScatterGather bool
	// PollBudget is how long a connection is polled for its next bytes
	// before its goroutine parks (PYMOONCAKE_TCP_POLL_US): the server's after
	// each reply, a synchronous caller's for its status frame (see Sync).
	// Default DefaultPollBudget, at most MaxPollBudget; negative disables
	// polling.
	PollBudget time.Duration
	// MaxConns bounds the connections the data server holds
	// (PYMOONCAKE_TCP_MAX_CONNS): default DefaultMaxConns, or a quarter of
	// the process's descriptor limit when that is lower; at least
	// MaxConnsPerPeer.
	MaxConns int
	// MaxConnsPerPeer bounds the connections of one remote IP
	// (PYMOONCAKE_TCP_MAX_CONNS_PER_PEER): default DefaultMaxConnsPerPeer
	// or MaxConns when lower; at least MinConnsPerPeer.
	MaxConnsPerPeer int
	// Logger receives the transport's logs; nil means none.
	Logger *zap.Logger
	// GPU gives access to registered GPU memory; nil means all registered
	// memory is host memory.
	GPU GPU
}

// withDefaults fills zero fields and rejects impossible values.
func (c Config) withDefaults() (Config, error) {
	if c.Lanes == 0 {
		c.Lanes = DefaultLanes
	}
	if c.Lanes < 1 || c.Lanes > MaxLanes {
		return c, fmt.Errorf("lanes %d outside [1, %d]: %w", c.Lanes, MaxLanes, ErrInvalidConfig)
	}
	if c.SplitThreshold == 0 {
		c.SplitThreshold = DefaultSplitThreshold
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Window < 1 || c.Window > MaxWindow {
		return c, fmt.Errorf("window %d outside [1, %d]: %w", c.Window, MaxWindow, ErrInvalidConfig)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"status timeout", &c.StatusTimeout, DefaultStatusTimeout},
		{"i/o timeout", &c.IOTimeout, DefaultIOTimeout},
		{"dial timeout", &c.DialTimeout, DefaultDialTimeout},
	} {
		if *d.v < 0 {
			return c, fmt.Errorf("%s %v is negative: %w", d.name, *d.v, ErrInvalidConfig)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	switch {
	case c.PollBudget == 0:
		c.PollBudget = DefaultPollBudget
	case c.PollBudget < 0:
		c.PollBudget = 0
	case c.PollBudget > MaxPollBudget:
		return c, fmt.Errorf("poll budget %v above %v: %w", c.PollBudget, MaxPollBudget, ErrInvalidConfig)
	}
	if err := c.connLimits(); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c, nil
}

// Transport is Mooncake's TCP transport: a data server over the local
// registered memory and a client with per-peer connection lanes.
type Transport struct {
	cfg    Config
	log    *zap.Logger
	hot    *zap.Logger // sampled, for data-path failures
	srv    *server
	dialer net.Dialer

	ctx    context.Context // ends at Close; parent of every peer's
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // every goroutine of the transport

	mu     sync.Mutex
	closed bool                              // guarded by mu
	peers  atomic.Pointer[map[peerKey]*peer] // replaced under mu, read lock-free

	closeOnce sync.Once
	closeErr  error
}

var (
	_ transport.Transport      = (*Transport)(nil)
	_ transport.Describer      = (*Transport)(nil)
	_ transport.HealthReporter = (*Transport)(nil)
	_ transport.CloseCounter   = (*Transport)(nil)
	_ transport.ConnCounter    = (*Transport)(nil)
)

// New starts a transport serving on ln, which it takes over (Close closes
// it); mem decides which remote requests may touch local memory.
func New(cfg Config, ln net.Listener, mem Memory) (*Transport, error) {
	if ln == nil {
		return nil, fmt.Errorf("tcp: nil listener: %w", ErrInvalidConfig)
	}
	if mem == nil {
		return nil, fmt.Errorf("tcp: nil memory: %w", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("tcp: %w", err)
	}
	log := cfg.Logger.Named("tcp")
	hot := log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 5, 100)
	}))
	t := &Transport{
		cfg:    cfg,
		log:    log,
		hot:    hot,
		dialer: net.Dialer{Timeout: cfg.DialTimeout},
	}
	conns, err := connlimit.New(cfg.MaxConns, cfg.MaxConnsPerPeer)
	if err != nil {
		return nil, fmt.Errorf("tcp: %w: %w", ErrInvalidConfig, err)
	}
	t.ctx, t.cancel = context.WithCancelCause(context.Background())
	t.peers.Store(&map[peerKey]*peer{})
	t.srv = &server{
		ln:    ln,
		mem:   mem,
		gpu:   cfg.GPU,
		log:   hot,
		io:    cfg.IOTimeout,
		poll:  cfg.PollBudget,
		idle:  max(serverIdle, cfg.IOTimeout),
		wg:    &t.wg,
		conns: conns,
	}
	t.wg.Add(2)
	go func() {
		defer t.wg.Done()
		t.srv.acceptLoop(t.ctx)
	}()
	go t.sweepSync()
	log.Info("tcp transport started", zap.Int("data_port", t.Port()), zap.Int("lanes", cfg.Lanes),
		zap.Uint64("split_threshold", cfg.SplitThreshold), zap.Duration("status_timeout", cfg.StatusTimeout),
		zap.Duration("io_timeout", cfg.IOTimeout), zap.Duration("dial_timeout", cfg.DialTimeout),
		zap.Bool("force_v1", cfg.ForceV1), zap.Int("window", cfg.Window), zap.Bool("scatter_gather", !cfg.NoScatterGather), zap.Duration("poll_budget", cfg.PollBudget), zap.Int("proto_version", t.ProtoVersion()), zap.Bool("gpu", cfg.GPU != nil),
		zap.Int("max_conns", cfg.MaxConns), zap.Int("max_conns_per_peer", cfg.MaxConnsPerPeer))
	return t, nil
}

// Port is the data port to publish as tcp_data_port.
func (t *Transport) Port() int { return listen.Port(t.srv.ln) }

// ProtoVersion is the framing version this server speaks, to publish as
// tcp_proto_version.
func (t *Transport) ProtoVersion() int { return 2 }

// Name is "tcp".
func (t *Transport) Name() string { return metadata.ProtocolTCP }

// Accept takes the peers that publish a TCP data endpoint: Mooncake routes a
// request by the target's protocol, and so does this transport.
func (t *Transport) Accept(desc *metadata.SegmentDesc) error {
	if desc.Protocol != metadata.ProtocolTCP {
		return fmt.Errorf("tcp: the peer runs %q", desc.Protocol)
	}
	if desc.TCPDataPort <= 0 || desc.TCPDataPort > 65535 {
		return fmt.Errorf("tcp: the peer publishes tcp_data_port %d", desc.TCPDataPort)
	}
	return nil
}

// Describe publishes the data endpoint: protocol "tcp", tcp_data_port and
// tcp_proto_version, as Mooncake's TCP transport does.
func (t *Transport) Describe(d *metadata.SegmentDesc) {
	d.Protocol = metadata.ProtocolTCP
	d.TCPDataPort = t.Port()
	d.TCPProtoVersion = t.ProtoVersion()
	if !t.cfg.NoScatterGather {
		if d.Extra == nil {
			d.Extra = map[string]json.RawMessage{}
		}
		d.Extra[SGKey] = json.RawMessage(strconv.Itoa(SGVersion))
	}
}

// Submit queues the tasks for peer and returns at once, except that with
// opts.Sync a batch that makes one wire request runs to its end first
// (see inline).
// Requests contiguous on both sides travel as one (see coalesce); to a
// pymooncake peer, small requests travel many to a scatter-gather request
// (see group); large ones are split over the lanes. Every task is
// finished through PartDone: completed, rejected, failed with its peer's
// connection, failed with ctx's error when ctx ends first, or with
// ErrClosed. Zero-length tasks complete without touching the network.
func (t *Transport) Submit(ctx context.Context, pe transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if len(tasks) == 0 {
		return
	}
	p, err := t.peer(pe)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		for _, task := range tasks {
			task.Fail(submitError(pe, task, err))
		}
		return
	}
	v1 := t.cfg.ForceV1 || pe.Desc.TCPProtoVersion < 2
	info := p.describe(pe.Desc)
	tasks = p.coalesce(info, tasks)
	rp := reqLists.Get().(*[]wreq)
	b := builder{t: t, p: p, ctx: ctx, v1: v1, sg: !v1 && info.sg && !t.cfg.NoScatterGather, reqs: (*rp)[:0]}
	defer func() {
		// The lanes hold copies of the requests: the list goes back.
		if cap(b.reqs) <= maxPooledReqs {
			clear(b.reqs)
			*rp = b.reqs[:0]
			reqLists.Put(rp)
		}
	}()
	b.start(tasks)
	for i, task := range tasks {
		n := task.Length
		switch {
		case n == 0:
			b.flush(i)
			task.Start(1)
			task.PartDone(0, nil)
		case task.Opcode != transport.Read && task.Opcode != transport.Write:
			b.flush(i)
			task.Fail(submitError(pe, task, fmt.Errorf("tcp: invalid opcode %d", task.Opcode)))
		case n >= maxSize:
			b.flush(i)
			task.Fail(submitError(pe, task, fmt.Errorf("tcp: length %d too large", n)))
		case b.groupable(task):
			b.add(tasks, i)
		default:
			b.flush(i)
			b.plain(task)
		}
	}
	b.flush(len(tasks))
	if opts.Sync && len(b.reqs) == 1 && p.inline(&b.reqs[0]) {
		return
	}
	for _, w := range b.reqs {
		p.enqueue(w)
	}
}

// reqLists recycles Submit's lists of wire requests: a batch of plain
// (Mooncake-framed) requests makes one per block, 300 KB for 1,024 blocks.
var reqLists = sync.Pool{New: func() any { return new([]wreq) }}

// maxPooledReqs bounds the lists kept, so that one huge batch does not pin
// its list for good.
const maxPooledReqs = 4096

// peer returns the pool for pe, creating it on first use.
func (t *Transport) peer(pe transport.Peer) (*peer, error) {
	if pe.Desc == nil {
		return nil, fmt.Errorf("tcp: peer %q without a descriptor: %w", pe.Name, ErrInvalidConfig)
	}
	k := keyOf(pe)
	if p := (*t.peers.Load())[k]; p != nil {
		return p, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	old := *t.peers.Load()
	if p := old[k]; p != nil {
		return p, nil
	}
	p := newPeer(t, k, net.JoinHostPort(pe.Host, strconv.Itoa(k.port)))
	next := make(map[peerKey]*peer, len(old)+1)
	for kk, v := range old {
		next[kk] = v
	}
	next[k] = p
	t.peers.Store(&next)
	// A new peer is often an old one restarted elsewhere: release the
	// pooled sync connections that dead peers closed.
	for _, o := range old {
		o.reapSync()
	}
	return p, nil
}

// sweepSync releases, every syncSweep until the transport closes, the
// pooled sync connections that their peers closed, so that a peer nobody
// calls any more holds no descriptor for long.
func (t *Transport) sweepSync() {
	defer t.wg.Done()
	tick := time.NewTicker(syncSweep)
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
			for _, p := range *t.peers.Load() {
				p.reapSync()
			}
		}
	}
}

// ClosePeer drops every connection to the peer named name: in-flight and
// queued tasks for it fail with ErrClosed, and its health record is
// forgotten. The next Submit to it dials afresh.
func (t *Transport) ClosePeer(name string) {
	t.mu.Lock()
	old := *t.peers.Load()
	next := make(map[peerKey]*peer, len(old))
	var gone []*peer
	for k, p := range old {
		if k.name == name {
			gone = append(gone, p)
		} else {
			next[k] = p
		}
	}
	if len(gone) > 0 {
		t.peers.Store(&next)
	}
	t.mu.Unlock()
	for _, p := range gone {
		p.close(fmt.Errorf("connections to peer %q closed: %w", name, ErrClosed))
	}
}

// PeerHealth is an error matching ErrPeer once a connection to the peer
// named name failed (refused, reset, closed, timed out) with no later
// success, and nil otherwise.
func (t *Transport) PeerHealth(name string) error {
	for k, p := range *t.peers.Load() {
		if k.name == name && p.unhealthy.Load() {
			return fmt.Errorf("tcp: connections to %q (%s) failed: %w", name, p.addr, ErrPeer)
		}
	}
	return nil
}

// PeerCloses counts the idle connections to pe's data endpoint that the
// peer closed: it died, restarted, or dropped them after 10 idle minutes.
// A caller that remembers the count from when it learnt pe's descriptor
// can tell, at no cost, that the process there may not be the one it knew.
func (t *Transport) PeerCloses(pe transport.Peer) uint64 {
	if pe.Desc == nil {
		return 0
	}
	if p := (*t.peers.Load())[keyOf(pe)]; p != nil {
		p.reapSync()
		return p.closes.Load()
	}
	return 0
}

// PeerConns counts the connections open to the peer named name (lanes,
// pooled synchronous connections and v1 requests' own), at every address
// it is known at.
func (t *Transport) PeerConns(name string) int {
	n := int64(0)
	for k, p := range *t.peers.Load() {
		if k.name == name {
			n += p.conns.Load()
		}
	}
	return int(n)
}

// Close stops the server and the clients, fails queued and in-flight tasks
// with ErrClosed and waits for every goroutine. It is idempotent.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.closed = true
		peers := *t.peers.Load()
		t.peers.Store(&map[peerKey]*peer{})
		t.mu.Unlock()
		t.cancel(ErrClosed)
		t.closeErr = t.srv.close()
		for _, p := range peers {
			p.close(ErrClosed)
		}
		t.wg.Wait()
		t.log.Info("tcp transport closed", zap.Int("data_port", t.Port()))
	})
	return t.closeErr
}
