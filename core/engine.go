package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/listen"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// Config says how to start an Engine.
type Config struct {
	// LocalName is the server name given to initialize. In P2P mode only
	// its host is kept: the engine renames itself host:rpc_port.
	LocalName string
	// Metadata is the connection string: "P2PHANDSHAKE", "etcd://h:p[,h:p]",
	// "http://h:p/path", or a bare "h:p" meaning etcd.
	Metadata string
	// Devices is the NIC filter (initialize's device_name); TCP ignores it.
	Devices []string
	// Env is the parsed environment (config.FromEnv).
	Env config.Env
	// Logger receives the engine's logs; nil discards them.
	Logger *zap.Logger
	// Verbs and Topology stand in for libibverbs and host discovery; tests
	// pass the fake fabric (core/transport/rdma/verbs/fake) and a matrix.
	// nil means the real library and this host's sysfs and NVML.
	Verbs    verbs.Provider
	Topology *topology.Topology
	// OpenStore opens the shared metadata store for a non-P2P connection
	// string; nil means etcd or HTTP as the string says. Tests inject here.
	OpenStore func(ctx context.Context, cs metadata.ConnString, env config.Env, log *zap.Logger, republish func(context.Context) error) (metadata.Store, error)
	// GPU is the GPU driver (core/gpu/cuda, or a fake in tests); nil means
	// no GPU: all registered memory is host memory and the stream-ordered
	// transfers are not supported. It stays the caller's and must outlive
	// the engine.
	GPU gpu.Driver
	// Staging sizes the page-locked buffers GPU memory is copied through
	// (zero: gpu's defaults). Used only with GPU.
	Staging gpu.StagingConfig
}

// Engine is a running transfer engine. All methods are safe for concurrent
// use.
type Engine struct {
	cfg  Config
	log  *zap.Logger
	name string
	// instance identifies this process incarnation in our descriptor, so
	// peers can tell a restarted engine from the one they knew.
	instance string
	// dataHost is published as tcp_data_host: where peers connect for data.
	dataHost string

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // background goroutines (orphaned batch reapers)

	closed atomic.Bool
	// published is set once our keys are in the store; only then does Close
	// delete them. A failed init under a live engine's name must not delete
	// that engine's keys (Mooncake 0.3.13 does).
	published atomic.Bool
	closeOnce sync.Once
	closeErr  error

	rpc     *handshake.Server
	rpcPort int
	client  *handshake.Client
	xp      dataTransport // the installed data transport
	dir     directory
	store   metadata.Store // nil in P2P mode
	prefix  string
	// newline: etcd values are FastWriter JSON (trailing newline), HTTP
	// bodies are StreamWriter JSON (none), as Mooncake writes them (§3).
	newline bool

	mem      *memoryTable
	segs     segmentTable
	batches  batchTable
	notifies notifyQueue
	managed  *managedPool
	staging  *gpu.Staging // nil without a GPU driver
	tickets  ticketTable  // transfers ordered on CUDA streams
	bounces  bouncePool   // page-locked buffers of those transfers

	publishMu sync.Mutex // serialises descriptor publication
}

