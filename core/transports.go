package core

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/listen"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/topology/nvmlgpu"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/barex"
	"github.com/pymooncake/pymooncake/core/transport/rdma"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/ibv"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// dataTransport is the one transport an engine installs, as Mooncake does:
// RDMA (or barex) where there are HCAs, TCP otherwise. Requests go to it
// when the target's descriptor names its protocol.
type dataTransport interface {
	Protocol() string
	Submit(ctx context.Context, peer transport.Peer, desc *metadata.SegmentDesc, tasks []*transport.Task)
	PeerHealthy(name string) bool
	ClosePeer(name string)
	Close() error
}

// Optional parts of a transport.
type (
	// memoryRegistrar registers memory with hardware (RDMA MRs).
	memoryRegistrar interface {
		RegisterMemory(addr, length uint64, location string) error
		UnregisterMemory(addr uint64) error
	}
	// describer fills the transport's fields of our descriptor.
	describer interface{ Describe(d *metadata.SegmentDesc) }
	// connector answers Connection handshakes (QP or channel setup).
	connector interface {
		OnConnection(ctx context.Context, req handshake.HandShakeDesc) handshake.HandShakeDesc
	}
)

// tcpTransport adapts the TCP transport: it needs no target descriptor.
type tcpTransport struct{ *tcp.Transport }

func (t tcpTransport) Submit(ctx context.Context, peer transport.Peer, _ *metadata.SegmentDesc, tasks []*transport.Task) {
	t.Transport.Submit(ctx, peer, tasks)
}

func (t tcpTransport) Describe(d *metadata.SegmentDesc) {
	d.TCPDataPort = t.Port()
	d.TCPProtoVersion = t.ProtoVersion()
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

// installTransport picks and starts the data transport: RDMA when an HCA
// is present (or MC_FORCE_HCA) and MC_FORCE_TCP is unset, TCP otherwise.
// An RDMA library or device that is simply absent falls back to TCP; any
// other RDMA failure, or an absence under MC_FORCE_HCA, fails init.
func (e *Engine) installTransport(ctx context.Context) (dataTransport, error) {
	env := e.cfg.Env
	if env.UseBarex {
		// USE_BAREX asks for barex alone: a missing shim is an init error
		// naming the library, never a silent fallback.
		tr, err := e.newBarex(ctx)
		if err != nil {
			return nil, fmt.Errorf("barex transport (USE_BAREX=1): %w", err)
		}
		return tr, nil
	}
	topo := e.cfg.Topology
	if topo == nil {
		var err error
		if topo, err = LocalTopology(env, e.cfg.Devices, false, e.log); err != nil {
			e.log.Warn("topology discovery failed; assuming no RDMA devices", zap.Error(err))
			topo = nil
		}
	}
	if rdma.Wanted(env.ForceTCP, env.ForceHCA, topo) {
		tr, err := e.newRDMA(ctx)
		if err == nil {
			return tr, nil
		}
		if !rdma.FallBackToTCP(err, env.ForceHCA) {
			return nil, fmt.Errorf("rdma transport: %w", err)
		}
		e.log.Info("rdma unavailable; installing tcp", zap.Error(err))
	}
	return e.newTCP()
}

func (e *Engine) newTCP() (dataTransport, error) {
	env := e.cfg.Env
	ln, err := listen.RandomPort(env.MinPort, env.MaxPort, env.IPv6)
	if err != nil {
		return nil, fmt.Errorf("tcp data listener: %w", err)
	}
	t, err := tcp.New(tcp.Config{
		Lanes:         env.TCPLanes,
		StatusTimeout: env.TCPStatusTimeout,
		IOTimeout:     env.TCPStatusTimeout,
		DialTimeout:   env.HandshakeConnectTimeout,
		ForceV1:       env.TCPForceV1,
		PollBudget:    pollBudget(env.TCPPoll),
		Logger:        e.cfg.Logger.Named("tcp"),
		GPU:           e.tcpGPU(),
	}, ln, e.mem.Contains)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("tcp transport: %w", err)
	}
	return tcpTransport{t}, nil
}

