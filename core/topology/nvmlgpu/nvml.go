package nvmlgpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/internal/dl"
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

// GPUs loads NVML, lists the GPUs by CUDA ordinal and unloads NVML. Without
// NVML the error matches topology.ErrUnavailable.
func (i *Info) GPUs() ([]topology.GPU, error) {
	probe, err := dl.Open(i.opts.Library)
	if err != nil {
		return nil, fmt.Errorf("list gpus: %w", err)
	}
	defer probe.Close()

	lib := nvml.New(nvml.WithLibraryPath(i.opts.Library))
	if r := lib.Init(); r != nvml.SUCCESS {
		return nil, fmt.Errorf("list gpus: nvml init: %w", r)
	}
	defer lib.Shutdown()
	n, r := lib.DeviceGetCount()
	if r != nvml.SUCCESS {
		return nil, fmt.Errorf("list gpus: nvml device count: %w", r)
	}
	devs := make([]device, 0, n)
	for idx := range n {
		h, r := lib.DeviceGetHandleByIndex(idx)
		if r != nvml.SUCCESS {
			return nil, fmt.Errorf("list gpus: nvml device %d: %w", idx, r)
		}
		pci, r := h.GetPciInfo()
		if r != nvml.SUCCESS {
			return nil, fmt.Errorf("list gpus: nvml device %d pci info: %w", idx, r)
		}
		bus, err := topology.NormalizeBusID(cString(pci.BusId[:]))
		if err != nil {
			return nil, fmt.Errorf("list gpus: nvml device %d: %w", idx, err)
		}
		d := device{busID: bus, numa: -1}
		if d.uuid, r = h.GetUUID(); r != nvml.SUCCESS {
			return nil, fmt.Errorf("list gpus: nvml device %d uuid: %w", idx, r)
		}
		if d.model, r = h.GetName(); r != nvml.SUCCESS {
			d.model = ""
		}
		// Older drivers lack the call; -1 lets topology read sysfs.
		if node, r := h.GetNumaNodeId(); r == nvml.SUCCESS && node >= 0 {
			d.numa = node
		}
		devs = append(devs, d)
	}
	gpus, mixed := cudaOrder(devs, i.opts.VisibleDevices, i.opts.VisibleDevicesSet)
	if mixed && i.opts.DeviceOrder != "PCI_BUS_ID" {
		i.log.Warn("GPUs of several models: CUDA's FASTEST_FIRST order may differ from the PCI order used for cuda:N names; set CUDA_DEVICE_ORDER=PCI_BUS_ID")
	}
	return gpus, nil
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
