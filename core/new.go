package core

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/cuda"
	"github.com/pymooncake/pymooncake/core/internal/listen"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/topology/nvmlgpu"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/barex"
	"github.com/pymooncake/pymooncake/core/transport/hostmem"
	"github.com/pymooncake/pymooncake/core/transport/rdma"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/ibv"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// New starts an engine from cfg: it builds the logger (unless given),
// opens the GPU driver when the process has one, and hands the engine the
// transports this host runs, in order of preference (see transports).
// Everything New opens is released when the engine closes.
func New(ctx context.Context, cfg Config) (*engine.Engine, error) {
	if cfg.Env.MaxPort == 0 {
		cfg.Env = config.Defaults()
	}
	log := cfg.Logger
	if log == nil {
		log = NewLogger(cfg.Env.LogLevel)
	}
	var atClose []func() error
	drv := cfg.GPU
	if drv == nil && !cfg.NoGPU {
		if d := openCUDA(log); d != nil {
			drv = d
			atClose = append(atClose, d.Close)
		}
	}
	b := &builder{cfg: cfg, log: log, gpu: drv}
	if drv != nil {
		st, err := gpu.NewStaging(drv, cfg.Staging)
		if err != nil {
			releaseAll(atClose, log)
			return nil, fmt.Errorf("initialize: %w: %w", engine.ErrInvalidArgument, err)
		}
		b.staging = st
		// Closed before the driver: staging buffers are the driver's.
		atClose = append([]func() error{st.Close}, atClose...)
	}
	open := cfg.OpenStore
	if open == nil {
		open = func(ctx context.Context, cs metadata.ConnString, republish func(context.Context) error) (metadata.Store, error) {
			return openStore(ctx, cs, cfg.Env, log.Named("metadata"), republish)
		}
	}
	e, err := engine.New(ctx, engine.Config{
		LocalName:  cfg.LocalName,
		Metadata:   cfg.Metadata,
		Env:        cfg.Env,
		Logger:     log,
		Memory:     memory.New(),
		Transports: b.transports,
		OpenStore:  open,
		GPU:        drv,
		AtClose:    atClose,
	})
	if err != nil {
		return nil, err // engine.New has run AtClose
	}
	return e, nil
}

// releaseAll runs the releases of what New opened, when New fails before
// the engine took them over.
func releaseAll(fs []func() error, log *zap.Logger) {
	for _, f := range fs {
		if err := f(); err != nil {
			log.Warn("release after a failed initialize", zap.Error(err))
		}
	}
}

// NewLogger builds the engine's logger: console lines on stderr at level,
// as Mooncake's glog writes to stderr by default. Failures that Python
// reports through return codes are logged on the Python side
// (logging.getLogger("pymooncake")); this logger carries what happens in
// the background (peers, connections, stores).
func NewLogger(level zapcore.Level) *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	enc.EncodeLevel = zapcore.CapitalLevelEncoder
	c := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), level)
	return zap.New(c).Named("pymooncake")
}

// openCUDA opens the CUDA driver: nil when the process has none (no
// libcuda or no device: GPU memory cannot exist here), or when it is
// present but unusable (logged: GPU memory is then refused by the TCP
// transport's lack of staging rather than touched in place).
func openCUDA(log *zap.Logger) *cuda.Driver {
	d, err := cuda.Open(cuda.Options{})
	switch {
	case err == nil:
		log.Debug("gpu memory supported", zap.String("driver", d.Name()))
		return d
	case errors.Is(err, cuda.ErrUnavailable):
		log.Debug("no CUDA driver or device; all memory is host memory", zap.Error(err))
	default:
		log.Warn("CUDA driver present but unusable; GPU memory is not supported", zap.Error(err))
	}
	return nil
}

// builder builds an engine's transports once the engine has a name.
type builder struct {
	cfg     Config
	log     *zap.Logger
	gpu     gpu.Driver
	staging *gpu.Staging // nil without a GPU
}

// transports builds the engine's transports, in order of preference: the
// same-host ones (samehost.go), then the data transport of the host.
func (b *builder) transports(ctx context.Context, s engine.Services) ([]transport.Transport, error) {
	data, err := b.dataTransports(ctx, s)
	if err != nil {
		return nil, err
	}
	return b.sameHost(s, data)
}

// dataTransports picks and starts the data transports, as Mooncake chooses one:
// barex alone with USE_BAREX; else RDMA when an HCA is present (or
// MC_FORCE_HCA) and MC_FORCE_TCP is unset; else TCP. An RDMA library or
// device that is simply absent falls back to TCP; any other RDMA failure,
// or an absence under MC_FORCE_HCA, fails init. Before RDMA or TCP comes
// the same-host transport for host memory (see withSameHost).
func (b *builder) dataTransports(ctx context.Context, s engine.Services) ([]transport.Transport, error) {
	env := b.cfg.Env
	if env.UseBarex {
		// USE_BAREX asks for barex alone: a missing shim is an init error
		// naming the library, never a silent fallback.
		t, err := b.barex(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("barex transport (USE_BAREX=1): %w", err)
		}
		return []transport.Transport{t}, nil
	}
	topo := b.cfg.Topology
	if topo == nil {
		var err error
		if topo, err = LocalTopology(env, b.cfg.Devices, false, b.log); err != nil {
			b.log.Warn("topology discovery failed; assuming no RDMA devices", zap.Error(err))
			topo = nil
		}
	}
	if rdma.Wanted(env.ForceTCP, env.ForceHCA, topo) {
		t, err := b.rdma(ctx, s)
		if err == nil {
			return b.withSameHost(s, t)
		}
		if !rdma.FallBackToTCP(err, env.ForceHCA) {
			return nil, fmt.Errorf("rdma transport: %w", err)
		}
		b.log.Info("rdma unavailable; installing tcp", zap.Error(err))
	}
	t, err := b.tcp(s)
	if err != nil {
		return nil, err
	}
	return b.withSameHost(s, t)
}

