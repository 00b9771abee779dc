package nvmlgpu

import (
	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/topology"
)

// DefaultLibrary is the NVML soname.
const DefaultLibrary = "libnvidia-ml.so.1"

// Options configures Info.
type Options struct {
	// Library is the NVML library to load; empty means DefaultLibrary.
	Library string
	// VisibleDevices is CUDA_VISIBLE_DEVICES and VisibleDevicesSet whether
	// it is set at all (set and empty hides every GPU).
	VisibleDevices    string
	VisibleDevicesSet bool
	// DeviceOrder is CUDA_DEVICE_ORDER ("FASTEST_FIRST" when empty, or
	// "PCI_BUS_ID").
	DeviceOrder string
	// Logger receives the mixed-model warning; nil discards it.
	Logger *zap.Logger
}

// Info is a topology.GPUInfo backed by NVML.
type Info struct {
	opts Options
	log  *zap.Logger
}

var _ topology.GPUInfo = (*Info)(nil)

// New returns an Info; it loads nothing until GPUs is called.
func New(opts Options) *Info {
	if opts.Library == "" {
		opts.Library = DefaultLibrary
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Info{opts: opts, log: log.Named("nvml")}
}
