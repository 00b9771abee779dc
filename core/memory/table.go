package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	gone []*entry   // guarded by mu: removed, not yet waited for
	snap atomic.Pointer[snapshot]
}

// snapshot is sorted by address, with no overlaps.
type snapshot struct{ byAddr []*entry }

// entry is a registered region and the count of the transfers that use it
// now (Pin): Remove waits for them before it returns.
type entry struct {
	Region
	pins    atomic.Int64
	removed atomic.Bool
	idle    chan struct{} // closed by the last Unpin of a removed entry
	once    sync.Once
}

// Pin is a hold on a registered region, taken by Table.Pin.
type Pin struct{ e *entry }

// Unpin releases the hold. The zero Pin holds nothing.
func (p Pin) Unpin() {
	if p.e == nil {
		return
	}
	if p.e.pins.Add(-1) == 0 && p.e.removed.Load() {
		p.e.once.Do(func() { close(p.e.idle) })
	}
}

// New returns an empty table.
func New() *Table {
	t := &Table{}
	t.snap.Store(&snapshot{})
	return t
}

// Find returns the region that holds [addr, addr+size), without locking.
func (t *Table) Find(addr, size uint64) (Region, bool) {
	if e := t.snap.Load().find(addr, size); e != nil {
		return e.Region, true
	}
	return Region{}, false
}

// Contains reports whether [addr, addr+size) lies inside one region. It
// takes no lock: transports call it for every request.
func (t *Table) Contains(addr, size uint64) bool {
	return t.snap.Load().find(addr, size) != nil
}

// Pin checks that [addr, addr+size) lies inside one region and holds that
// region until Unpin: a Remove of it returns only once every pin is
// released, and no pin is granted on a region being removed. Lock-free;
// the server of a transport pins each range it serves for the time it
// touches it, so that no peer writes into memory unregister_memory has
// returned for.
func (t *Table) Pin(addr, size uint64) (Pin, bool) {
	e := t.snap.Load().find(addr, size)
	if e == nil {
		return Pin{}, false
	}
	e.pins.Add(1)
	if e.removed.Load() {
		Pin{e}.Unpin()
		return Pin{}, false
	}
	return Pin{e}, true
}

// Device returns the GPU ordinal of the region holding [addr, addr+size),
// or Host (also for unregistered ranges, which callers have validated
// away). Lock-free, like Contains.
func (t *Table) Device(addr, size uint64) int {
	if e := t.snap.Load().find(addr, size); e != nil {
		return e.Device
	}
	return Host
}

// Len is the number of regions.
func (t *Table) Len() int { return len(t.snap.Load().byAddr) }

// Regions returns the regions in registration order.
func (t *Table) Regions() []Region {
	es := t.snap.Load().byAddr
	out := make([]Region, len(es))
	for i, e := range es {
		out[i] = e.Region
	}
	slices.SortFunc(out, func(a, b Region) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

func (s *snapshot) find(addr, size uint64) *entry {
	if size == 0 || addr+size < addr {
		return nil
	}
	i := s.below(addr)
	if i < 0 {
		return nil
	}
	if e := s.byAddr[i]; addr+size <= e.End() {
		return e
	}
	return nil
}

// below is the index of the last region starting at or below addr, or -1.
func (s *snapshot) below(addr uint64) int {
	i, found := slices.BinarySearchFunc(s.byAddr, addr, byStart)
	if !found {
		i--
	}
	return i
}

func byStart(e *entry, a uint64) int { return cmp.Compare(e.Addr, a) }

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
	byAddr := make([]*entry, len(old), len(old)+len(rs))
	copy(byAddr, old)
	for _, r := range rs {
		i, _ := slices.BinarySearchFunc(byAddr, r.Addr, byStart)
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
		byAddr = slices.Insert(byAddr, i, &entry{Region: r, idle: make(chan struct{})})
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
// returns them in the order of addrs. Once it returns no new Pin is granted
// on them; Wait waits for the pins already held.
func (t *Table) Remove(addrs []uint64) ([]Region, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load().byAddr
	idx := make([]int, len(addrs))
	for k, a := range addrs {
		i, found := slices.BinarySearchFunc(old, a, byStart)
		if !found {
			return nil, fmt.Errorf("unregister %#x: %w", a, ErrNotRegistered)
		}
		idx[k] = i
	}
	var keep []*entry
	if len(idx) == 1 {
		// The common case (one unregister_memory call): one copy around
		// the hole.
		keep = make([]*entry, 0, len(old)-1)
		keep = append(append(keep, old[:idx[0]]...), old[idx[0]+1:]...)
	} else {
		sorted := slices.Clone(idx)
		slices.Sort(sorted)
		for k := 1; k < len(sorted); k++ {
			if sorted[k] == sorted[k-1] {
				return nil, fmt.Errorf("unregister %#x: listed twice: %w", old[sorted[k]].Addr, ErrInvalid)
			}
		}
		keep = make([]*entry, 0, len(old)-len(idx))
		prev := 0
		for _, i := range sorted {
			keep = append(keep, old[prev:i]...)
			prev = i + 1
		}
		keep = append(keep, old[prev:]...)
	}
	removed := make([]Region, len(addrs))
	for k, i := range idx {
		e := old[i]
		e.removed.Store(true)
		if e.pins.Load() == 0 {
			e.once.Do(func() { close(e.idle) })
		}
		removed[k] = e.Region
		t.gone = append(t.gone, e)
	}
	t.snap.Store(&snapshot{byAddr: keep})
	return removed, nil
}

// Wait blocks until no pin is held on the removed regions starting at
// addrs, for at most timeout (and no longer than ctx lives); then it
// returns an error wrapping context.DeadlineExceeded or ctx's error. A
// transfer in flight holds its pins until it stops, bounded by its own
// deadline. Regions nobody holds, the common case of unregister_memory,
// cost no timer.
func (t *Table) Wait(ctx context.Context, timeout time.Duration, addrs []uint64) error {
	t.mu.Lock()
	var es []*entry
	t.gone = slices.DeleteFunc(t.gone, func(e *entry) bool {
		if slices.Contains(addrs, e.Addr) {
			es = append(es, e)
			return true
		}
		return false
	})
	t.mu.Unlock()
	for i, e := range es {
		select {
		case <-e.idle:
		default:
			return waitIdle(ctx, timeout, es[i:])
		}
	}
	return nil
}

// waitIdle waits, under a timer, for the regions still held.
func waitIdle(ctx context.Context, timeout time.Duration, es []*entry) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, e := range es {
		select {
		case <-e.idle:
		case <-ctx.Done():
			return fmt.Errorf("unregister [%#x, +%d): transfers still use it: %w", e.Addr, e.Length, ctx.Err())
		}
	}
	return nil
}

// Restore registers again regions that Remove took out, as they were (a
// failed unregistration is undone).
func (t *Table) Restore(rs []Region) error {
	t.mu.Lock()
	t.gone = slices.DeleteFunc(t.gone, func(e *entry) bool {
		return slices.ContainsFunc(rs, func(r Region) bool { return r.Addr == e.Addr })
	})
	t.mu.Unlock()
	return t.Add(rs)
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
