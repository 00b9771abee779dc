package hostmem

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// The registration table: how an initiator that copies with cross-memory
// attach learns which host-memory ranges the target registered, and how it
// holds a region while it copies, so that the target's UnregisterMemory
// waits for the copy.
//
// The target keeps the table in a memfd that every initiator maps read-only
// (a read-only reopened descriptor: it can neither write nor truncate it).
// The table is a header page and then one 32-byte slot per region:
//
//	header words: magic, gen, capacity, high, unexported, -, -, -, nonce (32 bytes)
//	slot words:   state, addr, length, -
//
// A slot's state is epoch<<1 | live. The target writes under a sequence
// lock (gen is odd while it writes); an initiator copies the live slots
// below high into a sorted snapshot of its own and takes a new one
// whenever gen has moved. unexported counts regions that did not fit in
// the table, which initiators then serve through the fallback. The nonce is
// random: an initiator that reads the same 32 bytes through cross-memory
// attach at the address where the target mapped the table knows that the
// process it reaches is the one that gave it the table.
//
// Pins: each initiator gets a pin area of its own, a memfd of one int64
// counter per slot that only the two of them map. To copy into or out of a
// region, the initiator adds 1 to its counter of the slot, then checks that
// the slot's state is still the one of its snapshot (else it takes the 1
// back and the range is refused); it takes the 1 back when the copy is
// done. To unregister, the target stores the slot's state as dead, then
// waits until the slot's counter is 0 in every pin area. Both sides store
// first and load second with sequentially consistent atomics, so either the
// initiator sees the region dead, or the target sees its pin (Dekker). When
// an initiator's control connection closes (it exited, or closed the
// peer), its pin area stops counting.

const (
	tableMagic   = 0x31_4c_42_54_4d_48_4d_50 // "PMHMTBL1", little endian
	headerBytes  = 4096
	slotBytes    = 32
	pageBytes    = 4096
	wMagic       = 0
	wGen         = 1
	wCapacity    = 2
	wHigh        = 3
	wUnexported  = 4
	nonceOffset  = 64
	nonceBytes   = 32
	stateLive    = 1
	pinPollFirst = 20 * time.Microsecond
	pinPollMax   = time.Millisecond
)

func tableBytes(capacity int) int { return roundPage(headerBytes + slotBytes*capacity) }
func pinsBytes(capacity int) int  { return roundPage(8 * capacity) }
func roundPage(n int) int         { return (n + pageBytes - 1) &^ (pageBytes - 1) }

// word is the 8-byte word at byte offset off of a shared mapping.
func word(mem []byte, off int) *uint64 { return (*uint64)(unsafe.Pointer(&mem[off])) }

func slotWord(mem []byte, slot, w int) *uint64 { return word(mem, headerBytes+slot*slotBytes+8*w) }

func pinWord(pins []byte, slot int) *int64 { return (*int64)(unsafe.Pointer(&pins[8*slot])) }

// exportTable is the target's side: the table it writes and the pin areas
// of its initiators.
type exportTable struct {
	mem      []byte // the table, mapped read-write
	fd       int    // the table's memfd, read-write
	capacity int
	nonce    [nonceBytes]byte

	mu         sync.Mutex      // serialises writers
	slots      map[uint64]int  // guarded by mu: start address -> slot
	unexported map[uint64]bool // guarded by mu: regions that did not fit
	free       []int           // guarded by mu: slots to reuse, any order
	high       int             // guarded by mu: slots ever used
	areas      atomic.Pointer[[]*pinArea]
	areasMu    sync.Mutex // serialises changes of areas
}

// pinArea is one initiator's pin counters, as the target maps them.
type pinArea struct {
	mu   sync.RWMutex // held shared while a waiter reads the counters
	dead bool         // guarded by mu: no longer counted, unmapped
	pins []byte
}

func newExportTable(capacity int) (*exportTable, error) {
	size := tableBytes(capacity)
	fd, err := newMemfd("pymooncake-hostmem-table", size)
	if err != nil {
		return nil, err
	}
	mem, err := mapShared(fd, size, true)
	if err != nil {
		closeFD(fd)
		return nil, err
	}
	x := &exportTable{mem: mem, fd: fd, capacity: capacity, slots: map[uint64]int{}, unexported: map[uint64]bool{}}
	if _, err := rand.Read(x.nonce[:]); err != nil {
		x.close()
		return nil, fmt.Errorf("table nonce: %w", err)
	}
	copy(mem[nonceOffset:], x.nonce[:])
	atomic.StoreUint64(word(mem, 8*wCapacity), uint64(capacity))
	atomic.StoreUint64(word(mem, 8*wMagic), tableMagic)
	x.areas.Store(&[]*pinArea{})
	return x, nil
}

// addr is where the table is mapped here: an initiator reads the nonce
// there through cross-memory attach.
func (x *exportTable) addr() uintptr { return uintptr(unsafe.Pointer(&x.mem[0])) }

