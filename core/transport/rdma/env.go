package rdma

import (
	"math"
	"strconv"
	"strings"

	"github.com/pymooncake/pymooncake/core/config"
)

// defaultSliceSize is MC_SLICE_SIZE's default.
const defaultSliceSize = 65536

// ConfigFromEnv reads the RDMA transport's variables (the ones Config's
// fields name) through lookup, strictly, with config's Parser: a
// malformed or out-of-range value is an error matching config.ErrInvalid
// that names the variable and its value, and every bad variable is
// reported. Unset variables leave their field zero, which New reads as
// Mooncake's default; every value accepted here New accepts too. MC_GID_INDEX is read, else NCCL_IB_GID_INDEX.
// MC_FRAGMENT_RATIO sets FragmentLimit to the slice size (MC_SLICE_SIZE,
// or its default) divided by it.
func ConfigFromEnv(lookup config.LookupFunc) (Config, error) {
	var c Config
	p := config.NewParser(lookup)
	p.Int(&c.Port, "MC_IB_PORT", 1, 255)
	gidKey := "MC_GID_INDEX"
	if _, ok := p.Lookup(gidKey); !ok {
		gidKey = "NCCL_IB_GID_INDEX"
	}
	c.GIDIndexSet = p.Int(&c.GIDIndex, gidKey, 0, 255)
	p.Int(&c.NumCQPerCtx, "MC_NUM_CQ_PER_CTX", 1, 255)
	p.Int(&c.NumCompChannelsPerCtx, "MC_NUM_COMP_CHANNELS_PER_CTX", 1, 255)
	p.Int(&c.MaxCQE, "MC_MAX_CQE_PER_CTX", 1, 1<<20)
	p.Int(&c.MaxEPPerCtx, "MC_MAX_EP_PER_CTX", 1, 1<<20)
	p.Int(&c.NumQPPerEP, "MC_NUM_QP_PER_EP", 1, 255)
	p.Int(&c.MaxSGE, "MC_MAX_SGE", 1, 1<<10)
	p.Int(&c.MaxWR, "MC_MAX_WR", 1, 65535)
	p.Int(&c.MaxInline, "MC_MAX_INLINE", 0, 65535)
	if p.Int(&c.MTU, "MC_MTU", 512, 4096) {
		switch c.MTU {
		case 512, 1024, 2048, 4096:
		default:
			p.Fail("MC_MTU", strconv.Itoa(c.MTU), "want 512, 1024, 2048 or 4096")
			c.MTU = 0
		}
	}
	p.Int(&c.SliceSize, "MC_SLICE_SIZE", 1, 1<<30)
	var ratio int
	if p.Int(&ratio, "MC_FRAGMENT_RATIO", 1, 1<<20) {
		slice := c.SliceSize
		if slice == 0 {
			slice = defaultSliceSize
		}
		c.FragmentLimit = slice / ratio
	}
	p.Int(&c.RetryCnt, "MC_RETRY_CNT", 1, 127)
	p.Int(&c.PKeyIndex, "MC_PKEY_INDEX", 0, 65535)
	c.TrafficClassSet = p.Int(&c.TrafficClass, "MC_IB_TC", 0, 255)
	p.Int(&c.ServiceLevel, "MC_IB_SL", 0, 15)
	var mr int
	if p.Int(&mr, "MC_MAX_MR_SIZE", 1, math.MaxInt) {
		c.MaxMRSize = uint64(mr)
	}
	p.Presence(&c.RelaxedOrdering, "MC_IB_PCI_RELAXED_ORDERING")
	if v, ok := p.Lookup("MC_ENDPOINT_STORE_TYPE"); ok {
		switch s := StorePolicy(strings.ToUpper(strings.TrimSpace(v))); s {
		case StoreSIEVE, StoreFIFO:
			c.EndpointStore = s
		default:
			p.Fail("MC_ENDPOINT_STORE_TYPE", v, "want SIEVE or FIFO")
		}
	}
	p.Presence(&c.PathRoundRobin, "MC_PATH_ROUNDROBIN")
	p.Presence(&c.DestDeviceAffinity, "MC_ENABLE_DEST_DEVICE_AFFINITY")
	if err := p.Err(); err != nil {
		return Config{}, err
	}
	return c, nil
}
