package cudaipc

import (
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/hostid"
)

// Defaults of Config's durations.
const (
	DefaultOpenTimeout = 5 * time.Second
	DefaultDropTimeout = 10 * time.Second
)

// Config is the transport's part of the environment, plus test seams.
type Config struct {
	// Off: PYMOONCAKE_CUDA_IPC=0 or PYMOONCAKE_SAME_HOST=0. The
	// composition root then does not build the transport.
	Off bool
	// OpenTimeout bounds connecting to a peer's socket and one exchange on
	// it (zero: DefaultOpenTimeout).
	OpenTimeout time.Duration
	// DropTimeout bounds how long an unregistration waits for the peers
	// that mapped the memory to drop it, and how long dropping a mapping
	// waits for the copies that use it (zero: DefaultDropTimeout).
	DropTimeout time.Duration

	// Seams for tests, which run two "processes" of a host in one: this
	// process's identity (nil: hostid.Local) and which pids are alive
	// (nil: hostid.Alive).
	Identity *Identity
	Alive    func(pid int) bool
}

// Identity is what a process publishes so that its peers can tell it runs
// on their host, in their namespaces (hostid.Identity).
type Identity = hostid.Identity

// ConfigFromEnv parses PYMOONCAKE_CUDA_IPC (a boolean, default on; a
// malformed value is an error naming it) and reads PYMOONCAKE_SAME_HOST,
// whose false spelling (0) also turns the transport off (its other values
// are the host-memory transport's to validate).
func ConfigFromEnv(lookup config.LookupFunc) (Config, error) {
	p := config.NewParser(lookup)
	on := true
	p.Bool(&on, "PYMOONCAKE_CUDA_IPC")
	return Config{Off: !on || p.SameHostOff()}, p.Err()
}

// Deps is what the transport runs on; the composition root fills it from
// the engine's Services.
type Deps struct {
	// Name and Instance are the engine's segment name and incarnation id.
	Name, Instance string
	// Memory is the engine's registered memory: what peers may map, and
	// the local ends of transfers.
	Memory *memory.Table
	// GPU is the GPU driver. It must implement gpu.IPC, else New fails
	// with an error matching transport.ErrUnavailable.
	GPU gpu.Driver
	// Fallback are the transports, in order of preference, that move what
	// CUDA IPC does not: the peer's host memory, GPU memory it cannot
	// export or that no device here reaches, and every transfer while a
	// CUDA stream is held (transport.SubmitOptions.Held). For each peer
	// the first that accepts it is used. The transport neither owns nor
	// closes them.
	Fallback []transport.Transport
	// Logger receives the transport's logs; nil discards them.
	Logger *zap.Logger
}

func (c Config) openTimeout() time.Duration {
	if c.OpenTimeout > 0 {
		return c.OpenTimeout
	}
	return DefaultOpenTimeout
}

func (c Config) dropTimeout() time.Duration {
	if c.DropTimeout > 0 {
		return c.DropTimeout
	}
	return DefaultDropTimeout
}