// New starts an engine: it binds the RPC and TCP data listeners on random
// ports of [MC_MIN_RPC_PORT, MC_MAX_RPC_PORT], and in store modes publishes
// its rpc_meta and descriptor.
func New(ctx context.Context, cfg Config) (_ *Engine, err error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	cfg.Logger = log
	if cfg.Env.MaxPort == 0 {
		cfg.Env = config.Defaults()
	}
	cs, err := metadata.ParseConnString(cfg.Metadata)
	if err != nil {
		return nil, fmt.Errorf("initialize: %w: %w", ErrInvalidArgument, err)
	}
	host, _ := metadata.ParseHostPort(cfg.LocalName, cfg.Env.HandshakePort)
	if host == "" {
		return nil, fmt.Errorf("initialize: local server name %q has no host: %w", cfg.LocalName, ErrInvalidArgument)
	}

	e := &Engine{cfg: cfg, log: log.Named("engine"), mem: newMemoryTable(), instance: newInstanceID()}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	e.client = &handshake.Client{
		ConnectTimeout: cfg.Env.HandshakeConnectTimeout,
		MaxFrame:       cfg.Env.HandshakeMaxFrame,
		IPv6:           cfg.Env.IPv6,
	}

	rpcLn, err := listen.RandomPort(cfg.Env.MinPort, cfg.Env.MaxPort, cfg.Env.IPv6)
	if err != nil {
		return nil, fmt.Errorf("initialize: rpc listener: %w", err)
	}
	defer func() {
		if e.rpc == nil {
			rpcLn.Close() // the server did not take it over
		}
	}()
	e.rpcPort = listen.Port(rpcLn)

	if cs.Kind == metadata.P2P {
		e.dataHost = host
		e.name = metadata.JoinHostPort(host, e.rpcPort)
		e.dir = &p2pDirectory{client: e.client, defaultPort: cfg.Env.HandshakePort, own: e.ownDescriptor}
	} else {
		e.name = cfg.LocalName
		open := cfg.OpenStore
		if open == nil {
			open = openStore
		}
		e.prefix = metadata.KeyPrefix(cfg.Env.ClusterID)
		e.newline = cs.Kind == metadata.Etcd
		if e.dataHost, err = advertisedHost(cfg.Env.TCPBindAddress, cfg.Env.IPv6, host); err != nil {
			return nil, fmt.Errorf("initialize: %w", err)
		}
		e.store, err = open(ctx, cs, cfg.Env, log.Named("metadata"), e.republish)
		if err != nil {
			return nil, fmt.Errorf("initialize: metadata store %q: %w: %w", cfg.Metadata, ErrMetadata, err)
		}
		e.dir = &storeDirectory{store: e.store, prefix: e.prefix}
	}

	if cfg.GPU != nil {
		if e.staging, err = gpu.NewStaging(cfg.GPU, cfg.Staging); err != nil {
			return nil, fmt.Errorf("initialize: %w: %w", ErrInvalidArgument, err)
		}
	}
	if e.xp, err = e.installTransport(ctx); err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}

	e.rpc = handshake.NewServer(rpcLn, handshake.ServerConfig{
		MaxFrame: cfg.Env.HandshakeMaxFrame,
		Logger:   log.Named("rpc"),
	}, map[handshake.MsgType]handshake.Handler{
		handshake.Connection: e.onConnection,
		handshake.Legacy:     e.onConnection,
		handshake.Metadata:   e.onMetadata,
		handshake.Notify:     e.onNotify,
		handshake.Probe:      e.onProbe,
	})

	if e.store != nil {
		if err := e.republish(ctx); err != nil {
			return nil, fmt.Errorf("initialize: %w", err)
		}
		e.published.Store(true)
	}
	e.log.Info("engine started",
		zap.String("name", e.name),
		zap.Int("rpc_port", e.rpcPort),
		zap.String("transport", e.xp.Protocol()),
		zap.Int("tcp_data_port", e.DataPort()),
		zap.String("metadata", cfg.Metadata),
		zap.String("gpu", gpuName(cfg.GPU)),
		zap.Strings("env", cfg.Env.SortedSet()))
	return e, nil
}

// Name is the segment name peers open this engine by.
func (e *Engine) Name() string { return e.name }

// RPCPort is the port of the handshake listener.
func (e *Engine) RPCPort() int { return e.rpcPort }

// DataPort is the port of the TCP data listener, or 0 when another
// transport is installed.
func (e *Engine) DataPort() int {
	if t, ok := e.xp.(tcpTransport); ok {
		return t.Port()
	}
	return 0
}

// Protocol is the installed transport's descriptor protocol ("tcp", "rdma").
func (e *Engine) Protocol() string { return e.xp.Protocol() }

// Close stops the engine: listeners, connections, goroutines. Unfinished
// tasks fail. In store modes the engine's own keys are deleted. Managed
// buffers are released; memory the application registered is not touched.
// Close is idempotent and returns the first error.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		var errs []error
		if e.store != nil && e.published.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for _, k := range []string{metadata.RPCMetaKey(e.prefix, e.name), metadata.SegmentKey(e.prefix, e.name)} {
				if err := e.store.Delete(ctx, k); err != nil {
					errs = append(errs, fmt.Errorf("close: delete %q: %w", k, err))
				}
			}
			cancel()
		}
		e.cancel()
		e.tickets.close()
		if e.rpc != nil {
			errs = append(errs, e.rpc.Close())
		}
		if e.xp != nil {
			errs = append(errs, e.xp.Close())
		}
		e.wg.Wait()
		if e.store != nil {
			errs = append(errs, e.store.Close())
		}
		if e.managed != nil {
			errs = append(errs, e.managed.close())
		}
		if e.staging != nil {
			errs = append(errs, e.staging.Close())
		}
		errs = append(errs, e.bounces.close())
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// ownDescriptor is this engine's descriptor as Mooncake's FastWriter writes it.
func (e *Engine) ownDescriptor() []byte {
	b, err := e.localDesc().Marshal(true)
	if err != nil {
		// Marshal fails only for an unknown protocol; ours is "tcp".
		e.log.Error("encode own descriptor", zap.Error(err))
		return []byte("null\n")
	}
	return b
}

