package rdma

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/lifetime"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// Protocol is the descriptor protocol this transport publishes.
const Protocol = metadata.ProtocolRDMA

// Deps are what the transport needs from the engine.
type Deps struct {
	// Provider opens the HCAs: the dlopen'd libibverbs (verbs/ibv) or a
	// fake fabric. The transport closes it.
	Provider verbs.Provider
	// LocalName is this engine's segment name; NIC paths are
	// "<LocalName>@<hca>".
	LocalName string
	// Topology lists the HCAs to use, in device-id order, and the priority
	// matrix to publish.
	Topology *topology.Topology
	// Handshake sends a Connection message to the named peer's RPC endpoint
	// and returns its reply.
	Handshake func(ctx context.Context, peerName string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error)
	// PeerDesc returns the named peer's descriptor (cached or refreshed).
	// The passive side uses it when a Connection request carries no GID.
	PeerDesc func(ctx context.Context, peerName string) (*metadata.SegmentDesc, error)
	// DmaBuf, when set, exports GPU memory as a dma-buf, through which
	// RegisterMemory registers it where nvidia-peermem is not loaded: the
	// GPU driver's ExportDmaBuf (gpu.Driver). The transport closes each
	// dma-buf once its memory regions hold it.
	DmaBuf func(addr uintptr, length uint64) (gpu.DmaBuf, error)
	// Logger receives the transport's logs; nil discards them.
	Logger *zap.Logger
}

var (
	_ transport.Transport      = (*Transport)(nil)
	_ transport.Describer      = (*Transport)(nil)
	_ transport.Registrar      = (*Transport)(nil)
	_ transport.Connector      = (*Transport)(nil)
	_ transport.HealthReporter = (*Transport)(nil)
)

// Transport is the RDMA transport. Its methods are safe for concurrent use.
type Transport struct {
	cfg   Config
	deps  Deps
	log   *zap.Logger
	dlog  *zap.Logger // sampled: data-path failures
	name  string
	topo  *topology.Topology
	local *topology.Resolved
	ctxs  []*hcaContext
	mem   memTable

	peersMu sync.Mutex
	peers   map[string]*peerState // +checklocks:peersMu

	rrLocal  atomic.Uint64
	rrRemote atomic.Uint64

	// life is entered by every entry point that touches verbs objects
	// (Submit, RegisterMemory, UnregisterMemory, OnConnection, ClosePeer),
	// owns the connection setups and counts the work requests in flight;
	// Close ends it before destroying anything. pollCtx ends when Close
	// has drained: pollers and async loops stop.
	life    *lifetime.Lifetime
	pollCtx context.Context
	stopPol context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

// New opens every HCA of deps.Topology and starts the transport. It owns
// deps.Provider from the call on, and closes it when it fails. It fails
// with an error matching ErrUnavailable when libibverbs is absent, and
// ErrNoDevices when no HCA can be used; HCAs that fail to open are left out
// (logged) before any device id is published.
func New(ctx context.Context, cfg Config, deps Deps) (*Transport, error) {
	if deps.Provider == nil {
		return nil, fmt.Errorf("rdma: %w: no verbs provider", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err == nil {
		switch {
		case deps.LocalName == "" || strings.Contains(deps.LocalName, "@"):
			err = fmt.Errorf("%w: local name %q", ErrInvalidConfig, deps.LocalName)
		case deps.Topology == nil:
			err = fmt.Errorf("%w: no topology", ErrInvalidConfig)
		}
	}
	if err != nil {
		deps.Provider.Close()
		return nil, fmt.Errorf("rdma: %w", err)
	}
	log := deps.Logger
	if log == nil {
		log = zap.NewNop()
	}
	t := &Transport{
		cfg: cfg, deps: deps, name: deps.LocalName,
		log:   log.Named("rdma"),
		peers: map[string]*peerState{},
		life:  lifetime.New(),
	}
	t.dlog = t.log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 10, 100)
	}))
	t.pollCtx, t.stopPol = context.WithCancel(context.Background())
	if err := t.open(ctx); err != nil {
		t.life.End()
		t.stopPol()
		return nil, err
	}
	for _, c := range t.ctxs {
		c.start()
	}
	t.log.Info("rdma transport started", zap.String("name", t.name), zap.Strings("hcas", t.topo.HCANames()),
		zap.Int("qp_per_ep", cfg.NumQPPerEP), zap.Int("slice_size", cfg.SliceSize), zap.Int("retry_cnt", cfg.RetryCnt))
	return t, nil
}

