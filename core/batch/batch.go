package batch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pymooncake/pymooncake/core/internal/errs"
	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
)

// The engine's sentinels, as this package reports them.
var (
	// ErrUnknownBatch is an id that was never allocated or is freed.
	ErrUnknownBatch = errs.UnknownBatch
	// ErrTooManyRequests is more requests than a batch's capacity.
	ErrTooManyRequests = errs.TooManyRequests
	// ErrInvalidArgument is a bad capacity or a second notify.
	ErrInvalidArgument = errs.InvalidArgument
)

// ID names a batch: generation<<32 | slot+1. It is never 0 and stays below
// 2^63, so Python sees a positive int64.
type ID uint64

// MaxCapacity bounds one batch, so a typo cannot allocate gigabytes.
const MaxCapacity = 1 << 20

// Batch is a set of tasks submitted together.
type Batch struct {
	id       ID
	capacity int
	group    *transport.Group

	mu    sync.Mutex // serialises Add
	tasks atomic.Pointer[[]*transport.Task]
	// runs attribute the tasks, in order, to the peers they went to.
	runs   []Run  // guarded by mu
	inline [1]Run // runs' first backing: one peer, no allocation

	// notify runs once, when the batch is first seen completed.
	notify     func() error // guarded by mu
	notifyDone atomic.Bool

	// Deadline and Segment are set once, before the id is handed out, by
	// the engine's asynchronous policy: after Deadline the batch counts as
	// timed out; Segment is recovered if it fails.
	Deadline time.Time
	Segment  segment.Handle
	// Cancel, set with them, ends the ctx the batch's tasks were submitted
	// under: the transports then stop them promptly.
	Cancel context.CancelFunc
}

// ID is the batch's id.
func (b *Batch) ID() ID { return b.id }

// Group counts the batch's unfinished and failed tasks.
func (b *Batch) Group() *transport.Group { return b.group }

// Tasks returns the tasks submitted so far, in order.
func (b *Batch) Tasks() []*transport.Task {
	if p := b.tasks.Load(); p != nil {
		return *p
	}
	return nil
}

// Run is a stretch of a batch's tasks, consecutive and submitted at once
// to one peer: their outcomes are recorded under Link (metrics), with the
// time since Start (metrics.Now) as their latency.
type Run struct {
	Tasks int
	Link  *metrics.Link
	Start int64
}

// Add appends a task for each request, reporting to the batch's group, and
// returns them for the caller to hand out; they count as pending at once.
// runs attribute the new tasks, in order, to the peers they go to; their
// Tasks add up to len(reqs). notify, when not nil, is to run once when the
// batch is first seen completed (Notify); a batch carries at most one. Add
// fails, changing nothing, beyond the capacity, with a second notify or
// with runs that do not cover reqs.
func (b *Batch) Add(reqs []transport.Request, notify func() error, runs []Run) ([]*transport.Task, error) {
	n := 0
	for _, r := range runs {
		n += r.Tasks
	}
	if n != len(reqs) {
		return nil, fmt.Errorf("%d requests attributed to peers, of %d: %w", n, len(reqs), ErrInvalidArgument)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.Tasks()
	if len(old)+len(reqs) > b.capacity {
		return nil, fmt.Errorf("submit %d requests to batch %d holding %d of %d: %w", len(reqs), uint64(b.id), len(old), b.capacity, ErrTooManyRequests)
	}
	if notify != nil {
		if b.notify != nil {
			return nil, fmt.Errorf("batch %d already carries a notify: %w", uint64(b.id), ErrInvalidArgument)
		}
		b.notify = notify
	}
	tasks := make([]transport.Task, len(reqs))
	all := make([]*transport.Task, len(old), len(old)+len(reqs))
	copy(all, old)
	for i, r := range reqs {
		tasks[i].Init(r, b.group)
		all = append(all, &tasks[i])
	}
	if b.runs == nil {
		b.runs = b.inline[:0]
	}
	b.runs = append(b.runs, runs...)
	b.group.Add(len(reqs))
	b.tasks.Store(&all)
	return all[len(old):], nil
}

// Runs returns the tasks submitted so far and the runs that attribute
// them, consistently.
func (b *Batch) Runs() ([]*transport.Task, []Run) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Tasks(), b.runs
}

// Notify runs the batch's notify the first time it is called on a
// completed batch; later calls return nil.
func (b *Batch) Notify() error {
	b.mu.Lock()
	fn := b.notify
	b.mu.Unlock()
	if fn == nil || !b.notifyDone.CompareAndSwap(false, true) {
		return nil
	}
	return fn()
}

// Status is the batch status as Mooncake computes it: Failed if any task
// failed (once none is pending), Completed once all completed, Waiting
// otherwise.
func (b *Batch) Status() transport.Status {
	switch {
	case b.group.Failed() > 0 && b.group.Pending() == 0:
		return transport.Failed
	case b.group.Pending() > 0:
		return transport.Waiting
	}
	return transport.Completed
}

// Wait blocks until no task is pending or ctx ends.
func (b *Batch) Wait(ctx context.Context) error { return b.group.Wait(ctx) }

// FirstError is the error of the first failed task.
func (b *Batch) FirstError() error {
	for i, t := range b.Tasks() {
		if err := t.Err(); err != nil {
			return fmt.Errorf("task %d: %w", i, err)
		}
	}
	return errors.New("batch failed")
}
