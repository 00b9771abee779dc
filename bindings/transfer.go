package bindings

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core"
	"github.com/pymooncake/pymooncake/core/transport"
)

// TransferSync moves length bytes between local and remote in the segment
// target and waits (transfer_sync_read, transfer_sync_write, transfer_sync).
// opcode is 0 (read) or 1 (write). The call fails after MC_TRANSFER_TIMEOUT
// plus 1 ns per byte.
func (e *Engine) TransferSync(target string, opcode int, local, remote uintptr, length int64) (rc int, err error) {
	const op = "transfer_sync"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	req, err := oneRequest(op, opcode, local, remote, length)
	if err != nil {
		return 0, err
	}
	return e.runSync(op, target, []core.Request{req}, nil, req.Length)
}

// TransferSyncNotify is TransferSync that sends the notify (name, msg) to
// the target once the transfer has completed (transfer_sync with notify).
func (e *Engine) TransferSyncNotify(target string, opcode int, local, remote uintptr, length int64, name, msg string) (rc int, err error) {
	const op = "transfer_sync"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	req, err := oneRequest(op, opcode, local, remote, length)
	if err != nil {
		return 0, err
	}
	return e.runSync(op, target, []core.Request{req}, &core.Notify{Name: name, Msg: msg}, req.Length)
}

// BatchTransferSync moves n blocks as one batch and waits
// (batch_transfer_sync_read, batch_transfer_sync_write, batch_transfer_sync).
// locals, remotes and lengths each point at n uint64 values.
func (e *Engine) BatchTransferSync(target string, opcode int, locals, remotes, lengths uintptr, n int) (rc int, err error) {
	const op = "batch_transfer_sync"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	reqs, total, err := readRequests(op, opcode, locals, remotes, lengths, n)
	if err != nil {
		return 0, err
	}
	return e.runSync(op, target, reqs, nil, total)
}

// BatchTransferSyncNotify is BatchTransferSync plus a notify sent to the
// target after completion (batch_transfer_sync with notify).
func (e *Engine) BatchTransferSyncNotify(target string, opcode int, locals, remotes, lengths uintptr, n int, name, msg string) (rc int, err error) {
	const op = "batch_transfer_sync"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	reqs, total, err := readRequests(op, opcode, locals, remotes, lengths, n)
	if err != nil {
		return 0, err
	}
	return e.runSync(op, target, reqs, &core.Notify{Name: name, Msg: msg}, total)
}

// BatchTransferAsync starts n blocks as one batch and returns its id, a
// positive int64 (batch_transfer_async_read/_write, batch_transfer_async).
func (e *Engine) BatchTransferAsync(target string, opcode int, locals, remotes, lengths uintptr, n int) (id int64, err error) {
	const op = "batch_transfer_async"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	reqs, total, err := readRequests(op, opcode, locals, remotes, lengths, n)
	if err != nil {
		return 0, err
	}
	return e.startAsync(op, target, reqs, total)
}

// TransferAsync starts one transfer as a batch and returns its id
// (transfer_submit_write).
func (e *Engine) TransferAsync(target string, opcode int, local, remote uintptr, length int64) (id int64, err error) {
	const op = "transfer_submit"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	req, err := oneRequest(op, opcode, local, remote, length)
	if err != nil {
		return 0, err
	}
	return e.startAsync(op, target, []core.Request{req}, req.Length)
}

// CheckStatus polls a batch from TransferAsync or BatchTransferAsync
// (transfer_check_status): 1 completed, 0 in flight, -2 in flight past its
// deadline (MC_TRANSFER_TIMEOUT plus 1 ns per byte from its start). A
// completed batch is freed; a failed one is freed and returned as an error
// (Python's -1), as is an unknown id.
func (e *Engine) CheckStatus(id int64) (rc int, err error) {
	const op = "transfer_check_status"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	bid, err := batchID(op, uint64(id))
	if err != nil {
		return 0, err
	}
	st, err := e.eng.BatchStatus(bid)
	switch {
	case err != nil && errors.Is(err, core.ErrUnknownBatch):
		return 0, fail(op, err)
	case st == transport.Completed && err == nil:
		e.release(bid)
		return 1, nil
	case st == transport.Failed || err != nil:
		cause := err
		if cause == nil {
			_, cause = e.eng.Wait(e.ctx, bid) // finished: returns the first task error at once
		}
		e.recoverBatch(bid, cause)
		e.release(bid)
		return 0, fail(op, fmt.Errorf("batch %d failed: %w", id, orFailed(cause)))
	}
	if time.Now().After(e.deadline(bid)) {
		return -2, nil
	}
	return 0, nil
}

