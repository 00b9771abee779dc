//go:build !(cgo && linux && (amd64 || arm64))

package nvmlgpu

import (
	"fmt"
	"runtime"

	"github.com/pymooncake/pymooncake/core/topology"
)

// GPUs fails: NVML is reached through nvmlsym's trampolines, which exist
// only for linux/amd64 and linux/arm64 built with cgo.
func (i *Info) GPUs() ([]topology.GPU, error) {
	return nil, fmt.Errorf("list gpus: %s: %w: pymooncake uses NVML only in linux/amd64 and linux/arm64 builds with cgo, not this %s/%s build",
		i.opts.Library, topology.ErrUnavailable, runtime.GOOS, runtime.GOARCH)
}
