package batch

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/transport"
)

// Table maps ids to batches. Lookups (status polling) are lock-free: two
// atomic loads into a chunked slot array. Allocation and free take mu. The
// zero value is ready.
type Table struct {
	chunks [batchChunks]atomic.Pointer[[batchChunkSize]atomic.Pointer[Batch]]

	live atomic.Int64 // batches allocated and not released

	mu   sync.Mutex
	free []uint32 // +checklocks:mu: free slots
	next uint32   // +checklocks:mu: first never-used slot
	gen  uint32   // +checklocks:mu
}

const (
	batchChunkSize = 1024
	batchChunks    = 1024 // up to 1M live batches
)

func (t *Table) slot(i uint32) *atomic.Pointer[Batch] {
	c := t.chunks[i/batchChunkSize].Load()
	if c == nil {
		return nil
	}
	return &c[i%batchChunkSize]
}

// Alloc returns a new batch that accepts up to capacity requests.
func (t *Table) Alloc(capacity int) (*Batch, error) {
	if capacity < 0 || capacity > MaxCapacity {
		return nil, fmt.Errorf("batch capacity %d (want 0 to %d): %w", capacity, MaxCapacity, ErrInvalidArgument)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var i uint32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		if t.next >= batchChunks*batchChunkSize {
			return nil, fmt.Errorf("allocate batch: %d batches in use: %w", t.next, ErrTooManyRequests)
		}
		i = t.next
		t.next++
		if t.chunks[i/batchChunkSize].Load() == nil {
			t.chunks[i/batchChunkSize].Store(new([batchChunkSize]atomic.Pointer[Batch]))
		}
	}
	t.gen = (t.gen + 1) & 0x7fffffff
	if t.gen == 0 {
		t.gen = 1
	}
	b := &Batch{
		id:       ID(uint64(t.gen)<<32 | uint64(i+1)),
		capacity: capacity,
		group:    transport.NewGroup(),
	}
	t.slot(i).Store(b)
	t.live.Add(1)
	return b, nil
}

// Len counts the batches allocated and not yet released.
func (t *Table) Len() int { return int(t.live.Load()) }

// Get returns the live batch with this id, without locking.
func (t *Table) Get(id ID) (*Batch, error) {
	s := uint32(id & 0xffffffff)
	if s == 0 || s > batchChunks*batchChunkSize || id>>63 != 0 {
		return nil, fmt.Errorf("batch %d: %w", uint64(id), ErrUnknownBatch)
	}
	p := t.slot(s - 1)
	if p == nil {
		return nil, fmt.Errorf("batch %d: %w", uint64(id), ErrUnknownBatch)
	}
	b := p.Load()
	if b == nil || b.id != id {
		return nil, fmt.Errorf("batch %d: %w", uint64(id), ErrUnknownBatch)
	}
	return b, nil
}

// Release frees b's slot, reporting whether b was still in it; the caller
// checked that nothing is in flight.
func (t *Table) Release(b *Batch) bool {
	s := uint32(b.id&0xffffffff) - 1
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.slot(s).CompareAndSwap(b, nil) {
		return false
	}
	t.free = append(t.free, s)
	t.live.Add(-1)
	return true
}

// Live returns every allocated batch (for Close).
func (t *Table) Live() []*Batch {
	t.mu.Lock()
	n := t.next
	t.mu.Unlock()
	var out []*Batch
	for i := uint32(0); i < n; i++ {
		if p := t.slot(i); p != nil {
			if b := p.Load(); b != nil {
				out = append(out, b)
			}
		}
	}
	return out
}
