package bindings

import (
	"fmt"
	"strings"

	"github.com/pymooncake/pymooncake/core"
	"github.com/pymooncake/pymooncake/core/engine"
)

// LocalTopology returns this host's NIC priority matrix as Mooncake's JSON
// (get_local_topology): from the file MC_CUSTOM_TOPO_JSON names, or
// discovered from sysfs and NVML (GPUs numbered as CUDA numbers them under
// CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER). devices is the
// comma-separated HCA filter; environ is as in NewEngine. Unlike Mooncake it
// starts no engine and binds no port.
func LocalTopology(devices, environ string) (topo string, err error) {
	const op = "get_local_topology"
	defer recoverInto(op, nil, &err)
	lookup, err := environLookup(environ)
	if err != nil {
		return "", fail(op, err)
	}
	cfg, err := core.FromEnv(lookup)
	if err != nil {
		return "", fail(op, fmt.Errorf("%w: %w", engine.ErrInvalidArgument, err))
	}
	t, err := core.LocalTopology(cfg.Env, splitList(devices), true, nil)
	if err != nil {
		return "", fail(op, err)
	}
	b, err := t.JSON()
	if err != nil {
		return "", fail(op, err)
	}
	return string(b), nil
}

// splitList splits a comma-separated list, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, d := range strings.Split(s, ",") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}