// open opens the provider's devices that the topology names.
func (t *Transport) open(ctx context.Context) error {
	p := t.deps.Provider
	topo := t.deps.Topology
	if len(topo.HCAs) == 0 {
		p.Close()
		return fmt.Errorf("rdma: topology lists no HCA: %w", ErrNoDevices)
	}
	present, err := p.Devices()
	if err != nil {
		p.Close()
		return fmt.Errorf("rdma: list devices: %w", err)
	}
	var (
		failed []string
		errs   []error
		ctxs   []*hcaContext
	)
	for _, h := range topo.HCAs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if !contains(present, h.Name) {
			failed = append(failed, h.Name)
			errs = append(errs, fmt.Errorf("hca %s: %w", h.Name, verbs.ErrNoSuchDevice))
			continue
		}
		c, err := openContext(t, len(ctxs), h.Name)
		if err != nil {
			t.log.Warn("rdma device left out", zap.String("hca", h.Name), zap.Error(err))
			failed = append(failed, h.Name)
			errs = append(errs, err)
			continue
		}
		ctxs = append(ctxs, c)
	}
	if ctx.Err() != nil || len(ctxs) == 0 {
		for _, c := range ctxs {
			c.destroy()
		}
		p.Close()
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("rdma: open devices: %w", err)
		}
		return fmt.Errorf("rdma: no usable HCA: %w: %w", ErrNoDevices, errors.Join(errs...))
	}
	t.ctxs = ctxs
	t.topo = topo.Without(failed...)
	t.local = t.topo.Resolved()
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Name is "rdma".
func (t *Transport) Name() string { return Protocol }

// Accept takes the peers whose descriptor says "rdma" (Mooncake routes a
// request by the target's protocol) and lists the devices their buffers
// are keyed by.
func (t *Transport) Accept(desc *metadata.SegmentDesc) error {
	if desc.Protocol != Protocol {
		return fmt.Errorf("rdma: the peer runs %q", desc.Protocol)
	}
	if len(desc.Devices) == 0 {
		return fmt.Errorf("rdma: the peer publishes no device: %w", ErrNoPath)
	}
	return nil
}

// Topology is the topology in use: deps.Topology less the HCAs that failed
// to open.
func (t *Transport) Topology() *topology.Topology { return t.topo }

// Describe fills d as Mooncake's RDMA transport publishes its segment:
// protocol "rdma", tcp_data_port 0, tcp_proto_version 1, devices[] in
// device-id order with lid and gid, each buffer's per-device rkey/lkey
// (buffers are matched to registrations by Addr; a registration larger than
// the device MR limit becomes one buffer per chunk; the name is the memory
// location), and the priority matrix.
func (t *Transport) Describe(d *metadata.SegmentDesc) {
	d.Protocol = Protocol
	d.TCPDataPort = 0
	d.TCPProtoVersion = 1
	d.Devices = make([]metadata.DeviceDesc, len(t.ctxs))
	for i, c := range t.ctxs {
		lid, gid := c.address()
		d.Devices[i] = metadata.DeviceDesc{Name: c.name, LID: lid, GID: gid.String()}
	}
	out, missing := t.mem.Buffers(d.Buffers)
	for _, a := range missing {
		t.log.Debug("describe: buffer not registered with rdma", zap.Uint64("addr", a))
	}
	d.Buffers = out
	d.PriorityMatrix = make(map[string]metadata.PriorityEntry, len(t.topo.Matrix))
	for loc, e := range t.topo.Matrix {
		d.PriorityMatrix[loc] = metadata.PriorityEntry{Preferred: append([]string{}, e.Preferred...), Available: append([]string{}, e.Available...)}
	}
}