// WaitBatches waits for n batches whose ids are at ids
// (get_batch_transfer_status). It returns 0 when all completed, each freed
// as it completes. On the first failure or deadline (MC_TRANSFER_TIMEOUT
// plus 1 ns per byte from each batch's start) it frees every batch not yet
// freed and returns an error. An unknown id is an error found before
// anything is waited for or freed.
func (e *Engine) WaitBatches(ids uintptr, n int) (rc int, err error) {
	const op = "get_batch_transfer_status"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	raw, err := readList(op, "batch_ids", ids, n)
	if err != nil {
		return 0, err
	}
	list := make([]core.BatchID, len(raw))
	for i, v := range raw {
		if list[i], err = batchID(op, v); err != nil {
			return 0, err
		}
		if _, serr := e.eng.BatchStatus(list[i]); errors.Is(serr, core.ErrUnknownBatch) {
			return 0, fail(op, serr)
		}
	}
	for i, id := range list {
		if ferr := e.firstFailed(list[i:]); ferr != nil {
			e.abandon(list[i:])
			return 0, fail(op, ferr)
		}
		ctx, cancel := context.WithDeadline(e.ctx, e.deadline(id))
		st, werr := e.eng.Wait(ctx, id)
		cancel()
		if st == transport.Completed && werr == nil {
			e.release(id)
			continue
		}
		if st == transport.Failed {
			e.recoverBatch(id, werr)
		}
		e.abandon(list[i:])
		return 0, fail(op, fmt.Errorf("batch %d: %s: %w", uint64(id), st, orFailed(werr)))
	}
	return 0, nil
}

// firstFailed returns the failure of the first batch in ids that has
// already failed, polling without blocking, after recovering its segment.
func (e *Engine) firstFailed(ids []core.BatchID) error {
	for _, id := range ids {
		st, err := e.eng.BatchStatus(id)
		if st == transport.Failed || (err != nil && !errors.Is(err, core.ErrUnknownBatch)) {
			if err == nil {
				_, err = e.eng.Wait(e.ctx, id)
			}
			e.recoverBatch(id, err)
			return fmt.Errorf("batch %d failed: %w", uint64(id), orFailed(err))
		}
	}
	return nil
}

// recoverBatch runs core's recovery (Mooncake's CheckSegmentStatus, then
// closeSegment and forgetting the handle when it is bad) on the segment of
// a batch from startAsync that ended FAILED with cause, so that the next
// call re-resolves a peer that died or restarted.
func (e *Engine) recoverBatch(id core.BatchID, cause error) {
	v, ok := e.async.Load(id)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	e.eng.Recover(ctx, v.(asyncBatch).segment, cause)
}

// runSync runs reqs as one batch against target under the sync deadline.
// core caches the segment handle by name and, when the peer's connections
// broke (it died or restarted), re-resolves it and retries once.
func (e *Engine) runSync(op, target string, reqs []core.Request, n *core.Notify, total uint64) (int, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.syncTimeout(total))
	defer cancel()
	if err := e.eng.TransferTo(ctx, target, reqs, n); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// startAsync opens target, submits reqs as a new batch and records the
// batch's deadline and segment. A failed submit checks the segment and
// drops it when it is bad (Mooncake's CheckSegmentStatus), so the next call
// re-resolves the peer; so does a batch that ends FAILED (recoverBatch).
func (e *Engine) startAsync(op, target string, reqs []core.Request, total uint64) (int64, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	h, err := e.eng.OpenSegment(ctx, target)
	if err != nil {
		return 0, fail(op, err)
	}
	for i := range reqs {
		reqs[i].Segment = h
	}
	id, err := e.eng.AllocateBatch(len(reqs))
	if err != nil {
		return 0, fail(op, err)
	}
	if err := e.eng.Submit(id, reqs); err != nil {
		if ferr := e.eng.FreeBatch(id); ferr != nil {
			e.log.Debug("free unsubmitted batch", zap.Error(ferr))
		}
		rctx, rcancel := context.WithTimeout(e.ctx, e.env.HandshakeConnectTimeout+5*time.Second)
		e.eng.Recover(rctx, h, err)
		rcancel()
		return 0, fail(op, err)
	}
	if uint64(id) == 0 || uint64(id) > math.MaxInt64 {
		// core promises ids in [1, 2^63); Python's 0 means failure.
		return 0, fail(op, fmt.Errorf("%w: batch id %d out of range", errInternal, uint64(id)))
	}
	e.async.Store(id, asyncBatch{deadline: start.Add(e.syncTimeout(total)), segment: h})
	return int64(id), nil
}

