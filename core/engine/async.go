package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/batch"
	"github.com/pymooncake/pymooncake/core/transport"
)

// The asynchronous policy: Mooncake's batch_transfer_async_* and
// transfer_submit_write start a batch and return its id; the application
// polls it (transfer_check_status) or waits for several
// (get_batch_transfer_status). Each batch has a deadline, Mooncake's
// start_timestamp plus MC_TRANSFER_TIMEOUT plus 1 ns per byte; a batch that
// fails gets its segment recovered, so the next call re-resolves a peer
// that died or restarted.

// TransferTimeout is the deadline of a transfer of n bytes:
// MC_TRANSFER_TIMEOUT plus 1 ns per byte, as Mooncake's binding computes it
// ("1 GiB per second"), saturating instead of overflowing.
func (e *Engine) TransferTimeout(n uint64) time.Duration {
	const limit = time.Duration(math.MaxInt64)
	base := e.cfg.Env.TransferTimeout
	if n >= uint64(limit-base) {
		return limit
	}
	return base + time.Duration(n)
}

// AsyncState is what polling an asynchronous batch found.
type AsyncState int

const (
	// AsyncInFlight: some task is still running, within the deadline.
	AsyncInFlight AsyncState = iota
	// AsyncTimedOut: some task is still running past the deadline.
	AsyncTimedOut
	// AsyncCompleted: every task completed; the batch has been freed.
	AsyncCompleted
)