// PeerHealth is nil while the connections to the peer work (or none was
// made yet), and an error matching transport.ErrPeer, with the last cause,
// once its last connection setup failed or a slice used up its retries on
// a failure of the peer or the path to it (see classify): not for a
// rejected key or range, which the peer's connections carried. A later
// successful setup makes it nil again; ClosePeer forgets it. After Close
// it is an error matching ErrClosed.
func (t *Transport) PeerHealth(name string) error {
	if t.life.Ended() {
		return fmt.Errorf("rdma: peer %q: %w", name, ErrClosed)
	}
	t.peersMu.Lock()
	p, ok := t.peers[name]
	t.peersMu.Unlock()
	if !ok {
		return nil
	}
	if cause := p.fault.Load(); cause != nil {
		return fmt.Errorf("rdma: connections to %q failed: %w", name, *cause)
	}
	return nil
}

// ClosePeer tears down every endpoint to the named peer: queued and
// in-flight work for it fails with ErrClosed, and the next transfer
// reconnects.
func (t *Transport) ClosePeer(name string) {
	if !t.life.Enter() {
		return
	}
	defer t.life.Exit()
	cause := fmt.Errorf("peer %q closed: %w", name, ErrClosed)
	for _, c := range t.ctxs {
		for _, ep := range c.store.removeIf(func(ep *endpoint) bool { return ep.peerName == name }) {
			ep.retire(modeClosed, cause)
		}
	}
	t.peersMu.Lock()
	delete(t.peers, name)
	t.peersMu.Unlock()
}

// Close stops the transport (see the package doc). It is idempotent and
// returns the first error.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.life.End()
		for _, c := range t.ctxs {
			for _, ep := range c.store.closeAll() {
				ep.retire(modeClosed, ErrClosed)
			}
		}
		// Connection setups end promptly: their ctx is cancelled.
		t.life.Wait()
		if !t.life.Drain(time.Now().Add(t.cfg.DrainTimeout)) {
			t.log.Warn("close: work requests still in flight after the drain timeout", zap.Int64("inflight", t.life.InFlight()))
		}
		t.stopPol()
		for _, c := range t.ctxs {
			c.wg.Wait()
		}
		var errs []error
		for _, c := range t.ctxs {
			for _, s := range c.slab.Drain() {
				t.life.Completed(1)
				s.finish(ErrClosed)
			}
			errs = append(errs, c.destroyEndpoints())
		}
		errs = append(errs, t.deregisterAll())
		for _, c := range t.ctxs {
			errs = append(errs, c.destroy())
		}
		errs = append(errs, t.deps.Provider.Close())
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// pick is the number a slice's first try selects a NIC with: random, or
// from the counter given when MC_PATH_ROUNDROBIN is set.
func (t *Transport) pick(rr *atomic.Uint64) uint64 {
	if t.cfg.PathRoundRobin {
		return rr.Add(1) - 1
	}
	return rand.Uint64()
}

// peerState is what the transport remembers of one peer.
type peerState struct {
	// fault is the failure that made the peer unhealthy (it matches
	// transport.ErrPeer), nil while it is healthy.
	fault atomic.Pointer[error]
	route atomic.Pointer[route]
}

func (t *Transport) peer(name string) *peerState {
	t.peersMu.Lock()
	defer t.peersMu.Unlock()
	p, ok := t.peers[name]
	if !ok {
		p = &peerState{}
		t.peers[name] = p
	}
	return p
}

// peerFailed records a failure of the peer or the path to it; failures
// that do not blame the peer (see classify) leave its health alone.
func (t *Transport) peerFailed(name string, err error) {
	if errors.Is(err, transport.ErrPeer) {
		t.peer(name).fault.Store(&err)
	}
}

// peerWorks records a connection that works.
func (t *Transport) peerWorks(name string) {
	if p := t.peer(name); p.fault.Load() != nil {
		p.fault.Store(nil)
	}
}
