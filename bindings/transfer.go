package bindings

import (
	"context"
	"fmt"
	"math"

	"github.com/pymooncake/pymooncake/core/engine"
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
	return e.runSync(op, target, []engine.Request{req}, nil, req.Length)
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
	return e.runSync(op, target, []engine.Request{req}, &engine.Notify{Name: name, Msg: msg}, req.Length)
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
	return e.runSync(op, target, reqs, &engine.Notify{Name: name, Msg: msg}, total)
}

// BatchTransferAsync starts n blocks as one batch and returns its id, a
// positive int64 (batch_transfer_async_read/_write, batch_transfer_async).
func (e *Engine) BatchTransferAsync(target string, opcode int, locals, remotes, lengths uintptr, n int) (id int64, err error) {
	const op = "batch_transfer_async"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	reqs, _, err := readRequests(op, opcode, locals, remotes, lengths, n)
	if err != nil {
		return 0, err
	}
	return e.startAsync(op, target, reqs)
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
	return e.startAsync(op, target, []engine.Request{req})
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
	st, err := e.eng.PollAsync(bid)
	switch {
	case err != nil:
		return 0, fail(op, err)
	case st == engine.AsyncCompleted:
		return 1, nil
	case st == engine.AsyncTimedOut:
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
	list := make([]engine.BatchID, len(raw))
	for i, v := range raw {
		if list[i], err = batchID(op, v); err != nil {
			return 0, err
		}
	}
	if err := e.eng.WaitAsync(list); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// runSync runs reqs as one batch against target under the sync deadline
// (MC_TRANSFER_TIMEOUT plus 1 ns per byte). The engine caches the segment
// handle by name and, when the peer's connections broke (it died or
// restarted), re-resolves it and retries once.
func (e *Engine) runSync(op, target string, reqs []engine.Request, n *engine.Notify, total uint64) (int, error) {
	ctx, cancel := context.WithTimeout(e.ctx, e.eng.TransferTimeout(total))
	defer cancel()
	if err := e.eng.TransferTo(ctx, target, reqs, n); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// startAsync submits reqs to target as a new batch and returns its id.
func (e *Engine) startAsync(op, target string, reqs []engine.Request) (int64, error) {
	id, err := e.eng.SubmitAsync(target, reqs)
	if err != nil {
		return 0, fail(op, err)
	}
	if uint64(id) == 0 || uint64(id) > math.MaxInt64 {
		// core promises ids in [1, 2^63); Python's 0 means failure.
		return 0, fail(op, fmt.Errorf("%w: batch id %d out of range", errInternal, uint64(id)))
	}
	return int64(id), nil
}

// oneRequest validates the scalars of a single transfer.
func oneRequest(op string, opcode int, local, remote uintptr, length int64) (engine.Request, error) {
	o, err := parseOpcode(op, opcode)
	if err != nil {
		return engine.Request{}, err
	}
	if length < 0 {
		return engine.Request{}, invalid(op, "negative length %d", length)
	}
	return engine.Request{Opcode: o, Local: local, Remote: uint64(remote), Length: uint64(length)}, nil
}

// readRequests reads n (local, remote, length) triples from three lists.
func readRequests(op string, opcode int, locals, remotes, lengths uintptr, n int) ([]engine.Request, uint64, error) {
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
	reqs := make([]engine.Request, n)
	var total uint64
	for i := range reqs {
		if s[i] > math.MaxInt64 {
			return nil, 0, invalid(op, "lengths[%d] = %d is too large", i, s[i])
		}
		reqs[i] = engine.Request{Opcode: o, Local: uintptr(l[i]), Remote: r[i], Length: s[i]}
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
func batchID(op string, v uint64) (engine.BatchID, error) {
	if v == 0 || v > math.MaxInt64 {
		return 0, fail(op, fmt.Errorf("batch %d: %w", v, engine.ErrUnknownBatch))
	}
	return engine.BatchID(v), nil
}
