package barex

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/internal/memreg"
	"github.com/pymooncake/pymooncake/core/transport/internal/numa"
)

// chunk is one RegChunkSize piece of a registration: one registration on
// every NIC and one buffer of the descriptor, its keys indexed by barex NIC
// id (0 where a NIC has none). Its location is resolved from its own first
// byte when the registration was "*", as Mooncake does.
type chunk = memreg.Chunk[memKind]

// memKind is what barex is told about a chunk's memory.
type memKind struct {
	gpu   bool
	gpuID int
}

// memTable is the registered memory (see memreg.Table).
type memTable = memreg.Table[memKind]

// memoryKind parses a location: Mooncake's barex accepts names with "cpu"
// (host memory) or "cuda" (GPU memory, ordinal after the colon).
func memoryKind(location string) (gpu bool, ordinal int, err error) {
	kind, num, _ := strings.Cut(location, ":")
	n, convErr := strconv.Atoi(num)
	switch {
	case convErr != nil || n < 0:
	case kind == "cpu":
		return false, n, nil
	case kind == "cuda":
		return true, n, nil
	}
	return false, 0, fmt.Errorf("%w: location %q (barex registers \"cpu:N\" or \"cuda:N\" memory, or \"*\")", ErrInvalidConfig, location)
}

// locate resolves the location of a chunk registered as "*": Deps.Locate's
// answer, or, when there is none or it answers "" or "*", host memory on the
// NUMA node of the chunk's first page ("cpu:0" when the kernel will not
// say: barex must be told host or GPU, and the node only steers NIC
// choice).
func (t *Transport) locate(addr, length uint64) (string, error) {
	if t.deps.Locate != nil {
		loc, err := t.deps.Locate(addr, length)
		if err != nil {
			return "", fmt.Errorf("locate memory [%#x, +%d): %w", addr, length, err)
		}
		if loc != "" && loc != topology.Wildcard {
			return loc, nil
		}
	}
	node, _ := numa.Node(addr)
	return "cpu:" + strconv.Itoa(node), nil
}

// RegisterMemory registers [addr, addr+length) with barex in chunks of
// RegChunkSize (MC_MIN_REG_SIZE), each on every NIC and published as its
// own buffer. location is "cpu:N", "cuda:N", or "*" (or empty), which is
// resolved for each chunk from its first byte: through Deps.Locate, or as
// host memory on the NUMA node of its first page. On any failure the
// chunks registered so far are deregistered and nothing stays registered.
func (t *Transport) RegisterMemory(addr, length uint64, location string) error {
	if !t.life.Enter() {
		return fmt.Errorf("register memory: %w", ErrClosed)
	}
	defer t.life.Exit()
	if addr == 0 || length == 0 || addr+length < addr {
		return fmt.Errorf("register memory [%#x, +%d): %w: empty or wrapping range", addr, length, ErrInvalidConfig)
	}
	wildcard := location == "" || location == topology.Wildcard
	if !wildcard {
		if _, _, err := memoryKind(location); err != nil {
			return fmt.Errorf("register memory [%#x, +%d): %w", addr, length, err)
		}
	}
	reg := func(ch *chunk) error { return t.registerChunk(ch, wildcard) }
	r, err := t.mem.Register(addr, length, t.cfg.RegChunkSize, location, reg, t.deregisterChunks)
	if err != nil {
		return fmt.Errorf("register memory [%#x, +%d): %w", addr, length, err)
	}
	t.log.Debug("memory registered", zap.Uint64("addr", addr), zap.Uint64("length", length),
		zap.Int("chunks", len(r.Chunks)), zap.String("location", location))
	return nil
}

func (t *Transport) registerChunk(ch *chunk, wildcard bool) error {
	if wildcard {
		loc, err := t.locate(ch.Addr, ch.Length)
		if err != nil {
			return err
		}
		ch.Location = loc
	}
	gpu, ord, err := memoryKind(ch.Location)
	if err != nil {
		return err
	}
	if t.cfg.UseCPU {
		gpu = false
	}
	ch.Native.gpu = gpu
	if gpu {
		ch.Native.gpuID = ord
		if t.cfg.LocalDeviceSet {
			ch.Native.gpuID = t.cfg.LocalDevice
		}
	}
	keys, err := t.nat.RegMR(ch.Addr, ch.Length, ch.Native.gpu, ch.Native.gpuID)
	if err != nil {
		return err
	}
	ch.LKeys = make([]uint32, t.keySlots)
	ch.RKeys = make([]uint32, t.keySlots)
	for _, k := range keys {
		if k.nic < 0 || k.nic >= t.keySlots {
			return errors.Join(fmt.Errorf("%w: the shim returned a key for nic %d, which it did not list", ErrInvalidConfig, k.nic),
				t.deregisterChunks([]*chunk{ch}))
		}
		ch.LKeys[k.nic], ch.RKeys[k.nic] = k.lkey, k.rkey
	}
	return nil
}

// deregisterChunks deregisters every chunk, each as the kind it was
// registered as, and returns every failure.
func (t *Transport) deregisterChunks(cs []*chunk) error {
	var errs []error
	for _, c := range cs {
		if err := t.nat.DeregMR(c.Addr, c.Native.gpu); err != nil {
			errs = append(errs, fmt.Errorf("chunk [%#x, +%d): %w", c.Addr, c.Length, err))
		}
	}
	return errors.Join(errs...)
}

// UnregisterMemory deregisters the region RegisterMemory registered at
// addr, chunk by chunk. Transfers must not use it any more.
func (t *Transport) UnregisterMemory(addr uint64) error {
	if !t.life.Enter() {
		return fmt.Errorf("unregister memory at %#x: %w", addr, ErrClosed)
	}
	defer t.life.Exit()
	r, err := t.mem.Unregister(addr)
	if err == nil {
		err = t.deregisterChunks(r.Chunks)
	}
	if err != nil {
		return fmt.Errorf("unregister memory at %#x: %w", addr, err)
	}
	return nil
}
