package core

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// Ticket names a transfer ordered on a CUDA stream (TransferOnStream).
// Tickets count up from 1.
type Ticket uint64

// ticketsKept is how many stream transfers' outcomes are remembered.
const ticketsKept = 4096

// streamOp is the outcome of one stream-ordered transfer.
type streamOp struct {
	ticket Ticket
	err    error       // written once, before done
	done   atomic.Bool // the transfer finished (err says how)
}

// ticketTable remembers the last ticketsKept stream transfers. It also
// guards the start of their goroutines against Close.
type ticketTable struct {
	mu     sync.Mutex
	last   Ticket                 // guarded by mu
	ring   [ticketsKept]*streamOp // guarded by mu
	closed bool                   // guarded by mu
}

// start issues a ticket and runs fn on a goroutine counted by wg, unless
// the table is closed.
func (t *ticketTable) start(wg *sync.WaitGroup, fn func(op *streamOp)) (*streamOp, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	t.last++
	op := &streamOp{ticket: t.last}
	t.ring[t.last%ticketsKept] = op
	wg.Add(1)
	go func() {
		defer wg.Done()
		fn(op)
	}()
	return op, nil
}

func (t *ticketTable) get(k Ticket) *streamOp {
	t.mu.Lock()
	defer t.mu.Unlock()
	if op := t.ring[k%ticketsKept]; op != nil && op.ticket == k {
		return op
	}
	return nil
}

// close refuses new tickets; the engine then waits for the running ones.
func (t *ticketTable) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
}

// TransferOnStream runs reqs against the segment called target once the
// CUDA stream has run the work queued on it so far, and holds the work
// queued on the stream afterwards until the transfer has finished:
// Mooncake's *_on_cuda methods. It returns at once with a ticket for
// StreamTransferStatus. stream is a CUstream handle; 0 is the legacy
// default stream of device, where a negative device means the device of
// the first GPU buffer among the requests (else device 0).
//
// Problems found at once (no GPU driver: ErrNotSupported; an unknown
// segment; an unregistered range) are returned and nothing is queued. A
// failure of the transfer itself (its deadline is timeout from when the
// stream reaches it) is logged and kept in the ticket; the stream is let
// go in every case, never left blocked, and the process never exits.
func (e *Engine) TransferOnStream(target string, reqs []Request, stream uintptr, device int, timeout time.Duration) (Ticket, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	if e.cfg.GPU == nil {
		return 0, fmt.Errorf("transfer on a CUDA stream: no GPU driver (libcuda) in this process: %w", ErrNotSupported)
	}
	if len(reqs) == 0 {
		return 0, fmt.Errorf("transfer on a CUDA stream: no request: %w", ErrInvalidArgument)
	}
	if timeout <= 0 {
		return 0, fmt.Errorf("transfer on a CUDA stream: timeout %v: %w", timeout, ErrInvalidArgument)
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.cfg.Env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	h, err := e.OpenSegment(ctx, target)
	if err != nil {
		return 0, fmt.Errorf("transfer on a CUDA stream: %w", err)
	}
	for i, r := range withSegment(reqs, h) {
		if _, err := e.checkRequest(ctx, r); err != nil {
			return 0, fmt.Errorf("transfer on a CUDA stream: request %d: %w", i, err)
		}
	}
	if stream == 0 && device < 0 {
		device = 0
		for _, r := range reqs {
			if d := e.mem.device(uint64(r.Local), max(r.Length, 1)); d != gpu.Host {
				device = d
				break
			}
		}
	}
	g, err := e.cfg.GPU.Gate(stream, device)
	if err != nil {
		return 0, fmt.Errorf("transfer on CUDA stream %#x: %w", stream, err)
	}
	reqs = append([]Request(nil), reqs...) // the caller may reuse its slice
	op, err := e.tickets.start(&e.wg, func(op *streamOp) { e.runOnStream(op, g, target, reqs, timeout) })
	if err != nil {
		g.Open()
		return 0, err
	}
	return op.ticket, nil
}

// runOnStream waits for the stream to reach the gate, transfers, records
// the outcome and lets the stream go.
func (e *Engine) runOnStream(op *streamOp, g gpu.Gate, target string, reqs []Request, timeout time.Duration) {
	defer g.Open()
	err := g.Reached(e.ctx)
	if err != nil {
		err = fmt.Errorf("engine closed before the stream reached the transfer: %w", ErrClosed)
	} else {
		ctx, cancel := context.WithTimeout(e.ctx, timeout)
		err = e.TransferTo(ctx, target, reqs, nil)
		cancel()
	}
	if err != nil {
		e.log.Error("transfer ordered on a CUDA stream failed; the stream goes on",
			zap.Uint64("ticket", uint64(op.ticket)), zap.String("segment", target),
			zap.Int("requests", len(reqs)), zap.Error(err))
	}
	op.err = err
	op.done.Store(true)
}

// StreamTransferStatus reports a stream transfer: not done yet (false,
// nil), done (true, nil), or failed (true, its error). The outcomes of the
// last 4096 tickets are kept; an older or unknown ticket is
// ErrUnknownTicket.
func (e *Engine) StreamTransferStatus(t Ticket) (done bool, err error) {
	op := e.tickets.get(t)
	if op == nil {
		return false, fmt.Errorf("ticket %d: %w", uint64(t), ErrUnknownTicket)
	}
	if !op.done.Load() {
		return false, nil
	}
	return true, op.err
}
