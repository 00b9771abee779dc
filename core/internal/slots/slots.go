// Package slots maps objects in flight to generation-stamped integer ids.
// C code and hardware (work request ids, shim cookies) hold only the id,
// never a Go pointer (STYLE (b).5); an id whose generation does not match
// its slot, stale or corrupted, finds nothing instead of touching a record
// that was reused.
package slots

import "sync"

// Table holds *T values under ids of the form generation<<32 | slot.
// It is safe for concurrent use; the zero value is ready.
type Table[T any] struct {
	mu      sync.Mutex
	entries []entry[T] // +checklocks:mu
	free    []uint32   // +checklocks:mu
}

type entry[T any] struct {
	gen uint32
	v   *T
}

// put stores v and returns its id; the caller holds mu.
func (t *Table[T]) put(v *T) uint64 {
	var idx uint32
	if n := len(t.free); n > 0 {
		idx = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		idx = uint32(len(t.entries))
		t.entries = append(t.entries, entry[T]{})
	}
	e := &t.entries[idx]
	e.gen++
	if e.gen == 0 {
		e.gen = 1 // an id is never 0
	}
	e.v = v
	return uint64(e.gen)<<32 | uint64(idx)
}

// Put stores v and returns its id.
func (t *Table[T]) Put(v *T) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.put(v)
}

// PutAll stores vs under one lock and appends their ids to ids.
func (t *Table[T]) PutAll(vs []*T, ids []uint64) []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, v := range vs {
		ids = append(ids, t.put(v))
	}
	return ids
}

// Take removes and returns the value of id, or nil when id is not live.
func (t *Table[T]) Take(id uint64) *T {
	idx, gen := uint32(id), uint32(id>>32)
	t.mu.Lock()
	defer t.mu.Unlock()
	if int(idx) >= len(t.entries) {
		return nil
	}
	e := &t.entries[idx]
	if e.gen != gen || e.v == nil {
		return nil
	}
	v := e.v
	e.v = nil
	t.free = append(t.free, idx)
	return v
}

// Drain removes and returns every live value.
func (t *Table[T]) Drain() []*T {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*T
	for i := range t.entries {
		if v := t.entries[i].v; v != nil {
			out = append(out, v)
			t.entries[i].v = nil
			t.free = append(t.free, uint32(i))
		}
	}
	return out
}

// Live counts the values in the table.
func (t *Table[T]) Live() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, e := range t.entries {
		if e.v != nil {
			n++
		}
	}
	return n
}
