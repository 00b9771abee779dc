package core

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// Request is one transfer between local memory and an open segment.
type Request struct {
	Opcode transport.Opcode
	// Local is an address inside this engine's registered memory.
	Local uintptr
	// Segment is the target, from OpenSegment.
	Segment SegmentHandle
	// Remote is an absolute address in the target's registered memory.
	Remote uint64
	// Length is the number of bytes; zero-length requests complete at once.
	Length uint64
}

// AllocateBatch returns a batch that accepts up to capacity requests.
func (e *Engine) AllocateBatch(capacity int) (BatchID, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	b, err := e.batches.alloc(capacity)
	if err != nil {
		return 0, err
	}
	return b.id, nil
}

// Submit starts reqs in batch id. Every request is checked first: if any is
// bad, none is started and the batch is unchanged.
func (e *Engine) Submit(id BatchID, reqs []Request) error {
	return e.submit(e.ctx, id, reqs, nil)
}

// SubmitWithNotify is Submit plus a notify that is sent to the target of
// reqs[0] once every task of the batch has completed.
func (e *Engine) SubmitWithNotify(id BatchID, reqs []Request, n Notify) error {
	return e.submit(e.ctx, id, reqs, &n)
}

func (e *Engine) submit(ctx context.Context, id BatchID, reqs []Request, n *Notify) error {
	if e.closed.Load() {
		return ErrClosed
	}
	b, err := e.batches.get(id)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	segs := make([]*segment, len(reqs))
	for i, r := range reqs {
		s, err := e.checkRequest(ctx, r)
		if err != nil {
			return fmt.Errorf("submit request %d: %w", i, err)
		}
		segs[i] = s
	}

	b.mu.Lock()
	old := b.taskList()
	if len(old)+len(reqs) > b.capacity {
		b.mu.Unlock()
		return fmt.Errorf("submit %d requests to batch %d holding %d of %d: %w", len(reqs), uint64(id), len(old), b.capacity, ErrTooManyRequests)
	}
	if n != nil {
		if len(reqs) == 0 {
			b.mu.Unlock()
			return fmt.Errorf("submit notify with no request: %w", ErrInvalidArgument)
		}
		if b.notify != nil {
			b.mu.Unlock()
			return fmt.Errorf("batch %d already carries a notify: %w", uint64(id), ErrInvalidArgument)
		}
		b.notify, b.notifyTo = n, reqs[0].Segment
	}
	tasks := make([]transport.Task, len(reqs))
	all := make([]*transport.Task, len(old), len(old)+len(reqs))
	copy(all, old)
	for i, r := range reqs {
		tasks[i].Init(transport.Request{Opcode: r.Opcode, Local: r.Local, Remote: r.Remote, Length: r.Length}, b.group)
		all = append(all, &tasks[i])
	}
	b.group.Add(len(reqs))
	b.tasks.Store(&all)
	b.mu.Unlock()

	// Requests contiguous on both sides go out as one request (coalesce),
	// then one Submit per peer, in order.
	wire, peers := e.coalesce(reqs, segs, all[len(old):])
	start := 0
	for i := 1; i <= len(wire); i++ {
		if i == len(wire) || peers[i].peer != peers[start].peer {
			e.xp.Submit(ctx, peers[start].peer, peers[start].desc, wire[start:i])
			start = i
		}
	}
	return nil
}

// Coalescing pays for small blocks, whose headers and acknowledgements
// dominate; large ones already fill the lanes. A carrier stays at most
// maxCoalesced bytes, so big runs still spread across lanes as several
// requests.
const (
	coalesceBelow = 1 << 20 // only blocks smaller than this are merged
	maxCoalesced  = 4 << 20
)

