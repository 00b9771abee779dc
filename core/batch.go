package core

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/transport"
)

// BatchID names a batch. It is an opaque, validated integer (never a
// pointer, unlike Mooncake's): generation<<32 | slot+1. An unknown, freed or
// forged id is an error, never a crash. It is never 0 and stays below 2^63.
type BatchID uint64

// maxBatchCapacity bounds one batch, so a typo cannot allocate gigabytes.
const maxBatchCapacity = 1 << 20

// batch is a set of tasks submitted together.
type batch struct {
	id       BatchID
	capacity int
	group    *transport.Group

	mu    sync.Mutex // guards tasks growth and notify in Submit
	tasks atomic.Pointer[[]*transport.Task]
	// notify is sent to notifyTo once every task completed.
	notify     *Notify
	notifyTo   SegmentHandle
	notifyDone atomic.Bool
}

func (b *batch) taskList() []*transport.Task {
	if p := b.tasks.Load(); p != nil {
		return *p
	}
	return nil
}

// status is the batch status as Mooncake computes it: FAILED if any task
// failed, COMPLETED once all completed, WAITING otherwise.
func (b *batch) status() transport.Status {
	switch {
	case b.group.Failed() > 0 && b.group.Pending() == 0:
		return transport.Failed
	case b.group.Pending() > 0:
		return transport.Waiting
	}
	return transport.Completed
}

// batchTable maps ids to batches. Lookups (status polling) are lock-free:
// two atomic loads into a chunked slot array. Allocation and free take mu.
type batchTable struct {
	chunks [batchChunks]atomic.Pointer[[batchChunkSize]atomic.Pointer[batch]]

	mu   sync.Mutex
	free []uint32 // free slots
	next uint32   // first never-used slot
	gen  uint32
}

const (
	batchChunkSize = 1024
	batchChunks    = 1024 // up to 1M live batches
)

func (t *batchTable) slot(i uint32) *atomic.Pointer[batch] {
	c := t.chunks[i/batchChunkSize].Load()
	if c == nil {
		return nil
	}
	return &c[i%batchChunkSize]
}

func (t *batchTable) alloc(capacity int) (*batch, error) {
	if capacity < 0 || capacity > maxBatchCapacity {
		return nil, fmt.Errorf("batch capacity %d (want 0 to %d): %w", capacity, maxBatchCapacity, ErrInvalidArgument)
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
			t.chunks[i/batchChunkSize].Store(new([batchChunkSize]atomic.Pointer[batch]))
		}
	}
	t.gen = (t.gen + 1) & 0x7fffffff
	if t.gen == 0 {
		t.gen = 1
	}
	b := &batch{
		id:       BatchID(uint64(t.gen)<<32 | uint64(i+1)),
		capacity: capacity,
		group:    transport.NewGroup(),
	}
	t.slot(i).Store(b)
	return b, nil
}

// get returns the live batch with this id, without locking.
func (t *batchTable) get(id BatchID) (*batch, error) {
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

// release frees b's slot; the caller checked that nothing is in flight.
func (t *batchTable) release(b *batch) bool {
	s := uint32(b.id&0xffffffff) - 1
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.slot(s).CompareAndSwap(b, nil) {
		return false
	}
	t.free = append(t.free, s)
	return true
}

// live returns every allocated batch (for Close).
func (t *batchTable) live() []*batch {
	t.mu.Lock()
	n := t.next
	t.mu.Unlock()
	var out []*batch
	for i := uint32(0); i < n; i++ {
		if p := t.slot(i); p != nil {
			if b := p.Load(); b != nil {
				out = append(out, b)
			}
		}
	}
	return out
}
