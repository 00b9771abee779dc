package rdma

import "sync"

// slab maps work request ids to in-flight slices. An id is
// generation<<32 | slot: C and the NIC only ever see the integer, and a
// completion whose generation does not match its slot (stale, or
// corrupted) is ignored instead of touching a reused record (STYLE (b).5,
// Mooncake R3).
type slab struct {
	mu      sync.Mutex
	entries []slabEntry // +checklocks:mu
	free    []uint32    // +checklocks:mu
}

type slabEntry struct {
	gen uint32
	s   *slice
}

// put stores ss and appends their ids to ids.
func (b *slab) put(ss []*slice, ids []uint64) []uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range ss {
		var idx uint32
		if n := len(b.free); n > 0 {
			idx = b.free[n-1]
			b.free = b.free[:n-1]
		} else {
			idx = uint32(len(b.entries))
			b.entries = append(b.entries, slabEntry{})
		}
		e := &b.entries[idx]
		e.gen++
		if e.gen == 0 {
			e.gen = 1
		}
		e.s = s
		ids = append(ids, uint64(e.gen)<<32|uint64(idx))
	}
	return ids
}

// take removes and returns the slice of id, or nil when id is not live.
func (b *slab) take(id uint64) *slice {
	idx, gen := uint32(id), uint32(id>>32)
	b.mu.Lock()
	defer b.mu.Unlock()
	if int(idx) >= len(b.entries) {
		return nil
	}
	e := &b.entries[idx]
	if e.gen != gen || e.s == nil {
		return nil
	}
	s := e.s
	e.s = nil
	b.free = append(b.free, idx)
	return s
}

// drain removes and returns every live slice.
func (b *slab) drain() []*slice {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []*slice
	for i := range b.entries {
		if s := b.entries[i].s; s != nil {
			out = append(out, s)
			b.entries[i].s = nil
			b.free = append(b.free, uint32(i))
		}
	}
	return out
}

// live counts the slices in flight (tests).
func (b *slab) live() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, e := range b.entries {
		if e.s != nil {
			n++
		}
	}
	return n
}
