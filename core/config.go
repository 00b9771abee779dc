package core

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/barex"
	"github.com/pymooncake/pymooncake/core/transport/cudaipc"
	"github.com/pymooncake/pymooncake/core/transport/hostmem"
	"github.com/pymooncake/pymooncake/core/transport/inproc"
	"github.com/pymooncake/pymooncake/core/transport/rdma"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// Config is everything an engine is started from: initialize's arguments
// and the environment, parsed by FromEnv into the engine's part and each
// transport's own.
type Config struct {
	// LocalName is the server name given to initialize.
	LocalName string
	// Metadata is the connection string: "P2PHANDSHAKE", "etcd://h:p[,h:p]",
	// "http://h:p/path", or a bare "h:p" meaning etcd.
	Metadata string
	// Devices is the NIC filter (initialize's device_name): the HCAs RDMA
	// and barex may use. TCP ignores it.
	Devices []string

	// Env is the engine's part of the environment.
	Env config.Env
	// TCP configures the TCP transport (tcp.ConfigFromEnv). New fills its
	// dial timeout, logger and GPU access.
	TCP tcp.Config
	// RDMA configures the RDMA transport (rdma.ConfigFromEnv), used where an
	// HCA is present and MC_FORCE_TCP is unset.
	RDMA rdma.Config
	// Barex configures the barex transport (barex.ConfigFromEnv), used when
	// Env.UseBarex is set.
	Barex barex.Config
	// InProc, CUDAIPC and HostMem configure the same-host transports
	// (inproc.ConfigFromEnv, cudaipc.ConfigFromEnv, hostmem.ConfigFromEnv:
	// PYMOONCAKE_SAME_HOST, PYMOONCAKE_CUDA_IPC): the engine's own segment,
	// GPU memory of other processes of the host, and their host memory,
	// preferred to TCP and RDMA for the peers they accept. New fills
	// HostMem's timeouts, fallback and logger.
	InProc  inproc.Config
	CUDAIPC cudaipc.Config
	HostMem hostmem.Config

	// Logger receives the engine's logs; nil means console lines on stderr
	// at Env.LogLevel (NewLogger).
	Logger *zap.Logger
	// GPU is the GPU driver; nil means the CUDA driver when the process has
	// one (no libcuda or no device: all memory is host memory). It stays
	// the caller's when given. NoGPU forces none.
	GPU   gpu.Driver
	NoGPU bool
	// Staging sizes the page-locked buffers TCP moves GPU memory through
	// (zero: gpu's defaults).
	Staging gpu.StagingConfig

	// Seams for tests, which pass fakes of absent hardware. nil means the
	// real thing.
	//
	// Verbs stands in for libibverbs (core/transport/rdma/verbs/fake).
	Verbs verbs.Provider
	// Topology stands in for this host's sysfs and NVML.
	Topology *topology.Topology
	// OpenStore opens the metadata store of a non-P2P connection string;
	// nil means etcd or HTTP as the string says.
	OpenStore func(ctx context.Context, cs metadata.ConnString, republish func(context.Context) error) (metadata.Store, error)
}

// FromEnv parses every variable an engine reads, through lookup
// (os.LookupEnv, or the Python process's environment): the engine's
// (config.FromEnv) and each transport's (tcp.ConfigFromEnv,
// rdma.ConfigFromEnv, barex.ConfigFromEnv, inproc.ConfigFromEnv,
// cudaipc.ConfigFromEnv, hostmem.ConfigFromEnv), whether or not that
// transport will run, so that any malformed variable fails initialize with
// its name.
// All problems are reported together.
func FromEnv(lookup config.LookupFunc) (Config, error) {
	// One recording parser: the engine logs every variable that was set.
	rec := config.NewParser(lookup)
	env, envErr := config.FromEnv(rec.Lookup)
	tcpCfg, tcpErr := tcp.ConfigFromEnv(rec.Lookup)
	rdmaCfg, rdmaErr := rdma.ConfigFromEnv(rec.Lookup)
	barexCfg, barexErr := barex.ConfigFromEnv(rec.Lookup)
	inprocCfg, inprocErr := inproc.ConfigFromEnv(rec.Lookup)
	ipcCfg, ipcErr := cudaipc.ConfigFromEnv(rec.Lookup)
	hostCfg, hostErr := hostmem.ConfigFromEnv(rec.Lookup)
	if err := errors.Join(envErr, tcpErr, rdmaErr, barexErr, inprocErr, ipcErr, hostErr); err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	env.Set = rec.Set()
	return Config{Env: env, TCP: tcpCfg, RDMA: rdmaCfg, Barex: barexCfg, InProc: inprocCfg, CUDAIPC: ipcCfg, HostMem: hostCfg}, nil
}
