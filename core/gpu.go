package core

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// LocationsKey is the descriptor key under which a pymooncake engine
// publishes each buffer's location ("cuda:0", "cpu:0", "*"), in buffer
// order, when any of its buffers is GPU memory. Mooncake's TCP descriptors
// put the segment name where RDMA descriptors put the location, so the
// buffers themselves stay as Mooncake writes them; Mooncake ignores the key.
const LocationsKey = "pymooncake_buffer_locations"

func locationsJSON(locs []string) json.RawMessage {
	b, err := json.Marshal(locs)
	if err != nil {
		return json.RawMessage("[]") // strings always marshal
	}
	return b
}

func gpuName(d gpu.Driver) string {
	if d == nil {
		return "none"
	}
	return d.Name()
}

// locate asks the GPU driver where each region lives. Device memory gets
// its ordinal and the location "cuda:<ordinal>", whatever the caller said;
// host memory keeps the caller's location. Without a driver nothing
// changes: no GPU memory can exist in the process.
func (e *Engine) locate(rs []region) error {
	if e.cfg.GPU == nil {
		return nil
	}
	for i := range rs {
		r := &rs[i]
		if r.length == 0 || r.addr == 0 {
			continue // refused by the table with the usual error
		}
		ord, err := e.cfg.GPU.Locate(uintptr(r.addr), r.length)
		if errors.Is(err, gpu.ErrInvalidRange) {
			return fmt.Errorf("register [%#x, +%d): %w: %w", r.addr, r.length, ErrInvalidArgument, err)
		}
		if err != nil {
			return fmt.Errorf("register [%#x, +%d): locate memory: %w", r.addr, r.length, err)
		}
		r.device = ord
		if ord != gpu.Host {
			r.location = "cuda:" + strconv.Itoa(ord)
		}
	}
	return nil
}

// tcpGPU is what the TCP transport needs to move GPU memory; nil without a
// GPU driver.
func (e *Engine) tcpGPU() tcp.GPU {
	if e.staging == nil {
		return nil
	}
	return &gpuMemory{mem: e.mem, staging: e.staging}
}

// gpuMemory is tcp.GPU over the engine's registrations and staging pool.
type gpuMemory struct {
	mem     *memoryTable
	staging *gpu.Staging
}

func (g *gpuMemory) Device(addr, n uint64) int { return g.mem.device(addr, n) }

func (g *gpuMemory) Stage(ord int) (tcp.Stage, error) {
	st, err := g.staging.Get(ord)
	if err != nil {
		return nil, err
	}
	return st, nil
}
