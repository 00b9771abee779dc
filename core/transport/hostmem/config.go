package hostmem

import (
	"fmt"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Mode says which same-host paths may serve a peer.
type Mode int

const (
	// Auto tries cross-memory attach, then the shared-memory ring.
	Auto Mode = iota
	// CMAOnly uses cross-memory attach or nothing (the fallback then).
	CMAOnly
	// RingOnly never tries cross-memory attach.
	RingOnly
	// Off builds no same-host transport (PYMOONCAKE_SAME_HOST=0): New
	// refuses it; the composition root leaves the transport out.
	Off
)

func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case CMAOnly:
		return "cma"
	case RingOnly:
		return "shm"
	case Off:
		return "off"
	}
	return "invalid"
}

// Defaults and limits of Config.
const (
	DefaultChunk             = 1 << 20
	DefaultRingBytes         = 16 << 20
	DefaultRingSlots         = 8
	MaxRingBytes             = 1 << 30
	MaxRingSlots             = 64
	DefaultRegions           = 1 << 16
	MaxRegions               = 1 << 20
	DefaultIOTimeout         = 30 * time.Second
	DefaultDialTimeout       = 5 * time.Second
	DefaultUnregisterTimeout = 30 * time.Second
	// DefaultMaxConns bounds the initiators the control socket serves at
	// once; MaxConnsLimit bounds the setting.
	DefaultMaxConns = 1024
	MaxConnsLimit   = 1 << 20
	// minRingSlot is the smallest slot of the ring.
	minRingSlot = 64 << 10
)

// Config configures a Transport. Zero values mean the documented defaults.
type Config struct {
	// Mode chooses the paths (PYMOONCAKE_SAME_HOST): Auto, CMAOnly or
	// RingOnly. Off is not a mode New runs.
	Mode Mode
	// Required makes a failure to start the transport an initialize error
	// (PYMOONCAKE_SAME_HOST set to anything but 0); otherwise the
	// composition root logs it and goes on without it.
	Required bool
	// Workers is how many goroutines copy asynchronous and large batches
	// over cross-memory attach. Default: the number of CPUs, at most 4.
	Workers int
	// Chunk is how many bytes one cross-memory-attach system call moves at
	// most; larger batches are cut into chunks that the workers (and a
	// synchronous caller) copy in parallel. Default 1 MiB.
	Chunk uint64
	// RingBytes and RingSlots size the shared-memory ring an initiator
	// creates per peer when cross-memory attach is not allowed: RingSlots
	// requests in flight of RingBytes/RingSlots bytes each. Defaults
	// 16 MiB and 8.
	RingBytes uint64
	RingSlots int
	// Regions is how many host-memory regions the shared registration
	// table holds; regions registered beyond it are served through the
	// fallback. Default 65536, at most 1<<20.
	Regions int
	// IOTimeout bounds each wait for a ring reply: a peer that answers
	// nothing for that long while requests are outstanding (stopped,
	// wedged) fails them with ErrPeer. Default 30 s.
	IOTimeout time.Duration
	// DialTimeout bounds connecting to a peer's control socket and the
	// handshake there. Default 5 s.
	DialTimeout time.Duration
	// UnregisterTimeout bounds how long UnregisterMemory waits for the
	// copies of peers into the region (MC_TRANSFER_TIMEOUT). Default 30 s.
	UnregisterTimeout time.Duration
	// MaxConns is how many initiators the control socket serves at once
	// (PYMOONCAKE_SAME_HOST_MAX_CONNS). Each holds a pin area (cross-memory
	// attach) or a ring and a goroutine; one more is told the target is
	// busy and reaches it through its fallback. Default 1024.
	MaxConns int
	// Fallback serves the tasks this transport does not: those whose local
	// or remote range is GPU memory, those to peers no same-host path
	// reaches, those into regions beyond the table. Accept takes a peer
	// only if the fallback does too. nil: such tasks fail.
	Fallback transport.Transport
	// Logger receives the transport's logs; nil means none.
	Logger *zap.Logger
}

