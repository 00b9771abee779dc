package rdma

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// region is one RegisterMemory call.
type region struct {
	addr, length uint64
	location     string
	chunks       []*chunk
}

// chunk is a piece of a region no larger than every HCA's MR limit, with
// one MR per HCA (nil for an HCA that was out of service at registration).
type chunk struct {
	addr, length uint64
	region       *region
	mrs          []verbs.MR
	lkeys, rkeys []uint32
}

func (c *chunk) end() uint64 { return c.addr + c.length }

// memTable is the registered memory. Lookups on the data path read an
// immutable sorted snapshot; changes copy it under mu.
type memTable struct {
	mu   sync.Mutex
	regs map[uint64]*region // +checklocks:mu
	snap atomic.Pointer[[]*chunk]
}

// find returns the chunk holding addr, or nil.
func (m *memTable) find(addr uint64) *chunk {
	p := m.snap.Load()
	if p == nil {
		return nil
	}
	cs := *p
	i := sort.Search(len(cs), func(i int) bool { return cs[i].addr > addr }) - 1
	if i < 0 || addr >= cs[i].end() {
		return nil
	}
	return cs[i]
}

func (m *memTable) regions() map[uint64]*region {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint64]*region, len(m.regs))
	for k, v := range m.regs {
		out[k] = v
	}
	return out
}

// +checklocks:m.mu
func (m *memTable) publishLocked() {
	var cs []*chunk
	for _, r := range m.regs {
		cs = append(cs, r.chunks...)
	}
	slices.SortFunc(cs, func(a, b *chunk) int {
		switch {
		case a.addr < b.addr:
			return -1
		case a.addr > b.addr:
			return 1
		}
		return 0
	})
	m.snap.Store(&cs)
}

func (m *memTable) closeAll() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, r := range m.regs {
		errs = append(errs, deregister(r.chunks))
	}
	clear(m.regs)
	m.publishLocked()
	return errors.Join(errs...)
}

func deregister(cs []*chunk) error {
	var errs []error
	for _, c := range cs {
		for _, mr := range c.mrs {
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

// RegisterMemory registers [addr, addr+length) on every HCA: one MR per HCA
// (per chunk of at most the smallest device MR limit), with
// LOCAL_WRITE|REMOTE_WRITE|REMOTE_READ. location is the memory's location
// for the priority matrix: "cpu:<node>", "cuda:<ordinal>", or "*" (or
// empty), which is resolved from the NUMA node of the first page. GPU
// memory is registered directly when nvidia-peermem is loaded and through
// Deps.DmaBuf otherwise. On any failure nothing stays registered.
func (t *Transport) RegisterMemory(addr, length uint64, location string) error {
	t.callMu.RLock()
	defer t.callMu.RUnlock()
	if t.isDown.Load() {
		return fmt.Errorf("register memory: %w", ErrClosed)
	}
	if addr == 0 || length == 0 || addr+length < addr {
		return fmt.Errorf("register memory [%#x, +%d): %w: empty or wrapping range", addr, length, ErrInvalidConfig)
	}
	if location == "" || location == topology.Wildcard {
		location = memoryLocation(addr)
	}
	gpu := gpuLocation(location)
	var (
		fd      = -1
		fdBase  uint64
		closeFD func()
	)
	if gpu && !t.topo.PeerMem {
		if t.deps.DmaBuf == nil {
			return fmt.Errorf("register %s memory [%#x, +%d): %w", location, addr, length, ErrGPUMemory)
		}
		var err error
		fd, fdBase, closeFD, err = t.deps.DmaBuf(addr, length)
		if err != nil {
			return fmt.Errorf("register %s memory [%#x, +%d): export dma-buf: %w", location, addr, length, err)
		}
		defer closeFD()
	}
	access := verbs.AccessLocalWrite | verbs.AccessRemoteWrite | verbs.AccessRemoteRead
	if t.cfg.RelaxedOrdering {
		access |= verbs.AccessRelaxedOrdering
	}
	limit := t.cfg.MaxMRSize
	for _, c := range t.ctxs {
		limit = min(limit, c.maxMR)
	}

	m := &t.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.regs {
		if addr < r.addr+r.length && r.addr < addr+length {
			return fmt.Errorf("register memory [%#x, +%d): %w: overlaps [%#x, +%d)", addr, length, ErrRegistered, r.addr, r.length)
		}
	}
	r := &region{addr: addr, length: length, location: location}
	for off := uint64(0); off < length; off += limit {
		ch := &chunk{addr: addr + off, length: min(limit, length-off), region: r}
		for _, c := range t.ctxs {
			var (
				mr  verbs.MR
				err error
			)
			switch {
			case c.fatal.Load():
			case fd >= 0:
				mr, err = c.pd.RegDmabufMR(fdBase+off, ch.length, ch.addr, fd, access)
			default:
				mr, err = c.pd.RegMR(uintptr(ch.addr), ch.length, access)
			}
			if err != nil {
				deregister(append(r.chunks, ch))
				return fmt.Errorf("register memory [%#x, +%d) on %s: %w", ch.addr, ch.length, c.name, err)
			}
			ch.mrs = append(ch.mrs, mr)
			if mr != nil {
				ch.lkeys = append(ch.lkeys, mr.LKey())
				ch.rkeys = append(ch.rkeys, mr.RKey())
			} else {
				ch.lkeys = append(ch.lkeys, 0)
				ch.rkeys = append(ch.rkeys, 0)
			}
		}
		r.chunks = append(r.chunks, ch)
	}
	if m.regs == nil {
		m.regs = map[uint64]*region{}
	}
	m.regs[addr] = r
	m.publishLocked()
	if len(r.chunks) > 1 {
		t.log.Info("memory registered in chunks", zap.Uint64("addr", addr), zap.Uint64("length", length),
			zap.Int("chunks", len(r.chunks)), zap.Uint64("chunk_limit", limit))
	}
	return nil
}

// UnregisterMemory deregisters the region that RegisterMemory registered at
// addr. Work in flight on it fails.
func (t *Transport) UnregisterMemory(addr uint64) error {
	t.callMu.RLock()
	defer t.callMu.RUnlock()
	if t.isDown.Load() {
		return fmt.Errorf("unregister memory at %#x: %w", addr, ErrClosed)
	}
	m := &t.mem
	m.mu.Lock()
	r, ok := m.regs[addr]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("unregister memory at %#x: %w", addr, ErrAddressNotRegistered)
	}
	delete(m.regs, addr)
	m.publishLocked()
	m.mu.Unlock()
	if err := deregister(r.chunks); err != nil {
		return fmt.Errorf("unregister memory at %#x: %w", addr, err)
	}
	return nil
}