// write runs f under the sequence lock.
func (x *exportTable) write(f func()) {
	g := word(x.mem, 8*wGen)
	atomic.AddUint64(g, 1)
	f()
	atomic.AddUint64(g, 1)
}

// add exports a host-memory region. It reports false when the table is full:
// the region is then counted as unexported.
func (x *exportTable) add(addr, length uint64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, dup := x.slots[addr]; dup || x.unexported[addr] {
		return true // the engine never registers a start twice
	}
	slot := -1
	if n := len(x.free); n > 0 {
		slot, x.free = x.free[n-1], x.free[:n-1]
	} else if x.high < x.capacity {
		slot = x.high
		x.high++
	}
	if slot < 0 {
		x.unexported[addr] = true
		x.write(func() { atomic.AddUint64(word(x.mem, 8*wUnexported), 1) })
		return false
	}
	x.slots[addr] = slot
	x.write(func() {
		st := slotWord(x.mem, slot, 0)
		epoch := atomic.LoadUint64(st)>>1 + 1
		atomic.StoreUint64(slotWord(x.mem, slot, 1), addr)
		atomic.StoreUint64(slotWord(x.mem, slot, 2), length)
		atomic.StoreUint64(st, epoch<<1|stateLive)
		if uint64(x.high) > atomic.LoadUint64(word(x.mem, 8*wHigh)) {
			atomic.StoreUint64(word(x.mem, 8*wHigh), uint64(x.high))
		}
	})
	return true
}

// remove unexports the region starting at addr and waits, for at most
// timeout and while ctx lives, until no initiator holds a pin on it. A slot
// whose pins did not drain is never reused.
func (x *exportTable) remove(ctx context.Context, timeout time.Duration, addr uint64) error {
	x.mu.Lock()
	if x.unexported[addr] {
		delete(x.unexported, addr)
		x.write(func() { atomic.AddUint64(word(x.mem, 8*wUnexported), ^uint64(0)) })
		x.mu.Unlock()
		return nil
	}
	slot, ok := x.slots[addr]
	if !ok {
		x.mu.Unlock()
		return nil
	}
	delete(x.slots, addr)
	x.write(func() {
		st := slotWord(x.mem, slot, 0)
		atomic.StoreUint64(st, atomic.LoadUint64(st)&^stateLive)
	})
	x.mu.Unlock()
	if err := x.drain(ctx, timeout, slot); err != nil {
		return fmt.Errorf("region %#x: peers still copying: %w", addr, err)
	}
	x.mu.Lock()
	x.free = append(x.free, slot)
	x.mu.Unlock()
	return nil
}

// drain waits until slot's counter is 0 in every live pin area, for at
// most timeout from the first time it finds one held (a region nobody
// copies, the usual case, costs no clock reading and no timer); it then
// returns context.DeadlineExceeded, or ctx's error if ctx ends first.
func (x *exportTable) drain(ctx context.Context, timeout time.Duration, slot int) error {
	wait := pinPollFirst
	var timer *time.Timer
	var deadline time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for spins := 0; ; spins++ {
		busy := false
		for _, a := range *x.areas.Load() {
			if a.pinned(slot) {
				busy = true
				break
			}
		}
		if !busy {
			return nil
		}
		if spins == 0 {
			deadline = time.Now().Add(timeout)
		}
		if spins < 64 {
			runtime.Gosched() // a copy in flight is usually microseconds from its end
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			return context.DeadlineExceeded
		}
		if timer == nil {
			timer = time.NewTimer(min(wait, left))
		} else {
			timer.Reset(min(wait, left))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		wait = min(2*wait, pinPollMax)
	}
}

// pinned reports whether the initiator of a holds a pin on slot.
func (a *pinArea) pinned(slot int) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return !a.dead && atomic.LoadInt64(pinWord(a.pins, slot)) != 0
}

// newArea makes the pin area of a new initiator. The caller hands fd to
// the initiator, then closes it; the area is counted until drop.
func (x *exportTable) newArea() (*pinArea, int, error) {
	size := pinsBytes(x.capacity)
	fd, err := newMemfd("pymooncake-hostmem-pins", size)
	if err != nil {
		return nil, -1, err
	}
	pins, err := mapShared(fd, size, true)
	if err != nil {
		closeFD(fd)
		return nil, -1, err
	}
	a := &pinArea{pins: pins}
	x.areasMu.Lock()
	next := append(slices.Clone(*x.areas.Load()), a)
	x.areas.Store(&next)
	x.areasMu.Unlock()
	return a, fd, nil
}

// drop stops counting a's pins (its initiator's connection closed) and
// unmaps them once no waiter reads them.
func (x *exportTable) drop(a *pinArea) {
	x.areasMu.Lock()
	next := slices.DeleteFunc(slices.Clone(*x.areas.Load()), func(b *pinArea) bool { return b == a })
	x.areas.Store(&next)
	x.areasMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.dead {
		a.dead = true
		_ = unmap(a.pins)
		a.pins = nil
	}
}

