package barex

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/lifetime"
)

// Protocol is the descriptor protocol this transport publishes.
const Protocol = metadata.ProtocolBarex

// Deps are what the transport needs from the engine.
type Deps struct {
	// LocalName is this engine's segment name.
	LocalName string
	// Topology lists the HCAs to use, in device-id order, and the priority
	// matrix that picks a local device for each piece of memory.
	Topology *topology.Topology
	// Handshake sends a Connection message to the named peer's RPC endpoint
	// and returns its reply: how the barex ports are exchanged.
	Handshake func(ctx context.Context, peerName string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error)
	// Locate resolves memory registered as "*" to its location, "cpu:N" or
	// "cuda:N". Nil, or an answer of "" (or "*"), means host memory, named
	// by the NUMA node of its first page.
	Locate func(addr, length uint64) (string, error)
	// Logger receives the transport's logs; nil discards them.
	Logger *zap.Logger
}

// device is a topology HCA that barex runs a context on.
type device struct {
	index int    // position in the topology and in the descriptor's devices[]
	name  string // the HCA name
	nic   int    // barex NIC id: the index of its keys
}

var (
	_ transport.Transport      = (*Transport)(nil)
	_ transport.Describer      = (*Transport)(nil)
	_ transport.Registrar      = (*Transport)(nil)
	_ transport.Connector      = (*Transport)(nil)
	_ transport.HealthReporter = (*Transport)(nil)
)

// Transport is the barex transport. Its methods are safe for concurrent
// use.
type Transport struct {
	cfg   Config
	deps  Deps
	log   *zap.Logger
	dlog  *zap.Logger // sampled: data-path failures
	name  string
	nat   native
	port  int
	topo  *topology.Topology
	local *topology.Resolved
	devs  []device
	// keySlots is the length of every key array: one past the largest
	// barex NIC id.
	keySlots int
	mem      memTable
	batches  slab

	peersMu sync.RWMutex
	peers   map[string]*peer // +checklocks:peersMu

	// life is entered by every entry point that calls the shim, owns the
	// channel setups and closers and counts the batches in flight; Close
	// ends it before tearing the engine down.
	life *lifetime.Lifetime

	events *os.File // our duplicate of the shim's eventfd, in the netpoller
	pollWG sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// eicNIC reports an EIC NIC, which Mooncake's barex setup prefers.
func eicNIC(name string) bool {
	return strings.Contains(name, "soe") || strings.Contains(name, "solar")
}

// New loads the barex shim, starts a barex engine on the topology's HCAs
// and starts the transport. Unless the user set ACCL_USE_NICS (which is
// then passed on as is), when the topology has EIC NICs ("soe", "solar"),
// only they are used and they are what barex is told to use. HCAs barex
// does not list or run a context on are left out before any device id is
// published. New fails with an error matching ErrUnavailable when the shim
// cannot be loaded (the error names it and keeps dlerror's text) or no
// device is usable.
func New(ctx context.Context, cfg Config, deps Deps) (*Transport, error) {
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
		return nil, fmt.Errorf("barex: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("barex: %w", err)
	}
	log := deps.Logger
	if log == nil {
		log = zap.NewNop()
	}
	t := &Transport{
		cfg: cfg, deps: deps, name: deps.LocalName,
		log:   log.Named("barex"),
		peers: map[string]*peer{},
	}
	t.dlog = t.log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 10, 100)
	}))

	topo := deps.Topology
	var eic, other []string
	for _, h := range topo.HCAs {
		if eicNIC(h.Name) {
			eic = append(eic, h.Name)
		} else {
			other = append(other, h.Name)
		}
	}
	useNICs := cfg.UseNICs
	if len(eic) > 0 && !cfg.UseNICsSet {
		topo = topo.Without(other...)
		useNICs = strings.Join(eic, ",")
	}
	if len(topo.HCAs) == 0 {
		return nil, fmt.Errorf("barex: topology lists no HCA: %w", ErrNoDevices)
	}
	t.nat, err = openNative(cfg.ShimPath, nativeConfig{
		useNICs: useNICs, minPort: cfg.MinPort, maxPort: cfg.MaxPort, connectTimeout: cfg.ConnectTimeout,
	})
	if err != nil {
		return nil, err
	}
	if err := t.start(topo); err != nil {
		t.nat.Close(cfg.DrainTimeout)
		return nil, err
	}
	t.life = lifetime.New()
	t.pollWG.Add(1)
	go t.pollLoop()
	t.log.Info("barex transport started", zap.String("name", t.name), zap.Int("barex_port", t.port),
		zap.Strings("devices", t.topo.HCANames()), zap.String("accl_use_nics", useNICs),
		zap.Bool("accl_use_nics_from_user", cfg.UseNICsSet), zap.Uint64("reg_chunk_size", cfg.RegChunkSize),
		zap.Int("channels_per_device", cfg.NumQPPerEP), zap.Bool("random_device", cfg.RandomDevice),
		zap.Bool("use_cpu", cfg.UseCPU), zap.Int("ports_min", cfg.MinPort), zap.Int("ports_max", cfg.MaxPort))
	return t, nil
}

