package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/batch"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
)

// BatchID names a batch. It is an opaque, validated integer (never a
// pointer, unlike Mooncake's): an unknown, freed or forged id is an error,
// never a crash. It is never 0 and stays below 2^63.
type BatchID = batch.ID

// Notify is a message sent to a peer's engine after a transfer (Mooncake's
// TransferNotify / NotifyDesc).
type Notify struct {
	Name string
	Msg  string
}

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
	b, err := e.batches.Alloc(capacity)
	if err != nil {
		return 0, err
	}
	return b.ID(), nil
}

// Submit starts reqs in batch id. Every request is checked first: if any is
// bad, none is started and the batch is unchanged.
func (e *Engine) Submit(id BatchID, reqs []Request) error {
	return e.submit(e.ctx, id, reqs, nil, transport.SubmitOptions{})
}

// SubmitWithNotify is Submit plus a notify that is sent to the target of
// reqs[0] once every task of the batch has completed.
func (e *Engine) SubmitWithNotify(id BatchID, reqs []Request, n Notify) error {
	return e.submit(e.ctx, id, reqs, &n, transport.SubmitOptions{})
}

func (e *Engine) submit(ctx context.Context, id BatchID, reqs []Request, n *Notify, opts transport.SubmitOptions) error {
	if e.closed.Load() {
		return ErrClosed
	}
	b, err := e.batches.Get(id)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	if n != nil && len(reqs) == 0 {
		return fmt.Errorf("submit notify with no request: %w", ErrInvalidArgument)
	}
	segs := make([]*segment.Segment, len(reqs))
	treqs := make([]transport.Request, len(reqs))
	for i, r := range reqs {
		s, err := e.checkRequest(ctx, r)
		if err != nil {
			return fmt.Errorf("submit request %d: %w", i, err)
		}
		segs[i] = s
		treqs[i] = transport.Request{Opcode: r.Opcode, Local: r.Local, Remote: r.Remote, Length: r.Length}
	}
	var notify func() error
	if n != nil {
		to, msg := reqs[0].Segment, *n
		notify = func() error { return e.sendBatchNotify(to, msg) }
	}
	var buf [4]batch.Run
	rs := runs(buf[:], segs, metrics.Now())
	tasks, err := b.Add(treqs, notify, rs)
	if err != nil {
		return err
	}
	// One Submit per run of requests to the same segment, in order.
	start := 0
	for _, r := range rs {
		s := segs[start]
		s.Transport.Submit(ctx, s.Peer, tasks[start:start+r.Tasks], opts)
		start += r.Tasks
	}
	return nil
}

