package rdma

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/internal/memreg"
	"github.com/pymooncake/pymooncake/core/transport/internal/numa"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// chunk is a piece of a registration no larger than every HCA's MR limit,
// with one MR per HCA (nil for an HCA that was out of service at
// registration) and its keys indexed by device id. Every chunk of a
// registration has the registration's location.
type chunk = memreg.Chunk[[]verbs.MR]

// memTable is the registered memory (see memreg.Table).
type memTable = memreg.Table[[]verbs.MR]

func deregister(cs []*chunk) error {
	var errs []error
	for _, c := range cs {
		for _, mr := range c.Native {
			if mr != nil {
				errs = append(errs, mr.Close())
			}
		}
	}
	return errors.Join(errs...)
}

// gpuLocation reports a GPU memory location ("cuda:0", and the other
// vendors' prefixes Mooncake uses).
func gpuLocation(loc string) bool {
	for _, p := range []string{"cuda:", "musa:", "hip:"} {
		if strings.HasPrefix(loc, p) {
			return true
		}
	}
	return false
}

// memoryLocation is Mooncake's getMemoryLocation for host memory: the NUMA
// node of the page holding addr, as "cpu:<node>"; "*" when the kernel will
// not say (the page is not resident).
func memoryLocation(addr uint64) string {
	if node, ok := numa.Node(addr); ok {
		return "cpu:" + strconv.Itoa(node)
	}
	return topology.Wildcard
}

// RegisterMemory registers [addr, addr+length) on every HCA: one MR per HCA
// (per chunk of at most the smallest device MR limit), with
// LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ. location is the memory's location
// for the priority matrix: "cpu:<node>", "cuda:<ordinal>", or "*" (or
// empty), which is resolved from the NUMA node of the first page. GPU
// memory is registered directly when nvidia-peermem is loaded and through
// Deps.DmaBuf otherwise. On any failure nothing stays registered.
func (t *Transport) RegisterMemory(addr, length uint64, location string) error {
	if !t.life.Enter() {
		return fmt.Errorf("register memory: %w", ErrClosed)
	}
	defer t.life.Exit()
	if addr == 0 || length == 0 || addr+length < addr {
		return fmt.Errorf("register memory [%#x, +%d): %w: empty or wrapping range", addr, length, ErrInvalidConfig)
	}
	if location == "" || location == topology.Wildcard {
		location = memoryLocation(addr)
	}
	fd, fdBase := -1, uint64(0)
	if gpuLocation(location) && !t.topo.PeerMem {
		if t.deps.DmaBuf == nil {
			return fmt.Errorf("register %s memory [%#x, +%d): %w", location, addr, length, ErrGPUMemory)
		}
		buf, err := t.deps.DmaBuf(uintptr(addr), length)
		if err != nil {
			return fmt.Errorf("register %s memory [%#x, +%d): export dma-buf: %w", location, addr, length, err)
		}
		defer func() {
			if err := buf.Close(); err != nil {
				t.log.Warn("close dma-buf", zap.Uint64("addr", addr), zap.Error(err))
			}
		}()
		fd, fdBase = buf.FD, buf.Offset
	}
	access := verbs.AccessLocalWrite | verbs.AccessRemoteWrite | verbs.AccessRemoteRead
	if t.cfg.RelaxedOrdering {
		access |= verbs.AccessRelaxedOrdering
	}
	limit := t.cfg.MaxMRSize
	for _, c := range t.ctxs {
		limit = min(limit, c.maxMR)
	}
	reg := func(ch *chunk) error {
		for _, c := range t.ctxs {
			var (
				mr  verbs.MR
				err error
			)
			switch {
			case c.fatal.Load():
			case fd >= 0:
				mr, err = c.pd.RegDmabufMR(fdBase+(ch.Addr-addr), ch.Length, ch.Addr, fd, access)
			default:
				mr, err = c.pd.RegMR(uintptr(ch.Addr), ch.Length, access)
			}
			if err != nil {
				return errors.Join(fmt.Errorf("on %s: %w", c.name, err), deregister([]*chunk{ch}))
			}
			ch.Native = append(ch.Native, mr)
			if mr != nil {
				ch.LKeys = append(ch.LKeys, mr.LKey())
				ch.RKeys = append(ch.RKeys, mr.RKey())
			} else {
				ch.LKeys = append(ch.LKeys, 0)
				ch.RKeys = append(ch.RKeys, 0)
			}
		}
		return nil
	}
	r, err := t.mem.Register(addr, length, limit, location, reg, deregister)
	if err != nil {
		return fmt.Errorf("register memory [%#x, +%d): %w", addr, length, err)
	}
	if len(r.Chunks) > 1 {
		t.log.Info("memory registered in chunks", zap.Uint64("addr", addr), zap.Uint64("length", length),
			zap.Int("chunks", len(r.Chunks)), zap.Uint64("chunk_limit", limit))
	}
	return nil
}

// UnregisterMemory deregisters the region that RegisterMemory registered at
// addr. Work in flight on it fails.
func (t *Transport) UnregisterMemory(addr uint64) error {
	if !t.life.Enter() {
		return fmt.Errorf("unregister memory at %#x: %w", addr, ErrClosed)
	}
	defer t.life.Exit()
	r, err := t.mem.Unregister(addr)
	if err == nil {
		err = deregister(r.Chunks)
	}
	if err != nil {
		return fmt.Errorf("unregister memory at %#x: %w", addr, err)
	}
	return nil
}

// deregisterAll deregisters every region (Close).
func (t *Transport) deregisterAll() error {
	var errs []error
	for _, r := range t.mem.Take() {
		errs = append(errs, deregister(r.Chunks))
	}
	return errors.Join(errs...)
}
