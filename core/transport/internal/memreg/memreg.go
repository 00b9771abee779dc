package memreg

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/metadata"
)

var (
	// ErrRegistered means a range overlaps memory registered already.
	ErrRegistered = errors.New("memory already registered")
	// ErrNotRegistered means an address or range is not inside registered
	// (or published) memory.
	ErrNotRegistered = errors.New("address not registered")
)

// Chunk is one piece of a Region: registered with the hardware as one
// unit, with one key per device, and published as one buffer. N is what
// the transport keeps per chunk (its memory regions, the memory's kind).
type Chunk[N any] struct {
	// Addr and Length are the chunk's range.
	Addr, Length uint64
	// Location is the memory's location ("cpu:0", "cuda:1"): the name of
	// its buffer in the descriptor and the row of the priority matrix that
	// chooses its devices.
	Location string
	// LKeys and RKeys are the chunk's keys, indexed as the transport
	// publishes them (by device id, or by NIC id).
	LKeys, RKeys []uint32
	// Native is the transport's own state of the chunk.
	Native N
}

// End is the first address after the chunk.
func (c *Chunk[N]) End() uint64 { return c.Addr + c.Length }

// Region is one registration: what RegisterMemory was given.
type Region[N any] struct {
	Addr, Length uint64
	Chunks       []*Chunk[N]
}

// Table is a transport's registered memory. The zero value is empty and
// ready; it is safe for concurrent use.
type Table[N any] struct {
	mu   sync.Mutex
	regs map[uint64]*Region[N] // +checklocks:mu; by Region.Addr
	snap atomic.Pointer[[]*Chunk[N]]
}

// Register records [addr, addr+length) as a Region cut into chunks of at
// most limit bytes, each with location. It calls reg on each chunk in
// address order, to register it with the hardware and fill its keys (reg
// may change its Location, and must leave nothing registered when it
// fails). When reg fails, dereg is given the chunks registered so far, and
// the table is unchanged. A range that overlaps a registration is an
// error matching ErrRegistered, and reg is not called. Registrations are
// serialised; lookups go on meanwhile.
func (t *Table[N]) Register(addr, length, limit uint64, location string,
	reg func(*Chunk[N]) error, dereg func([]*Chunk[N]) error) (*Region[N], error) {
	if length == 0 || addr+length < addr || limit == 0 {
		return nil, fmt.Errorf("register [%#x, +%d) in chunks of %d: empty or wrapping range", addr, length, limit)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range t.regs {
		if addr < r.Addr+r.Length && r.Addr < addr+length {
			return nil, fmt.Errorf("%w: [%#x, +%d) overlaps [%#x, +%d)", ErrRegistered, addr, length, r.Addr, r.Length)
		}
	}
	r := &Region[N]{Addr: addr, Length: length}
	for off := uint64(0); off < length; off += limit {
		ch := &Chunk[N]{Addr: addr + off, Length: min(limit, length-off), Location: location}
		if err := reg(ch); err != nil {
			if len(r.Chunks) > 0 {
				err = errors.Join(err, dereg(r.Chunks))
			}
			return nil, fmt.Errorf("chunk [%#x, +%d): %w", ch.Addr, ch.Length, err)
		}
		r.Chunks = append(r.Chunks, ch)
	}
	if t.regs == nil {
		t.regs = map[uint64]*Region[N]{}
	}
	t.regs[addr] = r
	t.publishLocked()
	return r, nil
}

// Unregister removes and returns the region registered at addr; the caller
// deregisters its chunks. An addr no region starts at is an error matching
// ErrNotRegistered.
func (t *Table[N]) Unregister(addr uint64) (*Region[N], error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.regs[addr]
	if !ok {
		return nil, fmt.Errorf("no registration starts at %#x: %w", addr, ErrNotRegistered)
	}
	delete(t.regs, addr)
	t.publishLocked()
	return r, nil
}

// Take removes and returns every region.
func (t *Table[N]) Take() []*Region[N] {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Region[N], 0, len(t.regs))
	for _, r := range t.regs {
		out = append(out, r)
	}
	clear(t.regs)
	t.publishLocked()
	return out
}

// Region returns the region registered at addr.
func (t *Table[N]) Region(addr uint64) (*Region[N], bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.regs[addr]
	return r, ok
}

// Find returns the chunk holding addr and its end, as a slicing.Finder. It
// takes no lock.
func (t *Table[N]) Find(addr uint64) (*Chunk[N], uint64, bool) {
	p := t.snap.Load()
	if p == nil {
		return nil, 0, false
	}
	cs := *p
	i := sort.Search(len(cs), func(i int) bool { return cs[i].Addr > addr }) - 1
	if i < 0 || addr >= cs[i].End() {
		return nil, 0, false
	}
	return cs[i], cs[i].End(), true
}

// +checklocks:t.mu
func (t *Table[N]) publishLocked() {
	var cs []*Chunk[N]
	for _, r := range t.regs {
		cs = append(cs, r.Chunks...)
	}
	slices.SortFunc(cs, func(a, b *Chunk[N]) int { return cmp.Compare(a.Addr, b.Addr) })
	t.snap.Store(&cs)
}

// Buffers is how a transport publishes its memory: each of bufs (the
// engine's registrations, matched by Addr) replaced by one buffer per
// chunk of its region, named by the chunk's location and carrying copies
// of its keys. The addresses of bufs that no region starts at are
// returned in missing, and left out.
func (t *Table[N]) Buffers(bufs []metadata.BufferDesc) (out []metadata.BufferDesc, missing []uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range bufs {
		r, ok := t.regs[b.Addr]
		if !ok {
			missing = append(missing, b.Addr)
			continue
		}
		for _, ch := range r.Chunks {
			out = append(out, metadata.BufferDesc{Name: ch.Location, Addr: ch.Addr, Length: ch.Length,
				RKey: slices.Clone(ch.RKeys), LKey: slices.Clone(ch.LKeys)})
		}
	}
	return out, missing
}

// Published is a peer's published buffers, sorted by address. It is
// immutable.
type Published struct {
	bufs []metadata.BufferDesc
}

// Publish keeps the buffers of bufs that are neither empty nor wrapping
// and that keep accepts, sorted by address. keep is called in address
// order, so that it may also drop a buffer overlapping one it kept.
func Publish(bufs []metadata.BufferDesc, keep func(b *metadata.BufferDesc) bool) *Published {
	sorted := slices.Clone(bufs)
	slices.SortStableFunc(sorted, func(a, b metadata.BufferDesc) int { return cmp.Compare(a.Addr, b.Addr) })
	p := &Published{}
	for i := range sorted {
		b := &sorted[i]
		if b.Length > 0 && b.Addr+b.Length > b.Addr && keep(b) {
			p.bufs = append(p.bufs, *b)
		}
	}
	return p
}

// Len is the number of buffers kept.
func (p *Published) Len() int { return len(p.bufs) }

// Find returns the buffer holding addr and its end, as a slicing.Finder:
// the buffer with the highest start at or below addr, if it holds addr.
// The buffer must not be modified.
func (p *Published) Find(addr uint64) (*metadata.BufferDesc, uint64, bool) {
	i := sort.Search(len(p.bufs), func(i int) bool { return p.bufs[i].Addr > addr }) - 1
	if i < 0 || addr >= p.bufs[i].Addr+p.bufs[i].Length {
		return nil, 0, false
	}
	return &p.bufs[i], p.bufs[i].Addr + p.bufs[i].Length, true
}