// coalesce returns the tasks to hand to the transport, with the segment of
// each. Over TCP, consecutive requests of the same opcode whose local and
// remote ranges both continue the previous one's, within one local
// registration and one buffer of the target, become a single request that
// carries them (KV blocks are often laid out this way, and so is
// transfer_engine_bench's one-thread layout): one header and one
// acknowledgement instead of one per block. Each request keeps its own
// status. Other transports slice by themselves and get the tasks as they
// are.
func (e *Engine) coalesce(reqs []Request, segs []*segment, tasks []*transport.Task) ([]*transport.Task, []*segment) {
	if e.xp.Protocol() != metadata.ProtocolTCP || len(reqs) < 2 {
		return tasks, segs
	}
	wire := make([]*transport.Task, 0, len(reqs))
	out := make([]*segment, 0, len(reqs))
	for i := 0; i < len(reqs); {
		j, total := i+1, reqs[i].Length
		for j < len(reqs) && total > 0 && reqs[i].Length < coalesceBelow && reqs[j].Length < coalesceBelow &&
			total+reqs[j].Length <= maxCoalesced && follows(reqs[j-1], reqs[j]) && segs[j] == segs[i] {
			total += reqs[j].Length
			j++
		}
		for j > i+1 && !(e.mem.Contains(uint64(reqs[i].Local), total) && segs[i].oneBuffer(reqs[i].Remote, total)) {
			j-- // shrink the run until both sides lie in one registration
			total -= reqs[j].Length
		}
		if j == i+1 {
			wire, out = append(wire, tasks[i]), append(out, segs[i])
			i++
			continue
		}
		carrier := new(transport.Task)
		carrier.Init(transport.Request{Opcode: reqs[i].Opcode, Local: reqs[i].Local, Remote: reqs[i].Remote, Length: total}, nil)
		carrier.Carry(tasks[i:j])
		wire, out = append(wire, carrier), append(out, segs[i])
		i = j
	}
	return wire, out
}

// follows reports whether b continues a on both sides, with data to move.
func follows(a, b Request) bool {
	return a.Opcode == b.Opcode && a.Segment == b.Segment && a.Length > 0 && b.Length > 0 &&
		uint64(a.Local)+a.Length == uint64(b.Local) && a.Remote+a.Length == b.Remote
}

