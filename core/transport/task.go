package transport

import (
	"context"
	"sync/atomic"
)

// Opcode is the direction of a transfer, numbered as Mooncake's
// TransferRequest::OpCode (READ=0, WRITE=1).
type Opcode uint8

const (
	// Read copies remote memory into local memory.
	Read Opcode = 0
	// Write copies local memory into remote memory.
	Write Opcode = 1
)

func (o Opcode) String() string {
	switch o {
	case Read:
		return "read"
	case Write:
		return "write"
	}
	return "invalid"
}

// Request is one transfer between local memory and a peer's memory.
type Request struct {
	Opcode Opcode
	// Local is an address in this process, inside registered memory.
	Local uintptr
	// Remote is an absolute virtual address in the target process, as
	// Mooncake's target_offset (no segment-relative translation).
	Remote uint64
	// Length is the number of bytes to move.
	Length uint64
}

// Status is Mooncake's TransferStatusEnum; the values are part of the API.
type Status int32

const (
	Waiting   Status = 0
	Pending   Status = 1
	Invalid   Status = 2
	Canceled  Status = 3
	Completed Status = 4
	Timeout   Status = 5
	Failed    Status = 6
)

func (s Status) String() string {
	switch s {
	case Waiting:
		return "waiting"
	case Pending:
		return "pending"
	case Invalid:
		return "invalid"
	case Canceled:
		return "canceled"
	case Completed:
		return "completed"
	case Timeout:
		return "timeout"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Group counts the unfinished tasks of one batch, so a waiter can sleep
// instead of polling and a poller reads two atomics.
type Group struct {
	pending atomic.Int64
	failed  atomic.Int64
	wake    chan struct{}
}

// NewGroup returns an empty group.
func NewGroup() *Group { return &Group{wake: make(chan struct{}, 1)} }

// Add records n more unfinished tasks. Call it before handing them out.
func (g *Group) Add(n int) { g.pending.Add(int64(n)) }

// Pending is the number of unfinished tasks.
func (g *Group) Pending() int64 { return g.pending.Load() }

// Failed is the number of tasks that finished with an error.
func (g *Group) Failed() int64 { return g.failed.Load() }

// Wait blocks until no task is pending or ctx ends, whichever is first.
func (g *Group) Wait(ctx context.Context) error {
	for g.pending.Load() > 0 {
		select {
		case <-g.wake:
		case <-ctx.Done():
			if g.pending.Load() == 0 {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}

func (g *Group) taskDone(failed bool) {
	if failed {
		g.failed.Add(1)
	}
	if g.pending.Add(-1) == 0 {
		select {
		case g.wake <- struct{}{}:
		default:
		}
	}
}

// Task is a Request plus its completion state. A transport may split a task
// into parts (slices, lanes); the task finishes when its last part does.
type Task struct {
	Request
	group       *Group
	parts       atomic.Int32
	status      atomic.Int32
	transferred atomic.Uint64
	err         atomic.Pointer[error]
	// members are the tasks this one carries: requests that were
	// contiguous on both sides and go out as this single request. They
	// finish when it does (see Carry).
	members []*Task
}

// Carry makes t, a task in no group whose Request covers exactly the
// members' ranges back to back, carry them: they become Pending now and
// finish with t, each with its own length or t's error.
func (t *Task) Carry(members []*Task) {
	t.members = members
	for _, m := range members {
		m.Start(1)
	}
}

// Init prepares t for req, reporting to g (which may be nil). It must not be
// called while t is in flight.
func (t *Task) Init(req Request, g *Group) {
	t.Request = req
	t.group = g
	t.parts.Store(0)
	t.status.Store(int32(Waiting))
	t.transferred.Store(0)
	t.err.Store(nil)
	t.members = nil
}

// Start declares that the task will finish after n calls of PartDone.
// A transport calls it once, before handing the parts to workers.
func (t *Task) Start(parts int) {
	t.parts.Store(int32(parts))
	t.status.Store(int32(Pending))
}

// PartDone reports one finished part: n bytes moved, or err. The first error
// wins; the task completes, or fails, when its last part is done.
func (t *Task) PartDone(n uint64, err error) {
	if err != nil {
		e := err
		t.err.CompareAndSwap(nil, &e)
	} else {
		t.transferred.Add(n)
	}
	if t.parts.Add(-1) > 0 {
		return
	}
	failed := t.err.Load() != nil
	if failed {
		t.status.Store(int32(Failed))
	} else {
		t.status.Store(int32(Completed))
	}
	if t.group != nil {
		t.group.taskDone(failed)
	}
	for _, m := range t.members {
		if failed {
			m.PartDone(0, *t.err.Load())
		} else {
			m.PartDone(m.Length, nil)
		}
	}
}

// Fail finishes a task that was never started (or whose remaining parts will
// not run) with err.
func (t *Task) Fail(err error) {
	t.parts.Store(1)
	t.PartDone(0, err)
}

// Status is the task's current status.
func (t *Task) Status() Status { return Status(t.status.Load()) }

// Transferred is the number of bytes moved so far.
func (t *Task) Transferred() uint64 { return t.transferred.Load() }

// Err is the task's first error, or nil.
func (t *Task) Err() error {
	if p := t.err.Load(); p != nil {
		return *p
	}
	return nil
}