func (e *Engine) localDesc() *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{
		Name:            e.name,
		Protocol:        e.xp.Protocol(),
		TCPProtoVersion: 1,
		TCPDataHost:     e.dataHost,
		Extra:           map[string]json.RawMessage{InstanceKey: json.RawMessage(`"` + e.instance + `"`)},
	}
	var locs []string
	gpuBuffers := false
	for _, r := range e.mem.regions() {
		// A TCP buffer is named after the segment; RDMA and barex name it
		// by memory location, and Describe adds the keys.
		name := e.name
		if d.Protocol != metadata.ProtocolTCP {
			name = r.location
		}
		d.Buffers = append(d.Buffers, metadata.BufferDesc{Name: name, Addr: r.addr, Length: r.length})
		locs = append(locs, r.location)
		gpuBuffers = gpuBuffers || r.device != gpu.Host
	}
	if gpuBuffers {
		d.Extra[LocationsKey] = locationsJSON(locs)
	}
	if ds, ok := e.xp.(describer); ok {
		ds.Describe(d)
	}
	return d
}

// republish writes rpc_meta and the descriptor to the store; the store also
// calls it after an outage. It is a no-op in P2P mode.
func (e *Engine) republish(ctx context.Context) error {
	if e.store == nil {
		return nil
	}
	e.publishMu.Lock()
	defer e.publishMu.Unlock()
	meta, err := metadata.RPCMeta{IPOrHostName: e.dataHost, RPCPort: e.rpcPort}.Marshal(e.newline)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.store.Put(ctx, metadata.RPCMetaKey(e.prefix, e.name), meta); err != nil {
		return fmt.Errorf("publish rpc_meta of %q: %w: %w", e.name, ErrMetadata, err)
	}
	return e.publishDescLocked(ctx)
}

// publishDesc writes the current descriptor to the store (store modes).
func (e *Engine) publishDesc(ctx context.Context) error {
	if e.store == nil {
		return nil
	}
	e.publishMu.Lock()
	defer e.publishMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return e.publishDescLocked(ctx)
}

func (e *Engine) publishDescLocked(ctx context.Context) error {
	b, err := e.localDesc().Marshal(e.newline)
	if err != nil {
		return err
	}
	if err := e.store.Put(ctx, metadata.SegmentKey(e.prefix, e.name), b); err != nil {
		return fmt.Errorf("publish descriptor of %q: %w: %w", e.name, ErrMetadata, err)
	}
	return nil
}

// Handshake handlers. Each returns the reply JSON; the server always replies.

func (e *Engine) onConnection(ctx context.Context, _ handshake.MsgType, payload []byte) []byte {
	reply := handshake.HandShakeDesc{}
	// A TCP engine needs no connection setup: it answers an empty
	// HandShakeDesc, as Mooncake's TCP transport does. RDMA and barex set
	// up their side of the connection here.
	if c, ok := e.xp.(connector); ok {
		req, err := handshake.DecodeHandShakeDesc(payload)
		if err != nil {
			reply.ReplyMsg = "malformed handshake: " + err.Error()
		} else {
			reply = c.OnConnection(ctx, req)
		}
	}
	b, err := reply.Marshal()
	if err != nil {
		b, _ = handshake.HandShakeDesc{ReplyMsg: "encode handshake reply"}.Marshal()
	}
	return b
}

func (e *Engine) onMetadata(context.Context, handshake.MsgType, []byte) []byte {
	return e.ownDescriptor()
}

func (e *Engine) onNotify(_ context.Context, _ handshake.MsgType, payload []byte) []byte {
	n, err := handshake.DecodeNotifyMsg(payload)
	if err != nil {
		e.log.Debug("bad notify", zap.Error(err))
		b, _ := handshake.NotifyMsg{}.Marshal()
		return b
	}
	if !e.notifies.push(Notify{Name: n.Name, Msg: n.Msg}) {
		e.log.Warn("notify queue full; refusing notify", zap.String("name", n.Name))
		b, _ := handshake.NotifyMsg{}.Marshal()
		return b
	}
	return handshake.NotifyAck()
}

func (e *Engine) onProbe(context.Context, handshake.MsgType, []byte) []byte {
	return handshake.ProbeReply()
}

// Notifies drains and returns the notifies received so far.
func (e *Engine) Notifies() []Notify { return e.notifies.drain() }

// SendNotify sends n to the engine called segment (its RPC listener).
func (e *Engine) SendNotify(ctx context.Context, segment string, n Notify) error {
	if e.closed.Load() {
		return ErrClosed
	}
	addr, err := e.rpcAddrOf(ctx, segment)
	if err != nil {
		return fmt.Errorf("send notify to %q: %w", segment, err)
	}
	if err := e.client.SendNotify(ctx, addr, handshake.NotifyMsg{Name: n.Name, Msg: n.Msg}); err != nil {
		return fmt.Errorf("send notify to %q at %s: %w", segment, addr, err)
	}
	return nil
}

