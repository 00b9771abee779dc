package memory

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/internal/errs"
)

// Host is the Device of host memory.
const Host = -1

// The engine's sentinels, as this package reports them.
var (
	// ErrInvalid is a malformed registration: zero length, null address, a
	// range that wraps, a bad location, an address listed twice.
	ErrInvalid = errs.InvalidArgument
	// ErrOverlapped is a registration overlapping another.
	ErrOverlapped = errs.AddressOverlapped
	// ErrNotRegistered is an address that no region holds.
	ErrNotRegistered = errs.AddressNotRegistered
)

// Region is one registered range of local memory.
type Region struct {
	Addr, Length uint64
	// Location is where the memory lives, as Mooncake names it: "*",
	// "cpu:N" or "cuda:N".
	Location string
	// Device is the ordinal of the GPU holding the region, or Host.
	Device int
	// seq orders regions by registration, the order Mooncake publishes
	// buffers in.
	seq uint64
}

// End is the first address after the region.
func (r Region) End() uint64 { return r.Addr + r.Length }

// Table holds the registered regions. The zero value is not ready; use New.
type Table struct {
	mu   sync.Mutex // serialises writers
	seq  uint64     // guarded by mu
	snap atomic.Pointer[snapshot]
}

// snapshot is sorted by address, with no overlaps.
type snapshot struct{ byAddr []Region }

// New returns an empty table.
func New() *Table {
	t := &Table{}
	t.snap.Store(&snapshot{})
	return t
}

// Find returns the region that holds [addr, addr+size), without locking.
func (t *Table) Find(addr, size uint64) (Region, bool) {
	return t.snap.Load().find(addr, size)
}

// Contains reports whether [addr, addr+size) lies inside one region. It
// takes no lock: transports call it for every request.
func (t *Table) Contains(addr, size uint64) bool {
	_, ok := t.snap.Load().find(addr, size)
	return ok
}

// Device returns the GPU ordinal of the region holding [addr, addr+size),
// or Host (also for unregistered ranges, which callers have validated
// away). Lock-free, like Contains.
func (t *Table) Device(addr, size uint64) int {
	if r, ok := t.snap.Load().find(addr, size); ok {
		return r.Device
	}
	return Host
}

// Len is the number of regions.
func (t *Table) Len() int { return len(t.snap.Load().byAddr) }

// Regions returns the regions in registration order.
func (t *Table) Regions() []Region {
	out := slices.Clone(t.snap.Load().byAddr)
	slices.SortFunc(out, func(a, b Region) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

func (s *snapshot) find(addr, size uint64) (Region, bool) {
	if size == 0 || addr+size < addr {
		return Region{}, false
	}
	i := s.below(addr)
	if i < 0 {
		return Region{}, false
	}
	r := s.byAddr[i]
	return r, addr+size <= r.End()
}

// below is the index of the last region starting at or below addr, or -1.
func (s *snapshot) below(addr uint64) int {
	i, found := slices.BinarySearchFunc(s.byAddr, addr, func(r Region, a uint64) int { return cmp.Compare(r.Addr, a) })
	if !found {
		i--
	}
	return i
}

// Add registers rs all at once, or none of them.
func (t *Table) Add(rs []Region) error {
	for _, r := range rs {
		if err := check(r); err != nil {
			return err
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load().byAddr
	byAddr := make([]Region, len(old), len(old)+len(rs))
	copy(byAddr, old)
	for _, r := range rs {
		i, _ := slices.BinarySearchFunc(byAddr, r.Addr, func(x Region, a uint64) int { return cmp.Compare(x.Addr, a) })
		if i > 0 && byAddr[i-1].End() > r.Addr {
			p := byAddr[i-1]
			return fmt.Errorf("register [%#x, %#x) overlaps [%#x, %#x): %w", r.Addr, r.End(), p.Addr, p.End(), ErrOverlapped)
		}
		if i < len(byAddr) && byAddr[i].Addr < r.End() {
			n := byAddr[i]
			return fmt.Errorf("register [%#x, %#x) overlaps [%#x, %#x): %w", r.Addr, r.End(), n.Addr, n.End(), ErrOverlapped)
		}
		t.seq++
		r.seq = t.seq
		byAddr = slices.Insert(byAddr, i, r)
	}
	t.snap.Store(&snapshot{byAddr: byAddr})
	return nil
}

func check(r Region) error {
	switch {
	case r.Length == 0:
		return fmt.Errorf("register %#x: zero length: %w", r.Addr, ErrInvalid)
	case r.Addr == 0:
		return fmt.Errorf("register null address: %w", ErrInvalid)
	case r.Addr+r.Length < r.Addr:
		return fmt.Errorf("register %#x+%d: wraps the address space: %w", r.Addr, r.Length, ErrInvalid)
	}
	if err := CheckLocation(r.Location); err != nil {
		return fmt.Errorf("register %#x: %w", r.Addr, err)
	}
	return nil
}

// Remove unregisters the regions starting at addrs, all or none, and
// returns them in the order of addrs.
func (t *Table) Remove(addrs []uint64) ([]Region, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load().byAddr
	idx := make([]int, len(addrs))
	for k, a := range addrs {
		i, found := slices.BinarySearchFunc(old, a, func(x Region, a uint64) int { return cmp.Compare(x.Addr, a) })
		if !found {
			return nil, fmt.Errorf("unregister %#x: %w", a, ErrNotRegistered)
		}
		idx[k] = i
	}
	removed := make([]Region, len(addrs))
	for k, i := range idx {
		removed[k] = old[i]
	}
	var keep []Region
	if len(idx) == 1 {
		// The common case (one unregister_memory call): one copy around
		// the hole.
		keep = make([]Region, 0, len(old)-1)
		keep = append(append(keep, old[:idx[0]]...), old[idx[0]+1:]...)
	} else {
		sorted := slices.Clone(idx)
		slices.Sort(sorted)
		for k := 1; k < len(sorted); k++ {
			if sorted[k] == sorted[k-1] {
				return nil, fmt.Errorf("unregister %#x: listed twice: %w", old[sorted[k]].Addr, ErrInvalid)
			}
		}
		keep = make([]Region, 0, len(old)-len(idx))
		prev := 0
		for _, i := range sorted {
			keep = append(keep, old[prev:i]...)
			prev = i + 1
		}
		keep = append(keep, old[prev:]...)
	}
	t.snap.Store(&snapshot{byAddr: keep})
	return removed, nil
}

// CheckLocation accepts Mooncake's location names: "*" (detect), "cpu:N",
// "cuda:N" (and the other vendors' device prefixes Mooncake knows).
func CheckLocation(loc string) error {
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
	return fmt.Errorf("location %q (want \"*\", \"cpu:N\" or \"cuda:N\"): %w", loc, ErrInvalid)
}