// close unmaps the table and every pin area.
func (x *exportTable) close() error {
	for _, a := range *x.areas.Load() {
		x.drop(a)
	}
	err := unmap(x.mem)
	x.mem = nil
	closeFD(x.fd)
	return err
}

// importTable is an initiator's view of a target's table, and its own pin
// area there.
type importTable struct {
	mem      []byte // the target's table, read-only
	pins     []byte // this initiator's pin counters
	capacity int
	mu       sync.Mutex // serialises refreshes
	snap     atomic.Pointer[tableSnap]
}

// tableSnap is a consistent copy of the target's live slots.
type tableSnap struct {
	gen        uint64
	unexported uint64
	ents       []tableEnt // sorted by addr, no overlaps
}

type tableEnt struct {
	addr, end uint64
	slot      int32
	state     uint64
}

// errTableStuck means the target's table stayed mid-write: its process
// stopped or died while writing it.
var errTableStuck = errors.New("the peer's registration table stays mid-update")

func openImportTable(mem, pins []byte, capacity int) (*importTable, error) {
	if len(mem) < tableBytes(capacity) || len(pins) < pinsBytes(capacity) {
		return nil, fmt.Errorf("table of %d bytes and pins of %d for %d regions: %w", len(mem), len(pins), capacity, ErrMalformed)
	}
	if atomic.LoadUint64(word(mem, 8*wMagic)) != tableMagic || atomic.LoadUint64(word(mem, 8*wCapacity)) != uint64(capacity) {
		return nil, fmt.Errorf("registration table header: %w", ErrMalformed)
	}
	return &importTable{mem: mem, pins: pins, capacity: capacity}, nil
}

func (m *importTable) nonce() []byte { return m.mem[nonceOffset : nonceOffset+nonceBytes] }

// current returns a snapshot no older than the table's current generation.
func (m *importTable) current() (*tableSnap, error) {
	s := m.snap.Load()
	if s != nil && s.gen == atomic.LoadUint64(word(m.mem, 8*wGen)) {
		return s, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.snap.Load(); s != nil && s.gen == atomic.LoadUint64(word(m.mem, 8*wGen)) {
		return s, nil
	}
	s, err := m.read()
	if err != nil {
		return nil, err
	}
	m.snap.Store(s)
	return s, nil
}

// read copies the table under its sequence lock. The target's writers hold
// it for microseconds; a table that stays mid-write for 100 ms belongs to
// a process that stopped there.
func (m *importTable) read() (*tableSnap, error) {
	deadline := time.Now().Add(100 * time.Millisecond)
	for tries := 0; ; tries++ {
		g1 := atomic.LoadUint64(word(m.mem, 8*wGen))
		if g1&1 == 0 {
			high := min(int(atomic.LoadUint64(word(m.mem, 8*wHigh))), m.capacity)
			s := &tableSnap{gen: g1, unexported: atomic.LoadUint64(word(m.mem, 8*wUnexported))}
			for slot := 0; slot < high; slot++ {
				st := atomic.LoadUint64(slotWord(m.mem, slot, 0))
				if st&stateLive == 0 {
					continue
				}
				a, n := atomic.LoadUint64(slotWord(m.mem, slot, 1)), atomic.LoadUint64(slotWord(m.mem, slot, 2))
				if n == 0 || a+n < a {
					continue
				}
				s.ents = append(s.ents, tableEnt{addr: a, end: a + n, slot: int32(slot), state: st})
			}
			if atomic.LoadUint64(word(m.mem, 8*wGen)) == g1 {
				slices.SortFunc(s.ents, func(a, b tableEnt) int { return cmp.Compare(a.addr, b.addr) })
				return s, nil
			}
		}
		if tries%64 == 63 {
			if time.Now().After(deadline) {
				return nil, errTableStuck
			}
			time.Sleep(50 * time.Microsecond)
		} else {
			runtime.Gosched()
		}
	}
}

// find returns the region holding [addr, addr+n).
func (s *tableSnap) find(addr, n uint64) (tableEnt, bool) {
	if n == 0 || addr+n < addr {
		return tableEnt{}, false
	}
	i, found := slices.BinarySearchFunc(s.ents, addr, func(e tableEnt, a uint64) int { return cmp.Compare(e.addr, a) })
	if !found {
		i--
	}
	if i < 0 || addr+n > s.ents[i].end {
		return tableEnt{}, false
	}
	return s.ents[i], true
}

// pin holds e's region for a copy: false when the target has begun to
// unregister it (or reused its slot) since the snapshot.
func (m *importTable) pin(e tableEnt) bool {
	c := pinWord(m.pins, int(e.slot))
	atomic.AddInt64(c, 1)
	if atomic.LoadUint64(slotWord(m.mem, int(e.slot), 0)) != e.state {
		atomic.AddInt64(c, -1)
		return false
	}
	return true
}

func (m *importTable) unpin(slot int32) { atomic.AddInt64(pinWord(m.pins, int(slot)), -1) }

func (m *importTable) close() {
	_ = unmap(m.mem)
	_ = unmap(m.pins)
	m.mem, m.pins = nil, nil
}