// checkRequest validates one request against the local registrations and
// the target's published buffers, refreshing the target's descriptor once
// when the remote range is not in the cached copy (the peer may have
// registered memory since it was opened).
func (e *Engine) checkRequest(ctx context.Context, r Request) (*segment.Segment, error) {
	if r.Opcode != transport.Read && r.Opcode != transport.Write {
		return nil, fmt.Errorf("opcode %d: %w", r.Opcode, ErrInvalidArgument)
	}
	s, err := e.segs.Get(r.Segment)
	if err != nil {
		return nil, err
	}
	if r.Length == 0 {
		return s, nil
	}
	if err := e.CheckLocal(r.Local, r.Length); err != nil {
		return nil, err
	}
	if s.RemoteContains(r.Remote, r.Length) {
		return s, nil
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	fresh, err := e.resolve(ctx, s.Name)
	if err != nil {
		return nil, fmt.Errorf("refresh segment %q: %w", s.Name, err)
	}
	if !fresh.RemoteContains(r.Remote, r.Length) {
		return nil, fmt.Errorf("remote range [%#x, +%d) is not inside a buffer of segment %q: %w", r.Remote, r.Length, s.Name, ErrAddressNotRegistered)
	}
	return fresh, nil
}

// TaskStatus returns the status of task i of a batch and the bytes it moved.
func (e *Engine) TaskStatus(id BatchID, i int) (transport.Status, uint64, error) {
	b, err := e.batches.Get(id)
	if err != nil {
		return transport.Invalid, 0, err
	}
	tasks := b.Tasks()
	if i < 0 || i >= len(tasks) {
		return transport.Invalid, 0, fmt.Errorf("task %d of batch %d holding %d: %w", i, uint64(id), len(tasks), ErrInvalidArgument)
	}
	t := tasks[i]
	st := t.Status()
	if st == transport.Completed && b.Status() == transport.Completed {
		if err := b.Notify(); err != nil {
			e.log.Warn("send the notify of a completed batch", zap.Uint64("batch", uint64(id)), zap.Error(err))
		}
	}
	return st, t.Transferred(), nil
}

// BatchStatus polls a batch without locking: Failed if a task failed,
// Completed once all completed, Waiting otherwise. When it first sees the
// batch completed it sends the batch's notify, as Mooncake does.
func (e *Engine) BatchStatus(id BatchID) (transport.Status, error) {
	b, err := e.batches.Get(id)
	if err != nil {
		return transport.Invalid, err
	}
	st := b.Status()
	if st == transport.Completed {
		if err := b.Notify(); err != nil {
			return transport.Failed, err
		}
	}
	return st, nil
}

// Wait blocks until every task of the batch has finished or ctx ends. On
// ctx expiry it returns Timeout and ctx's error; the tasks keep running
// under their own deadlines.
func (e *Engine) Wait(ctx context.Context, id BatchID) (transport.Status, error) {
	b, err := e.batches.Get(id)
	if err != nil {
		return transport.Invalid, err
	}
	if err := b.Wait(ctx); err != nil {
		return transport.Timeout, err
	}
	st := b.Status()
	switch st {
	case transport.Completed:
		if err := b.Notify(); err != nil {
			return transport.Failed, err
		}
	case transport.Failed:
		return st, b.FirstError()
	}
	return st, nil
}

// sendBatchNotify sends a completed batch's notify to its target segment.
func (e *Engine) sendBatchNotify(to SegmentHandle, n Notify) error {
	s, err := e.segs.Get(to)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	return e.SendNotify(ctx, s.Peer.Name, n)
}

// SendNotify sends n to the engine called segment (its RPC listener).
func (e *Engine) SendNotify(ctx context.Context, segment string, n Notify) error {
	if e.closed.Load() {
		return ErrClosed
	}
	addr, err := e.rpcAddrOf(ctx, segment)
	if err != nil {
		return fmt.Errorf("send notify to %q: %w", segment, err)
	}
	if err := e.client.SendNotify(ctx, addr, handshake.NotifyMsg{Name: n.Name, Msg: n.Msg}); err != nil {
		return fmt.Errorf("send notify to %q at %s: %w", segment, addr, err)
	}
	return nil
}

// FreeBatch releases a batch. It fails with ErrBatchBusy while any of its
// tasks is in flight.
func (e *Engine) FreeBatch(id BatchID) error {
	b, err := e.batches.Get(id)
	if err != nil {
		return fmt.Errorf("free: %w", err)
	}
	if n := b.Group().Pending(); n > 0 {
		return fmt.Errorf("free batch %d with %d tasks in flight: %w", uint64(id), n, ErrBatchBusy)
	}
	if !e.batches.Release(b) {
		return fmt.Errorf("free: batch %d: %w", uint64(id), ErrUnknownBatch)
	}
	e.record(b)
	return nil
}

// Transfer runs reqs as one batch and waits for it: the synchronous form
// used by Python's *_sync calls. ctx bounds the whole transfer; if it
// expires, the unfinished tasks are cancelled and the batch is freed once
// they have stopped.
func (e *Engine) Transfer(ctx context.Context, reqs []Request, n *Notify) error {
	// The caller waits right away: a transport may run small requests on
	// this goroutine instead of waking one of its own.
	return e.transfer(ctx, reqs, n, transport.SubmitOptions{Sync: true})
}

func (e *Engine) transfer(ctx context.Context, reqs []Request, n *Notify, opts transport.SubmitOptions) error {
	id, err := e.AllocateBatch(len(reqs))
	if err != nil {
		return err
	}
	if err := e.submit(ctx, id, reqs, n, opts); err != nil {
		if ferr := e.FreeBatch(id); ferr != nil {
			e.log.Debug("free unsubmitted batch", zap.Error(ferr))
		}
		return err
	}
	st, err := e.Wait(ctx, id)
	if st == transport.Timeout {
		// ctx has ended, so the transports are stopping the tasks: wait
		// for that, so that no byte of them lands in local memory after
		// the failure is reported.
		if b, gerr := e.batches.Get(id); gerr == nil {
			sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
			werr := b.Wait(sctx)
			cancel()
			if werr != nil {
				e.log.Error("tasks of a timed-out transfer did not stop; its memory may still be written",
					zap.Int64("in_flight", b.Group().Pending()))
			}
		}
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

// TransferTo runs reqs (whose Segment fields are ignored) against the
// segment called target and waits: the synchronous Python calls. The handle
// is cached by name. If the transfer fails because the peer restarted, the
// peer is re-resolved and the transfer retried once, within the same ctx:
// after a peer has finished restarting under the same name, no call fails.
// A restart shows as a failed connection (transport.ErrPeer: refused,
// reset, a queue pair or channel gone bad: the peer died or moved), as
// connections closed or a handle dropped by another call's recovery, or as
// a rejected range (transport.ErrRejected) together with a descriptor of
// another incarnation. A call that ran out of time is not retried.
func (e *Engine) TransferTo(ctx context.Context, target string, reqs []Request, n *Notify) error {
	return e.transferTo(ctx, target, reqs, n, transport.SubmitOptions{Sync: true})
}

func (e *Engine) transferTo(ctx context.Context, target string, reqs []Request, n *Notify, opts transport.SubmitOptions) error {
	h, err := e.OpenSegment(ctx, target)
	if err != nil {
		return err
	}
	err = e.transfer(ctx, withSegment(reqs, h), n, opts)
	if err == nil || ctx.Err() != nil || e.closed.Load() {
		return err
	}
	old, _ := e.segs.Get(h)
	h2, why := e.reresolve(ctx, h, old, target, err)
	if h2 == 0 {
		return err
	}
	s, gerr := e.segs.Get(h2)
	e.metrics.Retry(why.reason)
	e.log.Info("retrying a transfer after the peer's connections failed",
		zap.String("segment", target), zap.String("why", why.text),
		zap.Bool("restarted", gerr == nil && old != nil && !segment.SameIncarnation(old, s)),
		zap.NamedError("cause", err))
	if rerr := e.transfer(ctx, withSegment(reqs, h2), n, opts); rerr != nil {
		if errors.Is(rerr, transport.ErrPeer) {
			// Still unreachable: cache nothing of it, so that the first
			// call once it is back (an async one too) resolves it afresh.
			_ = e.CloseSegment(h2)
		}
		return fmt.Errorf("after re-resolving the peer: %w", rerr)
	}
	return nil
}

func withSegment(reqs []Request, h SegmentHandle) []Request {
	out := make([]Request, len(reqs))
	for i, r := range reqs {
		r.Segment = h
		out[i] = r
	}
	return out
}

// reap frees a batch in the background once its tasks have stopped. The
// transport finishes every task within its I/O deadlines, or at Close.
func (e *Engine) reap(id BatchID) {
	b, err := e.batches.Get(id)
	if err != nil {
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		// The transports fail every task when they close, so this returns.
		_ = b.Wait(context.Background())
		if err := e.FreeBatch(id); err != nil {
			e.log.Debug("reap batch", zap.Error(err))
		}
	}()
}
