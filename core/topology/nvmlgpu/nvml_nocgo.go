//go:build !cgo

package nvmlgpu

import (
	"fmt"

	"github.com/pymooncake/pymooncake/core/topology"
)

// GPUs fails: without cgo NVML cannot be loaded.
func (i *Info) GPUs() ([]topology.GPU, error) {
	return nil, fmt.Errorf("list gpus: %s: %w: pymooncake was built without cgo", i.opts.Library, topology.ErrUnavailable)
}