// pollBudget maps PYMOONCAKE_TCP_POLL_US to tcp.Config, where 0 means the
// default and a negative budget none.
func pollBudget(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

func (e *Engine) newRDMA(ctx context.Context) (dataTransport, error) {
	env := e.cfg.Env
	topo := e.cfg.Topology
	if topo == nil {
		var err error
		if topo, err = LocalTopology(env, e.cfg.Devices, true, e.log); err != nil {
			return nil, fmt.Errorf("topology: %w", err)
		}
	}
	p := e.cfg.Verbs
	if p == nil {
		var err error
		if p, err = ibv.Open(); err != nil {
			return nil, err
		}
	}
	t, err := rdma.New(ctx, rdmaConfig(env.RDMA), rdma.Deps{
		Provider:  p,
		LocalName: e.name,
		Topology:  topo,
		Handshake: e.sendConnection,
		PeerDesc:  e.peerDesc,
		Logger:    e.cfg.Logger.Named("rdma"),
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// newBarex starts the accl-barex transport; only it loads the shim.
func (e *Engine) newBarex(ctx context.Context) (dataTransport, error) {
	env := e.cfg.Env
	bcfg, err := barex.FromEnv(func(k string) (string, bool) { v, ok := env.Barex[k]; return v, ok })
	if err != nil {
		return nil, fmt.Errorf("environment: %w: %w", ErrInvalidArgument, err)
	}
	topo := e.cfg.Topology
	if topo == nil {
		if topo, err = LocalTopology(env, e.cfg.Devices, true, e.log); err != nil {
			return nil, fmt.Errorf("topology: %w", err)
		}
	}
	t, err := barex.New(ctx, bcfg, barex.Deps{
		LocalName: e.name,
		Topology:  topo,
		Handshake: e.sendConnection,
		// No Locate: RegisterMemory has already named GPU memory cuda:N
		// (core/gpu.go); what stays "*" is host memory.
		Logger: e.cfg.Logger.Named("barex"),
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

func rdmaConfig(r config.RDMAEnv) rdma.Config {
	c := rdma.Config{
		Port: r.Port, GIDIndex: r.GIDIndex, GIDIndexSet: r.GIDIndexSet,
		NumCQPerCtx: r.NumCQPerCtx, NumCompChannelsPerCtx: r.NumCompChannelsPerCtx,
		MaxCQE: r.MaxCQE, MaxEPPerCtx: r.MaxEPPerCtx, NumQPPerEP: r.NumQPPerEP,
		MaxSGE: r.MaxSGE, MaxWR: r.MaxWR, MaxInline: r.MaxInline, MTU: r.MTU,
		SliceSize: r.SliceSize, RetryCnt: r.RetryCnt, PKeyIndex: r.PKeyIndex,
		TrafficClass: r.TrafficClass, TrafficClassSet: r.TrafficClassSet,
		ServiceLevel: r.ServiceLevel, MaxMRSize: r.MaxMRSize,
		RelaxedOrdering: r.RelaxedOrdering, PathRoundRobin: r.PathRoundRobin,
		DestDeviceAffinity: r.DestDeviceAffinity,
	}
	if r.FragmentRatio > 0 && r.SliceSize > 0 {
		c.FragmentLimit = r.SliceSize / r.FragmentRatio
	}
	if r.EndpointStore == "FIFO" {
		c.EndpointStore = rdma.StoreFIFO
	}
	return c
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
	for _, s := range e.segs.load().byHandle {
		if s.desc.Name == name {
			return s.desc, nil
		}
	}
	raw, err := e.dir.fetch(ctx, name)
	if err != nil {
		return nil, err
	}
	d, err := metadata.DecodeSegmentDesc(raw)
	if err != nil {
		return nil, fmt.Errorf("descriptor of %q: %w: %w", name, ErrMetadata, err)
	}
	return d, nil
}