// asyncBatch is what e.async records for a batch from startAsync.
type asyncBatch struct {
	// deadline is Mooncake's start_timestamp plus MC_TRANSFER_TIMEOUT plus
	// 1 ns per byte.
	deadline time.Time
	// segment is the batch's target, recovered if the batch fails.
	segment core.SegmentHandle
}

// release frees a finished batch and forgets its deadline.
func (e *Engine) release(id core.BatchID) {
	e.async.Delete(id)
	if err := e.eng.FreeBatch(id); err != nil {
		e.log.Debug("free batch", zap.Uint64("batch", uint64(id)), zap.Error(err))
	}
}

// abandon frees batches that Python will not poll again. Batches whose
// tasks are still in flight are freed by a goroutine once they finish;
// Close ends those goroutines.
func (e *Engine) abandon(ids []core.BatchID) {
	for _, id := range ids {
		e.async.Delete(id)
		err := e.eng.FreeBatch(id)
		if !errors.Is(err, core.ErrBatchBusy) {
			continue
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			// Tasks finish within the transport's I/O deadlines; Close
			// fails them and cancels e.ctx.
			if _, err := e.eng.Wait(e.ctx, id); err != nil && e.ctx.Err() != nil {
				return
			}
			if err := e.eng.FreeBatch(id); err != nil {
				e.log.Debug("free abandoned batch", zap.Uint64("batch", uint64(id)), zap.Error(err))
			}
		}()
	}
}

// deadline is the time after which a batch from startAsync counts as timed
// out. A batch this package did not start gets MC_TRANSFER_TIMEOUT from now.
func (e *Engine) deadline(id core.BatchID) time.Time {
	if v, ok := e.async.Load(id); ok {
		return v.(asyncBatch).deadline
	}
	return time.Now().Add(e.timeout)
}

// syncTimeout is MC_TRANSFER_TIMEOUT plus 1 ns per byte, as Mooncake's
// binding ("1 GiB per second"), saturating instead of overflowing.
func (e *Engine) syncTimeout(bytes uint64) time.Duration {
	const limit = time.Duration(math.MaxInt64)
	if bytes >= uint64(limit-e.timeout) {
		return limit
	}
	return e.timeout + time.Duration(bytes)
}

// oneRequest validates the scalars of a single transfer.
func oneRequest(op string, opcode int, local, remote uintptr, length int64) (core.Request, error) {
	o, err := parseOpcode(op, opcode)
	if err != nil {
		return core.Request{}, err
	}
	if length < 0 {
		return core.Request{}, invalid(op, "negative length %d", length)
	}
	return core.Request{Opcode: o, Local: local, Remote: uint64(remote), Length: uint64(length)}, nil
}

// readRequests reads n (local, remote, length) triples from three lists.
func readRequests(op string, opcode int, locals, remotes, lengths uintptr, n int) ([]core.Request, uint64, error) {
	o, err := parseOpcode(op, opcode)
	if err != nil {
		return nil, 0, err
	}
	l, err := readList(op, "buffers", locals, n)
	if err != nil {
		return nil, 0, err
	}
	r, err := readList(op, "peer_buffer_addresses", remotes, n)
	if err != nil {
		return nil, 0, err
	}
	s, err := readList(op, "lengths", lengths, n)
	if err != nil {
		return nil, 0, err
	}
	reqs := make([]core.Request, n)
	var total uint64
	for i := range reqs {
		if s[i] > math.MaxInt64 {
			return nil, 0, invalid(op, "lengths[%d] = %d is too large", i, s[i])
		}
		reqs[i] = core.Request{Opcode: o, Local: uintptr(l[i]), Remote: r[i], Length: s[i]}
		if total += s[i]; total < s[i] {
			total = math.MaxUint64
		}
	}
	return reqs, total, nil
}

func parseOpcode(op string, opcode int) (transport.Opcode, error) {
	if opcode != int(transport.Read) && opcode != int(transport.Write) {
		return 0, invalid(op, "opcode %d (want 0 for Read or 1 for Write)", opcode)
	}
	return transport.Opcode(opcode), nil
}

// batchID checks an id that Python passed back: ids are in [1, 2^63).
func batchID(op string, v uint64) (core.BatchID, error) {
	if v == 0 || v > math.MaxInt64 {
		return 0, fail(op, fmt.Errorf("batch %d: %w", v, core.ErrUnknownBatch))
	}
	return core.BatchID(v), nil
}

// orFailed substitutes a generic cause for a nil error.
func orFailed(err error) error {
	if err == nil {
		return errors.New("transfer failed")
	}
	return err
}
