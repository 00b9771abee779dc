package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/batch"
	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/listen"
	"github.com/pymooncake/pymooncake/core/managed"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Config says how to start an Engine. The composition root (package core)
// fills it from initialize's arguments and the environment.
type Config struct {
	// LocalName is the server name given to initialize. In P2P mode only
	// its host is kept: the engine renames itself host:rpc_port.
	LocalName string
	// Metadata is the connection string: "P2PHANDSHAKE", "etcd://h:p[,h:p]",
	// "http://h:p/path", or a bare "h:p" meaning etcd.
	Metadata string
	// Env is the engine's part of the environment (config.FromEnv).
	Env config.Env
	// Logger receives the engine's logs; nil discards them.
	Logger *zap.Logger
	// Memory is the table of registered memory, shared with the transports
	// that validate peers' requests against it; nil means a new one.
	Memory *memory.Table
	// Transports builds the data transports once the engine has a name,
	// in order of preference: the engine picks, for each peer, the first
	// that accepts its descriptor. It must return at least one. The engine
	// closes them.
	Transports func(ctx context.Context, s Services) ([]transport.Transport, error)
	// OpenStore opens the shared metadata store of a non-P2P connection
	// string. republish is to be called after the store lost and regained
	// its session, so that our keys are written again.
	OpenStore func(ctx context.Context, cs metadata.ConnString, republish func(context.Context) error) (metadata.Store, error)
	// GPU is the GPU driver; nil means no GPU: all registered memory is
	// host memory and stream-ordered transfers are not supported.
	GPU gpu.Driver
	// AtClose runs, in order, after the engine and its transports have
	// stopped: the root releases there what it opened for the engine (GPU
	// staging, the driver). Their errors join Close's.
	AtClose []func() error
	// NoMetrics records no metrics (Metrics is empty; Env.MetricsAddr and
	// Env.MetricsReport must be unset): the engine's benchmarks measure
	// what recording costs with it.
	NoMetrics bool
}

// Services is what the engine offers the transports it runs: built once the
// engine knows its name, handed to Config.Transports.
type Services struct {
	// Name is the engine's segment name.
	Name string
	// Instance is the random id of this engine's incarnation, published
	// in its descriptor (metadata.InstanceKey): a descriptor carrying it is
	// this engine's own.
	Instance string
	// Memory is the table of registered local memory.
	Memory *memory.Table
	// Handshake sends a Connection message to the named peer's RPC
	// listener and returns its reply (the active side of RDMA and barex
	// connection setups).
	Handshake func(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error)
	// PeerDesc returns the named peer's descriptor: the one of an open
	// segment, else fetched.
	PeerDesc func(ctx context.Context, peer string) (*metadata.SegmentDesc, error)
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
	wg     sync.WaitGroup // background goroutines (reapers, stream transfers)

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
	xps     []transport.Transport // in order of preference
	dir     segment.Directory
	store   metadata.Store // nil in P2P mode
	prefix  string
	// newline: etcd values are FastWriter JSON (trailing newline), HTTP
	// bodies are StreamWriter JSON (none), as Mooncake writes them (§3).
	newline bool
	// chosen remembers the peers whose transport was logged (once each).
	chosen sync.Map

	mem      *memory.Table
	segs     segment.Table
	batches  batch.Table
	notifies notifyQueue
	managed  *managed.Pool
	tickets  ticketTable    // transfers ordered on CUDA streams
	bounces  gpu.BouncePool // page-locked buffers of those transfers

	metrics    *metrics.Set    // nil with Config.NoMetrics
	metricsSrv *metrics.Server // nil unless Env.MetricsAddr is set

	publishMu sync.Mutex // serialises descriptor publication
}

