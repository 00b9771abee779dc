//go:build cgo && linux && (amd64 || arm64)

package nvmlgpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/topology/nvmlgpu/internal/nvmlsym"
)

// GPUs loads NVML, lists the GPUs by CUDA ordinal and unloads NVML. Without
// NVML the error matches topology.ErrUnavailable.
//
// go-nvml's calls reach NVML through nvmlsym's trampolines, bound here for
// the duration of the call (the binding also opens the library through
// core/internal/dl, whose error keeps dlerror's text).
func (i *Info) GPUs() ([]topology.GPU, error) {
	binding, err := nvmlsym.Bind(i.opts.Library)
	if err != nil {
		return nil, fmt.Errorf("list gpus: %w", err)
	}
	defer binding.Close()

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
