//go:build !cgo || !linux

package ibv

import (
	"fmt"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// Library is the libibverbs soname Open loads.
const Library = "libibverbs.so.1"

// Open fails: this build has no cgo (or is not for Linux), so libibverbs
// cannot be loaded.
func Open() (verbs.Provider, error) {
	return nil, fmt.Errorf("load %s: %w: pymooncake was built without cgo or for a system other than linux", Library, verbs.ErrUnavailable)
}
