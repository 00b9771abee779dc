package core

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// region is one registered range of local memory.
type region struct {
	addr     uint64
	length   uint64
	location string
	// device is the ordinal of the GPU holding the region, or gpu.Host.
	device int
}

func (r region) end() uint64 { return r.addr + r.length }

// memoryTable holds the registered regions. Readers (every remote request
// the TCP server validates, every local check on submit) load an immutable
// snapshot without locking; writers copy it under mu.
type memoryTable struct {
	mu sync.Mutex // serialises writers
	// byAddr is sorted by addr and non-overlapping; order keeps registration
	// order, which is the order Mooncake publishes buffers in.
	snap atomic.Pointer[memorySnapshot]
}

type memorySnapshot struct {
	byAddr []region
	order  []region
}

func newMemoryTable() *memoryTable {
	t := &memoryTable{}
	t.snap.Store(&memorySnapshot{})
	return t
}

// contains reports whether [addr, addr+size) lies inside one region.
func (s *memorySnapshot) contains(addr, size uint64) bool {
	_, ok := s.find(addr, size)
	return ok
}

// find returns the region that holds [addr, addr+size).
func (s *memorySnapshot) find(addr, size uint64) (region, bool) {
	if size == 0 || addr+size < addr {
		return region{}, false
	}
	// the last region starting at or below addr
	i, found := slices.BinarySearchFunc(s.byAddr, addr, func(r region, a uint64) int {
		switch {
		case r.addr < a:
			return -1
		case r.addr > a:
			return 1
		}
		return 0
	})
	if !found {
		i--
	}
	if i < 0 {
		return region{}, false
	}
	r := s.byAddr[i]
	return r, addr >= r.addr && addr+size <= r.end()
}

// Contains is the lock-free validator handed to transports.
func (t *memoryTable) Contains(addr, size uint64) bool { return t.snap.Load().contains(addr, size) }

// device returns the GPU ordinal of the region holding [addr, addr+size),
// or gpu.Host (also for unregistered ranges, which the caller has
// validated away). Lock-free, like Contains.
func (t *memoryTable) device(addr, size uint64) int {
	if r, ok := t.snap.Load().find(addr, size); ok {
		return r.device
	}
	return gpu.Host
}

// regions returns the regions in registration order.
func (t *memoryTable) regions() []region { return t.snap.Load().order }

// add registers rs all at once, or none of them.
func (t *memoryTable) add(rs []region) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	byAddr := slices.Clone(old.byAddr)
	for _, r := range rs {
		if r.length == 0 {
			return fmt.Errorf("register %#x: zero length: %w", r.addr, ErrInvalidArgument)
		}
		if r.addr == 0 {
			return fmt.Errorf("register null address: %w", ErrInvalidArgument)
		}
		if r.addr+r.length < r.addr {
			return fmt.Errorf("register %#x+%d: wraps the address space: %w", r.addr, r.length, ErrInvalidArgument)
		}
		if err := checkLocation(r.location); err != nil {
			return fmt.Errorf("register %#x: %w", r.addr, err)
		}
		i, _ := slices.BinarySearchFunc(byAddr, r.addr, func(x region, a uint64) int {
			switch {
			case x.addr < a:
				return -1
			case x.addr > a:
				return 1
			}
			return 0
		})
		if i > 0 && byAddr[i-1].end() > r.addr {
			p := byAddr[i-1]
			return fmt.Errorf("register [%#x, %#x) overlaps [%#x, %#x): %w", r.addr, r.end(), p.addr, p.end(), ErrAddressOverlapped)
		}
		if i < len(byAddr) && byAddr[i].addr < r.end() {
			n := byAddr[i]
			return fmt.Errorf("register [%#x, %#x) overlaps [%#x, %#x): %w", r.addr, r.end(), n.addr, n.end(), ErrAddressOverlapped)
		}
		byAddr = slices.Insert(byAddr, i, r)
	}
	order := append(slices.Clone(old.order), rs...)
	t.snap.Store(&memorySnapshot{byAddr: byAddr, order: order})
	return nil
}

// remove unregisters the regions starting at addrs, all or none.
func (t *memoryTable) remove(addrs []uint64) ([]region, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	gone := make(map[uint64]bool, len(addrs))
	for _, a := range addrs {
		if gone[a] {
			return nil, fmt.Errorf("unregister %#x: listed twice: %w", a, ErrInvalidArgument)
		}
		if !slices.ContainsFunc(old.byAddr, func(r region) bool { return r.addr == a }) {
			return nil, fmt.Errorf("unregister %#x: %w", a, ErrAddressNotRegistered)
		}
		gone[a] = true
	}
	keep := func(r region) bool { return !gone[r.addr] }
	var removed []region
	for _, r := range old.order {
		if !keep(r) {
			removed = append(removed, r)
		}
	}
	t.snap.Store(&memorySnapshot{
		byAddr: slices.DeleteFunc(slices.Clone(old.byAddr), func(r region) bool { return !keep(r) }),
		order:  slices.DeleteFunc(slices.Clone(old.order), func(r region) bool { return !keep(r) }),
	})
	return removed, nil
}

// checkLocation accepts Mooncake's location names: "*" (detect), "cpu:N",
// "cuda:N" (and the other vendors' device prefixes Mooncake knows).
func checkLocation(loc string) error {
	if loc == "*" {
		return nil
	}
	kind, n, ok := strings.Cut(loc, ":")
	if ok {
		switch kind {
		case "cpu", "cuda", "hip", "musa", "npu", "maca":
			if v, err := strconv.Atoi(n); err == nil && v >= 0 {
				return nil
			}
		}
	}
	return fmt.Errorf("location %q (want \"*\", \"cpu:N\" or \"cuda:N\"): %w", loc, ErrInvalidArgument)
}
