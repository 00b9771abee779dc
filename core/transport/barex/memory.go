package barex

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/topology"
)

// region is one RegisterMemory call.
type region struct {
	addr, length uint64
	chunks       []*chunk
}

// chunk is one RegChunkSize piece of a region: one registration on every
// NIC and one buffer of the descriptor. Its location is resolved from its
// own first byte when the region was registered as "*", as Mooncake does.
type chunk struct {
	addr, length uint64
	location     string // "cpu:N" or "cuda:N"
	gpu          bool
	gpuID        int
	// lkeys and rkeys are indexed by barex NIC id (0 where a NIC has none).
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

// find is a slicing.Finder over the local chunks.
func (m *memTable) find(addr uint64) (*chunk, uint64, bool) {
	p := m.snap.Load()
	if p == nil {
		return nil, 0, false
	}
	cs := *p
	i := sort.Search(len(cs), func(i int) bool { return cs[i].addr > addr }) - 1
	if i < 0 || addr >= cs[i].end() {
		return nil, 0, false
	}
	return cs[i], cs[i].end(), true
}

func (m *memTable) region(addr uint64) (*region, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.regs[addr]
	return r, ok
}

// take removes and returns every region.
func (m *memTable) take() []*region {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*region, 0, len(m.regs))
	for _, r := range m.regs {
		out = append(out, r)
	}
	clear(m.regs)
	m.publishLocked()
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
// NUMA node of the chunk's first page.
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
	return hostLocation(addr), nil
}

// RegisterMemory registers [addr, addr+length) with barex in chunks of
// RegChunkSize (MC_MIN_REG_SIZE), each on every NIC and published as its
// own buffer. location is "cpu:N", "cuda:N", or "*" (or empty), which is
// resolved for each chunk from its first byte: through Deps.Locate, or as
// host memory on the NUMA node of its first page. On any failure the
// chunks registered so far are deregistered and nothing stays registered.
func (t *Transport) RegisterMemory(addr, length uint64, location string) error {
	t.callMu.RLock()
	defer t.callMu.RUnlock()
	if t.isDown.Load() {
		return fmt.Errorf("register memory: %w", ErrClosed)
	}
	if addr == 0 || length == 0 || addr+length < addr {
		return fmt.Errorf("register memory [%#x, +%d): %w: empty or wrapping range", addr, length, ErrInvalidConfig)
	}
	wildcard := location == "" || location == topology.Wildcard
	if !wildcard {
		if _, _, err := memoryKind(location); err != nil {
			return fmt.Errorf("register memory [%#x, +%d): %w", addr, length, err)
		}
	}
	m := &t.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.regs {
		if addr < r.addr+r.length && r.addr < addr+length {
			return fmt.Errorf("register memory [%#x, +%d): %w: overlaps [%#x, +%d)", addr, length, ErrRegistered, r.addr, r.length)
		}
	}
	r := &region{addr: addr, length: length}
	size := t.cfg.RegChunkSize
	for off := uint64(0); off < length; off += size {
		ch := &chunk{addr: addr + off, length: min(size, length-off), location: location}
		err := t.registerChunk(ch, wildcard)
		if err != nil {
			t.deregisterChunks(r.chunks)
			return fmt.Errorf("register memory [%#x, +%d): chunk [%#x, +%d): %w", addr, length, ch.addr, ch.length, err)
		}
		r.chunks = append(r.chunks, ch)
	}
	if m.regs == nil {
		m.regs = map[uint64]*region{}
	}
	m.regs[addr] = r
	m.publishLocked()
	t.log.Debug("memory registered", zap.Uint64("addr", addr), zap.Uint64("length", length),
		zap.Int("chunks", len(r.chunks)), zap.String("location", location))
	return nil
}

func (t *Transport) registerChunk(ch *chunk, wildcard bool) error {
	if wildcard {
		loc, err := t.locate(ch.addr, ch.length)
		if err != nil {
			return err
		}
		ch.location = loc
	}
	gpu, ord, err := memoryKind(ch.location)
	if err != nil {
		return err
	}
	if t.cfg.UseCPU {
		gpu = false
	}
	ch.gpu = gpu
	if gpu {
		ch.gpuID = ord
		if t.cfg.LocalDeviceSet {
			ch.gpuID = t.cfg.LocalDevice
		}
	}
	keys, err := t.nat.RegMR(ch.addr, ch.length, ch.gpu, ch.gpuID)
	if err != nil {
		return err
	}
	ch.lkeys = make([]uint32, t.keySlots)
	ch.rkeys = make([]uint32, t.keySlots)
	for _, k := range keys {
		if k.nic < 0 || k.nic >= t.keySlots {
			t.deregisterChunks([]*chunk{ch})
			return fmt.Errorf("%w: the shim returned a key for nic %d, which it did not list", ErrInvalidConfig, k.nic)
		}
		ch.lkeys[k.nic], ch.rkeys[k.nic] = k.lkey, k.rkey
	}
	return nil
}

// deregisterChunks deregisters every chunk, each as the kind it was
// registered as, and returns every failure.
func (t *Transport) deregisterChunks(cs []*chunk) error {
	var errs []error
	for _, c := range cs {
		if err := t.nat.DeregMR(c.addr, c.gpu); err != nil {
			errs = append(errs, fmt.Errorf("chunk [%#x, +%d): %w", c.addr, c.length, err))
		}
	}
	return errors.Join(errs...)
}

// UnregisterMemory deregisters the region RegisterMemory registered at
// addr, chunk by chunk. Transfers must not use it any more.
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
	if err := t.deregisterChunks(r.chunks); err != nil {
		return fmt.Errorf("unregister memory at %#x: %w", addr, err)
	}
	return nil
}
