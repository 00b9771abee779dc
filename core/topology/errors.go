package topology

import (
	"errors"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

var (
	// ErrUnavailable matches a GPUInfo whose native library is absent (no
	// NVML on this host). Discover treats it as "no GPUs".
	ErrUnavailable = dl.ErrUnavailable
	// ErrMalformed matches a priority matrix JSON that Mooncake's parser
	// would refuse, or a topology file that cannot be used.
	ErrMalformed = errors.New("topology: malformed priority matrix")
	// ErrNoDevice means a location's entry (and the wildcard) has no device
	// to select: Mooncake's ERR_DEVICE_NOT_FOUND.
	ErrNoDevice = errors.New("topology: no device for location")
)