// New starts an engine: it binds the RPC listener on a random port of
// [MC_MIN_RPC_PORT, MC_MAX_RPC_PORT], builds the transports, and in store
// modes publishes its rpc_meta and descriptor.
func New(ctx context.Context, cfg Config) (_ *Engine, err error) {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	cfg.Logger = log
	if cfg.Env.MaxPort == 0 {
		cfg.Env = config.Defaults()
	}
	if cfg.Memory == nil {
		cfg.Memory = memory.New()
	}
	e := &Engine{cfg: cfg, log: log.Named("engine"), mem: cfg.Memory, instance: metadata.NewInstanceID()}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if !cfg.NoMetrics {
		e.metrics = metrics.New(metrics.Config{MaxPeers: cfg.Env.MetricsMaxPeers, State: e.metricsState})
	}
	e.managed = managed.New(func(addr uintptr, n uint64) error { return e.RegisterMemory(addr, n, "*") }, e.UnregisterMemory)
	e.bounces.Register, e.bounces.Unregister = e.registerBounce, e.unregisterBounce
	// From here on, a failure closes what was started and runs AtClose.
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if cfg.Transports == nil {
		return nil, fmt.Errorf("initialize: no transport: %w", ErrInvalidArgument)
	}
	cs, err := metadata.ParseConnString(cfg.Metadata)
	if err != nil {
		return nil, fmt.Errorf("initialize: %w: %w", ErrInvalidArgument, err)
	}
	host, _ := metadata.ParseHostPort(cfg.LocalName, cfg.Env.HandshakePort)
	if host == "" {
		return nil, fmt.Errorf("initialize: local server name %q has no host: %w", cfg.LocalName, ErrInvalidArgument)
	}

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
		e.dir = segment.NewP2P(e.client, cfg.Env.HandshakePort, e.Descriptor)
	} else {
		if cfg.OpenStore == nil {
			return nil, fmt.Errorf("initialize: metadata store %q: no store opener: %w", cfg.Metadata, ErrNotSupported)
		}
		e.name = cfg.LocalName
		e.prefix = metadata.KeyPrefix(cfg.Env.ClusterID)
		e.newline = cs.Kind == metadata.Etcd
		if e.dataHost, err = advertisedHost(cfg.Env.TCPBindAddress, cfg.Env.IPv6, host); err != nil {
			return nil, fmt.Errorf("initialize: %w", err)
		}
		e.store, err = cfg.OpenStore(ctx, cs, e.Republish)
		if err != nil {
			return nil, fmt.Errorf("initialize: metadata store %q: %w: %w", cfg.Metadata, ErrMetadata, err)
		}
		e.dir = segment.NewStore(e.store, e.prefix)
	}

	e.xps, err = cfg.Transports(ctx, Services{Name: e.name, Instance: e.instance, Memory: e.mem, Handshake: e.sendConnection, PeerDesc: e.peerDesc})
	if err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}
	if len(e.xps) == 0 {
		return nil, fmt.Errorf("initialize: no transport was built: %w", ErrInvalidArgument)
	}
	if err := e.startMetrics(); err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}

	e.notifies.init(cfg.Env, e.log)
	e.rpc = handshake.NewServer(rpcLn, handshake.ServerConfig{
		MaxFrame:        cfg.Env.HandshakeMaxFrame,
		HeaderTimeout:   cfg.Env.HandshakeHeaderTimeout,
		MaxConns:        cfg.Env.HandshakeMaxConns,
		MaxConnsPerPeer: cfg.Env.HandshakeMaxConnsPerPeer,
		Logger:          log.Named("rpc"),
	}, map[handshake.MsgType]handshake.Handler{
		handshake.Connection: e.onConnection,
		handshake.Legacy:     e.onConnection,
		handshake.Metadata:   e.onMetadata,
		handshake.Notify:     e.onNotify,
		handshake.Probe:      e.onProbe,
	})

	if e.store != nil {
		if err := e.Republish(ctx); err != nil {
			return nil, fmt.Errorf("initialize: %w", err)
		}
		e.published.Store(true)
	}
	names := make([]string, len(e.xps))
	for i, x := range e.xps {
		names[i] = x.Name()
	}
	e.log.Info("engine started",
		zap.String("name", e.name),
		zap.Int("rpc_port", e.rpcPort),
		zap.String("protocol", e.Protocol()),
		zap.Strings("transports", names),
		zap.String("metadata", cfg.Metadata),
		zap.String("gpu", gpuName(cfg.GPU)),
		metricsField(e.MetricsAddr()),
		zap.Strings("env", cfg.Env.SortedSet()))
	return e, nil
}

// Name is the segment name peers open this engine by.
func (e *Engine) Name() string { return e.name }

// RPCPort is the port of the handshake listener.
func (e *Engine) RPCPort() int { return e.rpcPort }

// Logger is the engine's logger (the root's, unnamed).
func (e *Engine) Logger() *zap.Logger { return e.cfg.Logger }

// Env is the engine's part of the environment it was started with.
func (e *Engine) Env() config.Env { return e.cfg.Env }

