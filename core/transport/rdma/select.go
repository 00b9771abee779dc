package rdma

import (
	"errors"

	"github.com/pymooncake/pymooncake/core/topology"
)

// Wanted is Mooncake's transport choice at init: RDMA when the topology
// has an HCA, or MC_FORCE_HCA is set, unless MC_FORCE_TCP is set.
func Wanted(forceTCP, forceHCA bool, topo *topology.Topology) bool {
	if forceTCP {
		return false
	}
	return forceHCA || (topo != nil && len(topo.HCAs) > 0)
}

// FallBackToTCP reports whether New's error lets the engine install TCP
// instead: RDMA is conclusively unavailable here (no libibverbs, no usable
// device) and MC_FORCE_HCA does not demand it. Any other error is an init
// failure.
func FallBackToTCP(err error, forceHCA bool) bool {
	return err != nil && !forceHCA && errors.Is(err, ErrUnavailable)
}
