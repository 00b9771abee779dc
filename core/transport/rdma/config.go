package rdma

import (
	"errors"
	"fmt"
	"time"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// StorePolicy is the endpoint store's eviction policy
// (MC_ENDPOINT_STORE_TYPE).
type StorePolicy string

// Endpoint store policies.
const (
	StoreSIEVE StorePolicy = "SIEVE"
	StoreFIFO  StorePolicy = "FIFO"
)

// Config is the RDMA transport's configuration. The zero value of every
// field means its documented default (Mooncake's); New validates the result
// and reports every bad field at once. The environment variable each field
// mirrors is named in its comment; ConfigFromEnv reads them.
type Config struct {
	// Port is the HCA port used on every device (MC_IB_PORT, default 1,
	// 1..255).
	Port int
	// GIDIndex is the GID table index; -1 or unset picks one automatically
	// (MC_GID_INDEX, else NCCL_IB_GID_INDEX; 0..255). Use GIDIndexSet to
	// ask for index 0.
	GIDIndex    int
	GIDIndexSet bool
	// NumCQPerCtx is the number of completion queues per HCA
	// (MC_NUM_CQ_PER_CTX, default 1, 1..255).
	NumCQPerCtx int
	// NumCompChannelsPerCtx is the number of completion channels per HCA;
	// each has its own poller goroutine (MC_NUM_COMP_CHANNELS_PER_CTX,
	// default 1, 1..255).
	NumCompChannelsPerCtx int
	// MaxCQE is the size of each CQ and the cap on work in flight per CQ
	// (MC_MAX_CQE_PER_CTX, default 4096, 1..65535), clamped per device.
	MaxCQE int
	// MaxEPPerCtx bounds the endpoints per HCA before eviction
	// (MC_MAX_EP_PER_CTX, default 65536, >= 1).
	MaxEPPerCtx int
	// NumQPPerEP is the number of RC QPs per endpoint; both sides must agree
	// (MC_NUM_QP_PER_EP, default 2, 1..255).
	NumQPPerEP int
	// MaxSGE, MaxWR and MaxInline are the QP capabilities (MC_MAX_SGE
	// default 4, MC_MAX_WR default 256, MC_MAX_INLINE default 64), clamped
	// per device. MaxWR is also the per-QP cap on work in flight.
	MaxSGE    int
	MaxWR     int
	MaxInline int
	// MTU caps the path MTU in bytes: 512, 1024, 2048 or 4096 (MC_MTU,
	// default 4096); the RTR path MTU is min(port active MTU, MTU).
	MTU int
	// SliceSize is the largest work request (MC_SLICE_SIZE, default 65536).
	SliceSize int
	// FragmentLimit is how much the last slice may exceed SliceSize instead
	// of becoming a slice of its own: SliceSize/MC_FRAGMENT_RATIO (default
	// SliceSize/4, i.e. 16384).
	FragmentLimit int
	// RetryCnt is each slice's retry budget across NICs (MC_RETRY_CNT,
	// default 9, 1..127).
	RetryCnt int
	// PKeyIndex is the QP's P_Key index (MC_PKEY_INDEX, default 0).
	PKeyIndex int
	// TrafficClass is the GRH traffic class, -1 or unset = 0 (MC_IB_TC,
	// 0..255). TrafficClassSet distinguishes an explicit 0.
	TrafficClass    int
	TrafficClassSet bool
	// ServiceLevel is the address vector's SL (MC_IB_SL, 0..15, default 0).
	ServiceLevel int
	// MaxMRSize caps one memory registration; larger buffers are registered
	// in chunks, each published as its own buffer (MC_MAX_MR_SIZE, default
	// 1 TiB), clamped per device.
	MaxMRSize uint64
	// RelaxedOrdering registers memory with IBV_ACCESS_RELAXED_ORDERING when
	// libibverbs has ibv_reg_mr_iova2 (MC_IB_PCI_RELAXED_ORDERING=1).
	RelaxedOrdering bool
	// EndpointStore is the eviction policy (MC_ENDPOINT_STORE_TYPE, default
	// SIEVE).
	EndpointStore StorePolicy
	// PathRoundRobin picks NICs round robin instead of at random on a
	// slice's first try (MC_PATH_ROUNDROBIN).
	PathRoundRobin bool
	// DestDeviceAffinity prefers the peer NIC with the local NIC's name
	// (MC_ENABLE_DEST_DEVICE_AFFINITY).
	DestDeviceAffinity bool
	// HandshakeTimeout bounds one connection setup, the Connection RPC
	// included (default 15 s; Mooncake has the RPC's 60 s receive timeout).
	HandshakeTimeout time.Duration
	// ContextFailureThreshold is how many consecutive failed completions,
	// with none succeeding in between, take an HCA out of service (default
	// 32, as Mooncake's), and ContextRecovery how long it then stays out
	// (default 30 s, as Mooncake HEAD's).
	ContextFailureThreshold int
	ContextRecovery         time.Duration
	// DrainTimeout bounds how long Close waits for work in flight to
	// complete after moving every QP to ERR (default 5 s).
	DrainTimeout time.Duration
}

// ErrInvalidConfig matches every Config error.
var ErrInvalidConfig = errors.New("rdma: invalid config")

// withDefaults fills zero fields and validates; it reports every bad field.
func (c Config) withDefaults() (Config, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Port, 1)
	def(&c.NumCQPerCtx, 1)
	def(&c.NumCompChannelsPerCtx, 1)
	def(&c.MaxCQE, 4096)
	def(&c.MaxEPPerCtx, 65536)
	def(&c.NumQPPerEP, 2)
	def(&c.MaxSGE, 4)
	def(&c.MaxWR, 256)
	def(&c.MTU, 4096)
	def(&c.SliceSize, defaultSliceSize)
	def(&c.RetryCnt, 9)
	def(&c.ContextFailureThreshold, 32)
	if c.FragmentLimit == 0 {
		c.FragmentLimit = c.SliceSize / 4
	}
	if c.MaxInline == 0 {
		c.MaxInline = 64
	}
	if !c.GIDIndexSet && c.GIDIndex == 0 {
		c.GIDIndex = -1
	}
	if !c.TrafficClassSet && c.TrafficClass == 0 {
		c.TrafficClass = -1
	}
	if c.MaxMRSize == 0 {
		c.MaxMRSize = 1 << 40
	}
	if c.EndpointStore == "" {
		c.EndpointStore = StoreSIEVE
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 15 * time.Second
	}
	if c.ContextRecovery == 0 {
		c.ContextRecovery = 30 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Second
	}

	var errs []error
	bad := func(field string, v any, want string) {
		errs = append(errs, fmt.Errorf("%w: %s=%v (want %s)", ErrInvalidConfig, field, v, want))
	}
	in := func(field string, v, lo, hi int) {
		if v < lo || v > hi {
			bad(field, v, fmt.Sprintf("%d..%d", lo, hi))
		}
	}
	in("Port", c.Port, 1, 255)
	in("GIDIndex", c.GIDIndex, -1, 255)
	in("NumCQPerCtx", c.NumCQPerCtx, 1, 255)
	in("NumCompChannelsPerCtx", c.NumCompChannelsPerCtx, 1, 255)
	in("MaxCQE", c.MaxCQE, 1, 1<<22)
	in("MaxEPPerCtx", c.MaxEPPerCtx, 1, 1<<20)
	in("NumQPPerEP", c.NumQPPerEP, 1, 255)
	in("MaxSGE", c.MaxSGE, 1, 65535)
	in("MaxWR", c.MaxWR, 1, 65535)
	in("MaxInline", c.MaxInline, 0, 65535)
	in("SliceSize", c.SliceSize, 1, 1<<30)
	in("FragmentLimit", c.FragmentLimit, 0, 1<<30)
	in("RetryCnt", c.RetryCnt, 1, 127)
	in("PKeyIndex", c.PKeyIndex, 0, 65535)
	in("TrafficClass", c.TrafficClass, -1, 255)
	in("ServiceLevel", c.ServiceLevel, 0, 15)
	in("ContextFailureThreshold", c.ContextFailureThreshold, 1, 1<<20)
	if _, ok := verbs.MTUFromBytes(c.MTU); !ok || c.MTU < 512 {
		bad("MTU", c.MTU, "512, 1024, 2048 or 4096")
	}
	if c.EndpointStore != StoreSIEVE && c.EndpointStore != StoreFIFO {
		bad("EndpointStore", c.EndpointStore, "SIEVE or FIFO")
	}
	if c.SliceSize+c.FragmentLimit > 1<<31-1 {
		bad("SliceSize+FragmentLimit", c.SliceSize+c.FragmentLimit, "a work request length below 2 GiB")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"HandshakeTimeout", c.HandshakeTimeout}, {"ContextRecovery", c.ContextRecovery}, {"DrainTimeout", c.DrainTimeout}} {
		if d.v < 0 {
			bad(d.name, d.v, "a positive duration")
		}
	}
	return c, errors.Join(errs...)
}