// Protocol is the protocol this engine publishes ("tcp", "rdma", "barex"):
// the one Mooncake peers route requests to it by.
func (e *Engine) Protocol() string { return e.localDesc().Protocol }

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
		if e.metricsSrv != nil {
			errs = append(errs, e.metricsSrv.Close())
		}
		if e.rpc != nil {
			errs = append(errs, e.rpc.Close())
		}
		for _, x := range e.xps {
			errs = append(errs, x.Close())
		}
		e.wg.Wait()
		if e.store != nil {
			errs = append(errs, e.store.Close())
		}
		errs = append(errs, e.managed.Close(), e.bounces.Close())
		for _, f := range e.cfg.AtClose {
			errs = append(errs, f())
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// LocationsKey is the descriptor key under which a pymooncake engine
// publishes each buffer's location ("cuda:0", "cpu:0", "*"), in buffer
// order, when any of its buffers is GPU memory. Mooncake's TCP descriptors
// put the segment name where RDMA descriptors put the location, so the
// buffers themselves stay as Mooncake writes them; Mooncake ignores the key.
const LocationsKey = "pymooncake_buffer_locations"

// Descriptor is this engine's descriptor as Mooncake's FastWriter writes
// it: what a Metadata request is answered with.
func (e *Engine) Descriptor() []byte {
	b, err := e.localDesc().Marshal(true)
	if err != nil {
		// Marshal fails only for a protocol it does not know, which no
		// transport of ours publishes.
		e.log.Error("encode own descriptor", zap.Error(err))
		return []byte("null\n")
	}
	return b
}

// localDesc builds our descriptor: the engine's fields and buffers, then
// each transport's part (Describer), most preferred last so that its
// protocol is the one published.
func (e *Engine) localDesc() *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{
		Name:            e.name,
		TCPProtoVersion: 1,
		TCPDataHost:     e.dataHost,
		Extra:           map[string]json.RawMessage{metadata.InstanceKey: json.RawMessage(`"` + e.instance + `"`)},
	}
	gpuBuffers := false
	for _, r := range e.mem.Regions() {
		// A TCP buffer is named after the segment; RDMA and barex name it
		// by memory location, and their Describe renames it.
		d.Buffers = append(d.Buffers, metadata.BufferDesc{Name: e.name, Addr: r.Addr, Length: r.Length})
		gpuBuffers = gpuBuffers || r.Device != memory.Host
	}
	for i := len(e.xps) - 1; i >= 0; i-- {
		if ds, ok := e.xps[i].(transport.Describer); ok {
			ds.Describe(d)
		}
	}
	if gpuBuffers {
		// Paired by index with the buffers as the transports left them:
		// RDMA and barex publish a registration as several chunks, and
		// leave out what they did not register.
		locs := make([]string, len(d.Buffers))
		for i, b := range d.Buffers {
			locs[i] = "*"
			if r, ok := e.mem.Find(b.Addr, b.Length); ok {
				locs[i] = r.Location
			}
		}
		d.Extra[LocationsKey] = locationsJSON(locs)
	}
	return d
}

func locationsJSON(locs []string) json.RawMessage {
	b, err := json.Marshal(locs)
	if err != nil {
		return json.RawMessage("[]") // strings always marshal
	}
	return b
}

// Republish writes rpc_meta and the descriptor to the store; the store also
// calls it after an outage. It is a no-op in P2P mode.
func (e *Engine) Republish(ctx context.Context) error {
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
	for _, x := range e.xps {
		c, ok := x.(transport.Connector)
		if !ok {
			continue
		}
		req, err := handshake.DecodeHandShakeDesc(payload)
		if err != nil {
			reply.ReplyMsg = "malformed handshake: " + err.Error()
		} else {
			reply = c.OnConnection(ctx, req)
		}
		break
	}
	b, err := reply.Marshal()
	if err != nil {
		b, _ = handshake.HandShakeDesc{ReplyMsg: "encode handshake reply"}.Marshal()
	}
	return b
}

func (e *Engine) onMetadata(context.Context, handshake.MsgType, []byte) []byte {
	return e.Descriptor()
}

func (e *Engine) onProbe(context.Context, handshake.MsgType, []byte) []byte {
	return handshake.ProbeReply()
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
	if s, ok := e.segs.Lookup(name); ok {
		name = s.Peer.Name
	}
	if name == "" {
		return "", fmt.Errorf("empty peer name: %w", ErrInvalidArgument)
	}
	return e.dir.RPCAddr(ctx, name)
}

// sendConnection sends a Connection handshake to peer's RPC listener: the
// active side of an RDMA (or barex) connection setup.
func (e *Engine) sendConnection(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
	addr, err := e.rpcAddrOf(ctx, peer)
	if err != nil {
		return handshake.HandShakeDesc{}, err
	}
	body, err := req.Marshal()
	if err != nil {
		return handshake.HandShakeDesc{}, err
	}
	raw, err := e.client.Call(ctx, addr, handshake.Connection, body)
	if err != nil {
		return handshake.HandShakeDesc{}, fmt.Errorf("connection handshake with %s: %w", addr, err)
	}
	return handshake.DecodeHandShakeDesc(raw)
}

// peerDesc is a peer's descriptor: the one of an open segment of that
// name, else fetched (the passive side of a connection needs the active
// side's NIC gids and lids, as Mooncake's does).
func (e *Engine) peerDesc(ctx context.Context, name string) (*metadata.SegmentDesc, error) {
	if s, ok := e.segs.ByPeer(name); ok {
		return s.Desc(), nil
	}
	raw, err := e.dir.Fetch(ctx, name)
	if err != nil {
		return nil, err
	}
	d, err := metadata.DecodeSegmentDesc(raw)
	if err != nil {
		return nil, fmt.Errorf("descriptor of %q: %w: %w", name, ErrMetadata, err)
	}
	return d, nil
}

// metricsField names the metrics endpoint in the start line, if any.
func metricsField(addr string) zap.Field {
	if addr == "" {
		return zap.Skip()
	}
	return zap.String("metrics_endpoint", addr)
}

func gpuName(d gpu.Driver) string {
	if d == nil {
		return "none"
	}
	return d.Name()
}