// checkRequest validates one request against the local registrations and
// the target's published buffers, refreshing the target's descriptor once
// when the remote range is not in the cached copy (the peer may have
// registered memory since it was opened).
func (e *Engine) checkRequest(ctx context.Context, r Request) (*segment, error) {
	if r.Opcode != transport.Read && r.Opcode != transport.Write {
		return nil, fmt.Errorf("opcode %d: %w", r.Opcode, ErrInvalidArgument)
	}
	s, err := e.segs.get(r.Segment)
	if err != nil {
		return nil, err
	}
	if r.Length == 0 {
		return s, nil
	}
	if err := e.CheckLocal(r.Local, r.Length); err != nil {
		return nil, err
	}
	if s.remoteContains(r.Remote, r.Length) {
		return s, nil
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	fresh, err := e.resolve(ctx, s.name)
	if err != nil {
		return nil, fmt.Errorf("refresh segment %q: %w", s.name, err)
	}
	if !fresh.remoteContains(r.Remote, r.Length) {
		return nil, fmt.Errorf("remote range [%#x, +%d) is not inside a buffer of segment %q: %w", r.Remote, r.Length, s.name, ErrAddressNotRegistered)
	}
	return fresh, nil
}

// TaskStatus returns the status of task i of a batch and the bytes it moved.
func (e *Engine) TaskStatus(id BatchID, i int) (transport.Status, uint64, error) {
	b, err := e.batches.get(id)
	if err != nil {
		return transport.Invalid, 0, err
	}
	tasks := b.taskList()
	if i < 0 || i >= len(tasks) {
		return transport.Invalid, 0, fmt.Errorf("task %d of batch %d holding %d: %w", i, uint64(id), len(tasks), ErrInvalidArgument)
	}
	t := tasks[i]
	st := t.Status()
	if st == transport.Completed {
		e.maybeNotify(b)
	}
	return st, t.Transferred(), nil
}

// BatchStatus polls a batch without locking: Failed if a task failed,
// Completed once all completed, Waiting otherwise. When it first sees the
// batch completed it sends the batch's notify, as Mooncake does.
func (e *Engine) BatchStatus(id BatchID) (transport.Status, error) {
	b, err := e.batches.get(id)
	if err != nil {
		return transport.Invalid, err
	}
	st := b.status()
	if st == transport.Completed {
		if err := e.maybeNotify(b); err != nil {
			return transport.Failed, err
		}
	}
	return st, nil
}

// Wait blocks until every task of the batch has finished or ctx ends. On
// ctx expiry it returns Timeout and ctx's error; the tasks keep running
// under their own deadlines.
func (e *Engine) Wait(ctx context.Context, id BatchID) (transport.Status, error) {
	b, err := e.batches.get(id)
	if err != nil {
		return transport.Invalid, err
	}
	if err := b.group.Wait(ctx); err != nil {
		return transport.Timeout, err
	}
	st := b.status()
	switch st {
	case transport.Completed:
		if err := e.maybeNotify(b); err != nil {
			return transport.Failed, err
		}
	case transport.Failed:
		return st, b.firstError()
	}
	return st, nil
}

// firstError is the error of the first failed task.
func (b *batch) firstError() error {
	for i, t := range b.taskList() {
		if err := t.Err(); err != nil {
			return fmt.Errorf("task %d: %w", i, err)
		}
	}
	return errors.New("batch failed")
}

// maybeNotify sends the batch's notify once, after completion.
func (e *Engine) maybeNotify(b *batch) error {
	if b.notify == nil || !b.notifyDone.CompareAndSwap(false, true) {
		return nil
	}
	s, err := e.segs.get(b.notifyTo)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	return e.SendNotify(ctx, s.desc.Name, *b.notify)
}

// FreeBatch releases a batch. It fails with ErrBatchBusy while any of its
// tasks is in flight.
func (e *Engine) FreeBatch(id BatchID) error {
	b, err := e.batches.get(id)
	if err != nil {
		return fmt.Errorf("free: %w", err)
	}
	if n := b.group.Pending(); n > 0 {
		return fmt.Errorf("free batch %d with %d tasks in flight: %w", uint64(id), n, ErrBatchBusy)
	}
	if !e.batches.release(b) {
		return fmt.Errorf("free: batch %d: %w", uint64(id), ErrUnknownBatch)
	}
	return nil
}

// Transfer runs reqs as one batch and waits for it: the synchronous form
// used by Python's *_sync calls. ctx bounds the whole transfer; if it
// expires, the unfinished tasks are cancelled and the batch is freed once
// they have stopped.
func (e *Engine) Transfer(ctx context.Context, reqs []Request, n *Notify) error {
	id, err := e.AllocateBatch(len(reqs))
	if err != nil {
		return err
	}
	// The caller waits right away: the TCP transport may run a lone small
	// request on this goroutine instead of waking one of its own.
	if err := e.submit(tcp.Sync(ctx), id, reqs, n); err != nil {
		e.FreeBatch(id)
		return err
	}
	st, err := e.Wait(ctx, id)
	if st == transport.Timeout {
		e.reap(id)
		return fmt.Errorf("transfer of %d requests: %w", len(reqs), err)
	}
	if ferr := e.FreeBatch(id); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		return fmt.Errorf("transfer of %d requests: %w", len(reqs), err)
	}
	return nil
}

// reap frees a batch in the background once its tasks have stopped. The
// transport finishes every task within its I/O deadlines, or at Close.
func (e *Engine) reap(id BatchID) {
	b, err := e.batches.get(id)
	if err != nil {
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		// The transport fails every task when it closes, so this returns.
		_ = b.group.Wait(context.Background())
		if err := e.FreeBatch(id); err != nil {
			e.log.Debug("reap batch", zap.Error(err))
		}
	}()
}