// Probe checks that the engine called peer answers a Probe message.
func (e *Engine) Probe(ctx context.Context, peer string) error {
	if e.closed.Load() {
		return ErrClosed
	}
	addr, err := e.rpcAddrOf(ctx, peer)
	if err != nil {
		return fmt.Errorf("probe %q: %w", peer, err)
	}
	if err := e.client.Probe(ctx, addr); err != nil {
		return fmt.Errorf("probe %q at %s: %w", peer, addr, err)
	}
	return nil
}

// rpcAddrOf locates name's RPC listener, through its descriptor's name when
// name is an open segment.
func (e *Engine) rpcAddrOf(ctx context.Context, name string) (string, error) {
	if s, ok := e.segs.lookup(name); ok {
		name = s.desc.Name
	}
	if name == "" {
		return "", fmt.Errorf("empty peer name: %w", ErrInvalidArgument)
	}
	return e.dir.rpcAddr(ctx, name)
}

// RegisterMemory registers [addr, addr+length) so that peers may read and
// write it. location is "*", "cpu:N" or "cuda:N". With a GPU driver, where
// the memory lives is detected: GPU memory is recorded as "cuda:<ordinal>"
// whatever location was given, and moved through staging buffers.
func (e *Engine) RegisterMemory(addr uintptr, length uint64, location string) error {
	return e.RegisterMemoryBatch([]uintptr{addr}, []uint64{length}, location)
}

// RegisterMemoryBatch registers several regions at once: all or none, with
// one descriptor publication.
func (e *Engine) RegisterMemoryBatch(addrs []uintptr, lengths []uint64, location string) error {
	if e.closed.Load() {
		return ErrClosed
	}
	if len(addrs) != len(lengths) {
		return fmt.Errorf("register memory: %d addresses but %d lengths: %w", len(addrs), len(lengths), ErrInvalidArgument)
	}
	rs := make([]region, len(addrs))
	for i := range addrs {
		rs[i] = region{addr: uint64(addrs[i]), length: lengths[i], location: location, device: gpu.Host}
	}
	if err := e.locate(rs); err != nil {
		return err
	}
	if err := e.mem.add(rs); err != nil {
		return err
	}
	starts := make([]uint64, len(rs))
	for i, r := range rs {
		starts[i] = r.addr
	}
	// RDMA registers with every HCA; a failure undoes the whole batch.
	reg, _ := e.xp.(memoryRegistrar)
	undo := func(n int) {
		for _, r := range rs[:n] {
			if err := reg.UnregisterMemory(r.addr); err != nil {
				e.log.Warn("undo registration", zap.Uint64("addr", r.addr), zap.Error(err))
			}
		}
		e.mem.remove(starts) // the registration did not take effect anywhere
	}
	if reg != nil {
		for i, r := range rs {
			if err := reg.RegisterMemory(r.addr, r.length, r.location); err != nil {
				undo(i)
				return fmt.Errorf("register memory [%#x, +%d) with %s: %w", r.addr, r.length, e.xp.Protocol(), err)
			}
		}
	}
	if err := e.publishDesc(e.ctx); err != nil {
		if reg != nil {
			undo(len(rs))
		} else {
			e.mem.remove(starts)
		}
		return fmt.Errorf("register memory: %w", err)
	}
	return nil
}

// UnregisterMemory unregisters the region starting at addr.
func (e *Engine) UnregisterMemory(addr uintptr) error {
	return e.UnregisterMemoryBatch([]uintptr{addr})
}

// UnregisterMemoryBatch unregisters several regions: all or none.
func (e *Engine) UnregisterMemoryBatch(addrs []uintptr) error {
	if e.closed.Load() {
		return ErrClosed
	}
	starts := make([]uint64, len(addrs))
	for i, a := range addrs {
		starts[i] = uint64(a)
	}
	removed, err := e.mem.remove(starts)
	if err != nil {
		return err
	}
	if err := e.publishDesc(e.ctx); err != nil {
		e.mem.add(removed) // put them back: they are still registered everywhere
		return fmt.Errorf("unregister memory: %w", err)
	}
	if reg, ok := e.xp.(memoryRegistrar); ok {
		var errs []error
		for _, r := range removed {
			if err := reg.UnregisterMemory(r.addr); err != nil {
				errs = append(errs, fmt.Errorf("unregister [%#x, +%d) from %s: %w", r.addr, r.length, e.xp.Protocol(), err))
			}
		}
		return errors.Join(errs...)
	}
	return nil
}

// CheckLocal reports whether [addr, addr+length) lies inside one registered
// region of this engine.
func (e *Engine) CheckLocal(addr uintptr, length uint64) error {
	// The bounce buffers of stream-ordered transfers are local memory of
	// the engine's own: never published, never reachable by peers.
	if !e.mem.Contains(uint64(addr), length) && !e.bounces.contains(uint64(addr), length) {
		return fmt.Errorf("local range [%#x, +%d) is not inside registered memory: %w", addr, length, ErrAddressNotRegistered)
	}
	return nil
}