// withDefaults fills zero fields and rejects impossible values.
func (c Config) withDefaults() (Config, error) {
	if c.Mode < Auto || c.Mode > RingOnly {
		return c, fmt.Errorf("mode %s: %w", c.Mode, ErrInvalidConfig)
	}
	if c.Workers == 0 {
		c.Workers = min(runtime.NumCPU(), 4)
	}
	if c.Workers < 1 || c.Workers > 64 {
		return c, fmt.Errorf("workers %d outside [1, 64]: %w", c.Workers, ErrInvalidConfig)
	}
	if c.Chunk == 0 {
		c.Chunk = DefaultChunk
	}
	if c.Chunk < 4096 {
		return c, fmt.Errorf("chunk %d below 4096: %w", c.Chunk, ErrInvalidConfig)
	}
	if c.RingBytes == 0 {
		c.RingBytes = DefaultRingBytes
	}
	if c.RingSlots == 0 {
		c.RingSlots = DefaultRingSlots
	}
	if c.RingSlots < 1 || c.RingSlots > MaxRingSlots {
		return c, fmt.Errorf("ring slots %d outside [1, %d]: %w", c.RingSlots, MaxRingSlots, ErrInvalidConfig)
	}
	if c.RingBytes > MaxRingBytes || c.RingBytes%uint64(c.RingSlots) != 0 || c.RingBytes/uint64(c.RingSlots) < minRingSlot ||
		c.RingBytes/uint64(c.RingSlots)%4096 != 0 {
		return c, fmt.Errorf("ring of %d bytes in %d slots (want slots of whole pages, at least %d bytes, in at most %d bytes): %w",
			c.RingBytes, c.RingSlots, minRingSlot, MaxRingBytes, ErrInvalidConfig)
	}
	if c.Regions == 0 {
		c.Regions = DefaultRegions
	}
	if c.Regions < 1 || c.Regions > MaxRegions {
		return c, fmt.Errorf("regions %d outside [1, %d]: %w", c.Regions, MaxRegions, ErrInvalidConfig)
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConns < 1 || c.MaxConns > MaxConnsLimit {
		return c, fmt.Errorf("max conns %d outside [1, %d]: %w", c.MaxConns, MaxConnsLimit, ErrInvalidConfig)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"i/o timeout", &c.IOTimeout, DefaultIOTimeout},
		{"dial timeout", &c.DialTimeout, DefaultDialTimeout},
		{"unregister timeout", &c.UnregisterTimeout, DefaultUnregisterTimeout},
	} {
		if *d.v < 0 {
			return c, fmt.Errorf("%s %v is negative: %w", d.name, *d.v, ErrInvalidConfig)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c, nil
}

// ConfigFromEnv reads the transport's variable, strictly: a value it does
// not know is an error naming the variable and its value.
//
//	PYMOONCAKE_SAME_HOST   unset, 1, auto: cross-memory attach, else the
//	                       shared-memory ring (Auto); cma: cross-memory
//	                       attach only (CMAOnly); shm: the ring only
//	                       (RingOnly); 0: no same-host transport (Off).
//	                       When set to anything but 0, a failure to start
//	                       the transport fails initialize (Required).
//	PYMOONCAKE_SAME_HOST_MAX_CONNS
//	                       MaxConns, 1 to 2^20 (default 1024).
//
// The fields that come from elsewhere (UnregisterTimeout from
// MC_TRANSFER_TIMEOUT, DialTimeout from MC_HANDSHAKE_CONNECT_TIMEOUT,
// Fallback, Logger) are left for the caller.
func ConfigFromEnv(lookup config.LookupFunc) (Config, error) {
	var c Config
	p := config.NewParser(lookup)
	if v, ok := p.Lookup(config.SameHost); ok {
		c.Required = true
		// The boolean spellings are config's, as for the other same-host
		// transports (Parser.SameHostOff), which must agree on "off".
		on, boolErr := config.ParseBool(v)
		switch mode := strings.ToLower(strings.TrimSpace(v)); {
		case mode == "cma":
			c.Mode = CMAOnly
		case mode == "shm" || mode == "ring":
			c.Mode = RingOnly
		case mode == "auto" || boolErr == nil && on:
			c.Mode = Auto
		case boolErr == nil:
			c.Mode, c.Required = Off, false
		default:
			p.Fail(config.SameHost, v, "want 0, 1, cma or shm")
		}
	}
	p.Int(&c.MaxConns, config.SameHost+"_MAX_CONNS", 1, MaxConnsLimit)
	return c, p.Err()
}