// start maps the topology's HCAs to barex's devices and opens the
// completion fd.
func (t *Transport) start(topo *topology.Topology) error {
	t.port = t.nat.Port()
	nds, err := t.nat.Devices()
	if err != nil {
		return fmt.Errorf("barex: list devices: %w", err)
	}
	byName := map[string]nativeDevice{}
	for _, d := range nds {
		if d.nic < 0 || d.nic > 1023 {
			return fmt.Errorf("barex: device %q has nic id %d: %w", d.name, d.nic, ErrInvalidConfig)
		}
		byName[d.name] = d
		t.keySlots = max(t.keySlots, d.nic+1)
	}
	var dropped []string
	for _, h := range topo.HCAs {
		d, ok := byName[h.Name]
		switch {
		case !ok:
			t.log.Warn("barex lists no such device; left out", zap.String("hca", h.Name))
		case !d.ctxOK:
			t.log.Warn("barex contexts of the device failed; left out", zap.String("hca", h.Name))
		default:
			continue
		}
		dropped = append(dropped, h.Name)
	}
	t.topo = topo.Without(dropped...)
	if len(t.topo.HCAs) == 0 {
		return fmt.Errorf("barex: none of %v has a barex context: %w", topo.HCANames(), ErrNoDevices)
	}
	for i, h := range t.topo.HCAs {
		t.devs = append(t.devs, device{index: i, name: h.Name, nic: byName[h.Name].nic})
	}
	t.local = t.topo.Resolved()

	// A duplicate of the eventfd in non-blocking mode is pollable: the
	// poller sleeps in the netpoller and Close wakes it by closing it.
	fd, err := syscall.Dup(t.nat.EventFD())
	if err != nil {
		return fmt.Errorf("barex: dup the completion eventfd: %w", err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("barex: completion eventfd: %w", err)
	}
	t.events = os.NewFile(uintptr(fd), "barex-completions")
	return nil
}

// Name is "barex".
func (t *Transport) Name() string { return Protocol }

// Accept takes the peers whose descriptor says "barex": Mooncake routes a
// request by the target's protocol, and an RDMA peer cannot talk to barex.
func (t *Transport) Accept(desc *metadata.SegmentDesc) error {
	if desc.Protocol != Protocol {
		return fmt.Errorf("barex: the peer runs %q", desc.Protocol)
	}
	return nil
}

// Port is the barex listen port this engine holds and announces.
func (t *Transport) Port() int { return t.port }

// Topology is the topology in use: the HCAs barex runs a context on.
func (t *Transport) Topology() *topology.Topology { return t.topo }

// Describe fills d as Mooncake's barex transport publishes its segment:
// protocol "barex", tcp_data_port 0, devices[] in device-id order with lid
// 0 and gid "ignore", one buffer per registered chunk (buffers are matched
// to registrations by Addr; the name is the chunk's location; one key per
// barex NIC, indexed by NIC id), and the priority matrix.
func (t *Transport) Describe(d *metadata.SegmentDesc) {
	d.Protocol = Protocol
	d.TCPDataPort = 0
	d.TCPProtoVersion = 1
	d.Devices = make([]metadata.DeviceDesc, len(t.devs))
	for i, dev := range t.devs {
		d.Devices[i] = metadata.DeviceDesc{Name: dev.name, LID: 0, GID: "ignore"}
	}
	out, missing := t.mem.Buffers(d.Buffers)
	for _, a := range missing {
		t.log.Debug("describe: buffer not registered with barex", zap.Uint64("addr", a))
	}
	d.Buffers = out
	d.PriorityMatrix = make(map[string]metadata.PriorityEntry, len(t.topo.Matrix))
	for loc, e := range t.topo.Matrix {
		d.PriorityMatrix[loc] = metadata.PriorityEntry{Preferred: slices.Clone(e.Preferred), Available: slices.Clone(e.Available)}
	}
}

// OnConnection answers a Connection message: the reply carries this
// engine's barex_port, which is all a barex peer asks for. A request with
// queue pair numbers comes from an RDMA engine, which cannot talk to a
// barex one; it is refused (reply_msg), as is any request once closed.
func (t *Transport) OnConnection(_ context.Context, req handshake.HandShakeDesc) handshake.HandShakeDesc {
	reply := handshake.HandShakeDesc{LocalNICPath: req.PeerNICPath, PeerNICPath: req.LocalNICPath}
	switch {
	case t.life.Ended():
		reply.ReplyMsg = "barex transport closed"
	case len(req.QPNum) > 0:
		reply.ReplyMsg = "this engine uses barex, not rdma"
	default:
		port := t.port
		reply.BarexPort = &port
		return reply
	}
	t.dlog.Warn("barex connection refused", zap.String("from", req.LocalNICPath), zap.String("reason", reply.ReplyMsg))
	return reply
}

// PeerHealth is CheckStatus(name): nil, or an error matching ErrChannel
// (and transport.ErrPeer).
func (t *Transport) PeerHealth(name string) error { return t.CheckStatus(name) }

// CheckStatus is Mooncake's CheckStatus the right way round: an error
// matching ErrChannel iff, on some local device, the peer has fewer healthy
// channels than MC_NUM_QP_PER_EP and none is being set up (a failed setup,
// or a channel that went inactive and was not yet replaced). A peer with no
// channels yet is healthy.
func (t *Transport) CheckStatus(name string) error {
	if !t.life.Enter() {
		return fmt.Errorf("check peer %q: %w", name, ErrClosed)
	}
	defer t.life.Exit()
	t.peersMu.RLock()
	p := t.peers[name]
	t.peersMu.RUnlock()
	if p == nil {
		return nil
	}
	for _, s := range p.channelSets() {
		if err := s.check(); err != nil {
			return fmt.Errorf("check peer %q: %w", name, err)
		}
	}
	return nil
}

// ClosePeer closes every channel to the named peer (waiting up to
// DrainTimeout for their callbacks) and forgets its barex port: work queued
// for it fails with ErrClosed, work in flight completes as barex reports
// it, and the next transfer exchanges ports and connects again. Nothing is
// ever deleted from any metadata store.
func (t *Transport) ClosePeer(name string) {
	if !t.life.Enter() {
		return
	}
	defer t.life.Exit()
	t.peersMu.Lock()
	p := t.peers[name]
	delete(t.peers, name)
	t.peersMu.Unlock()
	if p == nil {
		return
	}
	p.close(fmt.Errorf("peer %q closed: %w", name, ErrClosed), time.Now().Add(t.cfg.DrainTimeout))
}

// Close stops the transport in the order of transports.md §5.9: no new
// work; channel setups end; queued work fails with ErrClosed; every channel
// is closed, waiting for its callbacks; work in flight is waited for (up to
// DrainTimeout); the poller stops; memory is deregistered; the shim engine
// closes (connectors, listener, contexts, thread pools, mempool) and the
// library reference is dropped. Work whose completion never came fails with
// ErrClosed. Close is idempotent and returns the first error.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.life.End()
		t.life.Wait() // channel setups and closers; a connect is bounded by ConnectTimeout
		deadline := time.Now().Add(t.cfg.DrainTimeout)
		t.peersMu.Lock()
		peers := t.peers
		t.peers = map[string]*peer{}
		t.peersMu.Unlock()
		for _, p := range peers {
			p.close(ErrClosed, deadline)
		}
		t.life.Drain(deadline)
		t.events.Close()
		t.pollWG.Wait()
		t.drainCompletions(make([]done, pollBatch))
		var errs []error
		if n := t.life.InFlight(); n > 0 {
			// The shim deregisters what is left after its callbacks stop.
			t.log.Warn("close: batches still in flight after the drain timeout; barex deregisters their memory",
				zap.Int64("batches", n))
		} else {
			for _, r := range t.mem.Take() {
				errs = append(errs, t.deregisterChunks(r.Chunks))
			}
		}
		errs = append(errs, t.nat.Close(time.Until(deadline)))
		// The engine is gone: nothing completes any more.
		for _, b := range t.batches.Drain() {
			b.finish(ErrClosed)
		}
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}
