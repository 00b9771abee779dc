package nvmlgpu

import (
	"slices"
	"strconv"
	"strings"

	"github.com/pymooncake/pymooncake/core/topology"
)

// device is one GPU as NVML reports it.
type device struct {
	busID string // sysfs form
	uuid  string // "GPU-..."
	model string
	numa  int
}

// cudaOrder numbers devs as CUDA would (see the package doc). mixed reports
// that the devices are of several models, so that FASTEST_FIRST may differ.
func cudaOrder(devs []device, visible string, visibleSet bool) (gpus []topology.GPU, mixed bool) {
	enum := slices.Clone(devs)
	slices.SortStableFunc(enum, func(a, b device) int { return strings.Compare(a.busID, b.busID) })
	for _, d := range enum {
		if d.model != enum[0].model {
			mixed = true
		}
	}
	chosen := enum
	if visibleSet {
		chosen = nil
		used := map[int]bool{}
		for _, tok := range strings.Split(visible, ",") {
			i := lookup(enum, strings.TrimSpace(tok))
			if i < 0 || used[i] {
				break
			}
			used[i] = true
			chosen = append(chosen, enum[i])
		}
	}
	for ord, d := range chosen {
		gpus = append(gpus, topology.GPU{Ordinal: ord, BusID: d.busID, NUMANode: d.numa})
	}
	return gpus, mixed
}

// lookup resolves one CUDA_VISIBLE_DEVICES entry to an enumeration index,
// or -1.
func lookup(enum []device, tok string) int {
	if strings.HasPrefix(tok, "GPU-") {
		found := -1
		for i, d := range enum {
			if strings.HasPrefix(d.uuid, tok) {
				if found >= 0 {
					return -1 // ambiguous prefix
				}
				found = i
			}
		}
		return found
	}
	n, err := strconv.Atoi(tok)
	if err != nil || n < 0 || n >= len(enum) {
		return -1
	}
	return n
}