// withSameHost puts the same-host transport for host memory before base,
// which it hands what it does not serve (GPU memory, peers it cannot
// reach), unless PYMOONCAKE_SAME_HOST=0. The engine then prefers it for
// the peers it accepts: pymooncake peers on this host, in this network
// namespace. A transport that cannot start is logged and left out, unless
// PYMOONCAKE_SAME_HOST asked for it.
func (b *builder) withSameHost(s engine.Services, base transport.Transport) ([]transport.Transport, error) {
	cfg := b.cfg.HostMem
	if cfg.Mode == hostmem.Off {
		return []transport.Transport{base}, nil
	}
	env := b.cfg.Env
	cfg.Fallback, cfg.Logger = base, b.log
	cfg.DialTimeout, cfg.UnregisterTimeout = env.HandshakeConnectTimeout, env.TransferTimeout
	h, err := hostmem.New(cfg, s.Memory)
	switch {
	case err == nil:
		return []transport.Transport{h, base}, nil
	case cfg.Required:
		base.Close()
		return nil, fmt.Errorf("same-host transport (PYMOONCAKE_SAME_HOST is set): %w", err)
	case errors.Is(err, hostmem.ErrUnavailable):
		b.log.Info("same-host transport unavailable; peers on this host use "+base.Name(), zap.Error(err))
	default:
		b.log.Warn("same-host transport failed to start; peers on this host use "+base.Name(), zap.Error(err))
	}
	return []transport.Transport{base}, nil
}

func (b *builder) tcp(s engine.Services) (transport.Transport, error) {
	env := b.cfg.Env
	ln, err := listen.RandomPort(env.MinPort, env.MaxPort, env.IPv6)
	if err != nil {
		return nil, fmt.Errorf("tcp data listener: %w", err)
	}
	cfg := b.cfg.TCP
	cfg.DialTimeout = env.HandshakeConnectTimeout
	cfg.Logger = b.log
	if b.staging != nil {
		cfg.GPU = &tcpGPU{mem: s.Memory, staging: b.staging}
	}
	t, err := tcp.New(cfg, ln, s.Memory)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("tcp transport: %w", err)
	}
	return t, nil
}

// tcpGPU is tcp.GPU over the engine's registrations and staging pool.
type tcpGPU struct {
	mem     *memory.Table
	staging *gpu.Staging
}

func (g *tcpGPU) Device(addr, n uint64) int { return g.mem.Device(addr, n) }

func (g *tcpGPU) Stage(ord int) (tcp.Stage, error) {
	st, err := g.staging.Get(ord)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (b *builder) rdma(ctx context.Context, s engine.Services) (transport.Transport, error) {
	env := b.cfg.Env
	topo := b.cfg.Topology
	if topo == nil {
		var err error
		if topo, err = LocalTopology(env, b.cfg.Devices, true, b.log); err != nil {
			return nil, fmt.Errorf("topology: %w", err)
		}
	}
	p := b.cfg.Verbs
	if p == nil {
		var err error
		if p, err = ibv.Open(); err != nil {
			return nil, err
		}
	}
	deps := rdma.Deps{
		Provider:  p,
		LocalName: s.Name,
		Topology:  topo,
		Handshake: s.Handshake,
		PeerDesc:  s.PeerDesc,
		Logger:    b.log,
	}
	if b.gpu != nil {
		// GPU memory registers through a dma-buf where nvidia-peermem is
		// not loaded.
		deps.DmaBuf = b.gpu.ExportDmaBuf
	}
	t, err := rdma.New(ctx, b.cfg.RDMA, deps)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// barex starts the accl-barex transport; only it loads the shim.
func (b *builder) barex(ctx context.Context, s engine.Services) (transport.Transport, error) {
	topo := b.cfg.Topology
	if topo == nil {
		var err error
		if topo, err = LocalTopology(b.cfg.Env, b.cfg.Devices, true, b.log); err != nil {
			return nil, fmt.Errorf("topology: %w", err)
		}
	}
	t, err := barex.New(ctx, b.cfg.Barex, barex.Deps{
		LocalName: s.Name,
		Topology:  topo,
		Handshake: s.Handshake,
		// No Locate: RegisterMemory has already named GPU memory cuda:N;
		// what stays "*" is host memory.
		Logger: b.log,
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// LocalTopology is the host's topology: the file MC_CUSTOM_TOPO_JSON names,
// or HCAs and NUMA nodes from sysfs (filtered by devices) and, when withGPUs
// is set, GPUs from NVML, numbered as CUDA numbers them.
func LocalTopology(env config.Env, devices []string, withGPUs bool, log *zap.Logger) (*topology.Topology, error) {
	if env.CustomTopoJSON != "" {
		t, err := topology.LoadCustom(env.CustomTopoJSON)
		if err != nil {
			return nil, fmt.Errorf("MC_CUSTOM_TOPO_JSON: %w", err)
		}
		return t, nil
	}
	var gpus topology.GPUInfo
	if withGPUs {
		gpus = nvmlgpu.New(nvmlgpu.Options{
			VisibleDevices:    env.CUDAVisibleDevices,
			VisibleDevicesSet: env.CUDAVisibleDevicesSet,
			DeviceOrder:       env.CUDADeviceOrder,
			Logger:            log,
		})
	}
	return topology.Discover(os.DirFS("/"), gpus, devices)
}