// SubmitAsync opens target, submits reqs as a new batch and returns its id.
// The batch's deadline is TransferTimeout of its bytes from now. A failed
// submit checks the segment and drops it when it is bad, so the next call
// re-resolves the peer.
func (e *Engine) SubmitAsync(target string, reqs []Request) (BatchID, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	start := time.Now()
	var total uint64
	for _, r := range reqs {
		if total += r.Length; total < r.Length {
			total = math.MaxUint64
		}
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Env.TransferTimeout)
	defer cancel()
	h, err := e.OpenSegment(ctx, target)
	if err != nil {
		return 0, err
	}
	for i := range reqs {
		reqs[i].Segment = h
	}
	b, err := e.batches.Alloc(len(reqs))
	if err != nil {
		return 0, err
	}
	// The batch's own ctx: giving up on it (WaitAsync) stops its tasks.
	bctx, bcancel := context.WithCancel(e.ctx)
	b.Deadline, b.Segment, b.Cancel = start.Add(e.TransferTimeout(total)), h, bcancel
	if err := e.submit(bctx, b.ID(), reqs, nil, transport.SubmitOptions{}); err != nil {
		bcancel()
		if ferr := e.FreeBatch(b.ID()); ferr != nil {
			e.log.Debug("free unsubmitted batch", zap.Error(ferr))
		}
		rctx, rcancel := context.WithTimeout(e.ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
		e.Recover(rctx, h, err)
		rcancel()
		return 0, err
	}
	return b.ID(), nil
}

// PollAsync polls a batch from SubmitAsync without blocking
// (transfer_check_status). A completed batch is freed (AsyncCompleted); a
// failed one is recovered, freed and returned as its first error; an
// unknown id is ErrUnknownBatch.
func (e *Engine) PollAsync(id BatchID) (AsyncState, error) {
	b, err := e.batches.Get(id)
	if err != nil {
		return AsyncInFlight, err
	}
	switch st, err := e.BatchStatus(id); {
	case st == transport.Completed && err == nil:
		e.release(id)
		return AsyncCompleted, nil
	case st == transport.Failed || err != nil:
		if err == nil {
			err = b.FirstError() // finished: every task has its outcome
		}
		e.recoverBatch(b, err)
		e.release(id)
		return AsyncInFlight, fmt.Errorf("batch %d failed: %w", uint64(id), err)
	}
	if e.pastDeadline(b) {
		return AsyncTimedOut, nil
	}
	return AsyncInFlight, nil
}

// WaitAsync waits for batches from SubmitAsync (get_batch_transfer_status).
// It returns nil when all completed, each freed as it completes. On the
// first failure or deadline it frees every batch not yet freed and returns
// an error. An unknown id is an error found before anything is waited for
// or freed.
func (e *Engine) WaitAsync(ids []BatchID) error {
	list := make([]*batch.Batch, len(ids))
	for i, id := range ids {
		b, err := e.batches.Get(id)
		if err != nil {
			return err
		}
		list[i] = b
	}
	for i, b := range list {
		if err := e.firstFailed(list[i:]); err != nil {
			e.abandon(list[i:])
			return err
		}
		ctx, cancel := context.WithDeadline(e.ctx, e.deadline(b))
		st, err := e.Wait(ctx, b.ID())
		cancel()
		if st == transport.Completed && err == nil {
			e.release(b.ID())
			continue
		}
		if st == transport.Failed {
			e.recoverBatch(b, err)
		}
		e.abandon(list[i:])
		if err == nil {
			err = errors.New("transfer failed")
		}
		return fmt.Errorf("batch %d: %s: %w", uint64(b.ID()), st, err)
	}
	return nil
}

// firstFailed returns the failure of the first batch in bs that has
// already failed, polling without blocking, after recovering its segment.
func (e *Engine) firstFailed(bs []*batch.Batch) error {
	for _, b := range bs {
		st, err := e.BatchStatus(b.ID())
		if st == transport.Failed || (err != nil && !errors.Is(err, ErrUnknownBatch)) {
			if err == nil {
				err = b.FirstError()
			}
			e.recoverBatch(b, err)
			return fmt.Errorf("batch %d failed: %w", uint64(b.ID()), err)
		}
	}
	return nil
}

// recoverBatch runs recovery (Mooncake's CheckSegmentStatus, then
// closeSegment and forgetting the handle when it is bad) on the segment of
// a batch that ended FAILED with cause.
func (e *Engine) recoverBatch(b *batch.Batch, cause error) {
	if b.Segment == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	e.Recover(ctx, b.Segment, cause)
}

// release frees a finished batch.
func (e *Engine) release(id BatchID) {
	if b, err := e.batches.Get(id); err == nil && b.Cancel != nil {
		b.Cancel()
	}
	if err := e.FreeBatch(id); err != nil {
		e.log.Debug("free batch", zap.Uint64("batch", uint64(id)), zap.Error(err))
	}
}

// stopGrace bounds how long giving up on a transfer waits for its tasks
// to stop once their ctx ended. TCP stops at once (it cuts the
// connections short and waits for their readers); RDMA and barex let
// posted work complete, which the NIC does within its retry timeouts.
const stopGrace = 10 * time.Second

// abandon gives up on batches that the application will not poll again:
// their ids are freed now (a later poll finds them unknown, not in
// flight), their tasks are stopped, and abandon returns once they have
// stopped, so that no byte of them is written into local memory after the
// failure is reported. A write that timed out may still land at the
// target: its bytes may be in the peer's socket buffers already.
func (e *Engine) abandon(bs []*batch.Batch) {
	for _, b := range bs {
		if b.Cancel != nil {
			b.Cancel()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	for _, b := range bs {
		if err := b.Wait(ctx); err != nil {
			e.log.Error("tasks of an abandoned batch did not stop; its memory may still be written",
				zap.Uint64("batch", uint64(b.ID())), zap.Int64("in_flight", b.Group().Pending()))
			e.reap(b.ID()) // freed once they stop, or at Close
			continue
		}
		if err := e.FreeBatch(b.ID()); err != nil && !errors.Is(err, ErrUnknownBatch) {
			e.log.Debug("free abandoned batch", zap.Uint64("batch", uint64(b.ID())), zap.Error(err))
		}
	}
}

// deadline is the time after which a batch counts as timed out. A batch
// without one (not from SubmitAsync) gets MC_TRANSFER_TIMEOUT from now.
func (e *Engine) deadline(b *batch.Batch) time.Time {
	if !b.Deadline.IsZero() {
		return b.Deadline
	}
	return time.Now().Add(e.cfg.Env.TransferTimeout)
}

func (e *Engine) pastDeadline(b *batch.Batch) bool {
	return !b.Deadline.IsZero() && time.Now().After(b.Deadline)
}
