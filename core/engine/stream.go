package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
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

// queued issues a ticket for a transfer that is already on its stream: it
// counts as done, the copies run when the stream reaches them.
func (t *ticketTable) queued() (Ticket, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, ErrClosed
	}
	t.last++
	op := &streamOp{ticket: t.last}
	op.done.Store(true)
	t.ring[t.last%ticketsKept] = op
	return op.ticket, nil
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
// While the stream is held the transfer makes no CUDA call: anything that
// synchronises the device meanwhile (a lazily loaded kernel, a
// cudaMalloc or cudaFree in another thread) waits for the held stream, so
// a transfer needing the driver then would wait for it in turn, until its
// deadline. GPU buffers therefore go through a page-locked bounce buffer,
// with the copies queued on the stream itself at this call: device to
// bounce before the hold (writes), bounce to device after it (reads).
//
// A peer whose memory this process addresses directly (its transport is a
// transport.StreamSubmitter: the engine's own segment, a CUDA IPC peer)
// gets its copies queued on the stream itself: no hold, no bounce buffer,
// no host round trip; the ticket is done once they are queued. When such a
// transport cannot map all of them (transport.ErrNotOnStream), the
// transfer holds the stream as for any other peer, and its transport is
// told so (transport.SubmitOptions.Held).
//
// Problems found at once (no GPU driver: ErrNotSupported; an unknown
// segment; an unregistered range; a copy the driver refuses) are returned.
// A failure of the transfer itself (its deadline is timeout from when the
// stream reaches it) is logged and kept in the ticket, and the stream is
// let go in every case, never left blocked; the process never exits. A
// failed read leaves its GPU destinations undefined.
func (e *Engine) TransferOnStream(target string, reqs []Request, stream uintptr, device int, timeout time.Duration) (Ticket, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	drv := e.cfg.GPU
	if drv == nil {
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
	var onGPU []int // requests whose local memory is GPU memory
	var gpuBytes uint64
	firstDev := gpu.Host
	var seg *segment.Segment
	for i, r := range withSegment(reqs, h) {
		s, err := e.checkRequest(ctx, r)
		if err != nil {
			return 0, fmt.Errorf("transfer on a CUDA stream: request %d: %w", i, err)
		}
		seg = s
		if r.Length == 0 {
			continue
		}
		if d := e.mem.Device(uint64(r.Local), r.Length); d != memory.Host {
			onGPU = append(onGPU, i)
			gpuBytes += r.Length
			if firstDev == gpu.Host {
				firstDev = d
			}
		}
	}
	if firstDev == gpu.Host {
		firstDev = 0
	}
	if stream == 0 && device < 0 {
		device = firstDev
	}
	// A peer whose memory this process addresses directly: the copies go
	// on the stream itself, with no hold and no bounce buffer.
	if ss, ok := seg.Transport.(transport.StreamSubmitter); ok {
		treqs := make([]transport.Request, len(reqs))
		for i, r := range reqs {
			treqs[i] = transport.Request{Opcode: r.Opcode, Local: r.Local, Remote: r.Remote, Length: r.Length}
		}
		err := ss.SubmitOnStream(seg.Peer, treqs, stream, device)
		if err == nil {
			e.recordQueued(seg, treqs)
			return e.tickets.queued()
		}
		if !errors.Is(err, transport.ErrNotOnStream) {
			return 0, fmt.Errorf("transfer on CUDA stream %#x over %s: %w", stream, seg.Transport.Name(), err)
		}
		// Some of the peer's memory is not mapped here: the transfer holds
		// the stream, below.
	}

	// The requests as transferred: GPU buffers replaced by slices of the
	// bounce buffer.
	xreqs := append([]Request(nil), reqs...)
	var b gpu.BounceBuf
	if gpuBytes > 0 {
		if gpuBytes > gpu.MaxBounce {
			return 0, fmt.Errorf("transfer on a CUDA stream: %d bytes of GPU buffers (at most %d): %w", gpuBytes, uint64(gpu.MaxBounce), ErrInvalidArgument)
		}
		if b, err = e.bounces.Get(drv, firstDev, int(gpuBytes)); err != nil {
			return 0, fmt.Errorf("transfer on a CUDA stream: %w", err)
		}
		off := uintptr(0)
		for _, i := range onGPU {
			xreqs[i].Local = b.Addr + off
			off += uintptr(reqs[i].Length)
		}
	}
	// queued: the stream may touch the bounce buffer, so it is not reused
	// unless we know the stream is done with it.
	queued := false
	abandon := func(err error) (Ticket, error) {
		if b.Size > 0 {
			if queued {
				e.bounces.Forget(b)
			} else {
				e.bounces.Put(b)
			}
		}
		return 0, fmt.Errorf("transfer on CUDA stream %#x: %w", stream, err)
	}
	copies := func(toDevice bool) error {
		for _, i := range onGPU {
			if (reqs[i].Opcode == transport.Read) != toDevice {
				continue
			}
			dst, src := xreqs[i].Local, reqs[i].Local
			if toDevice {
				dst, src = src, dst
			}
			if err := drv.CopyOnStream(stream, device, toDevice, dst, src, int(reqs[i].Length)); err != nil {
				return err
			}
			queued = true
		}
		return nil
	}
	if err := copies(false); err != nil {
		return abandon(err)
	}
	hold, err := drv.Gate(stream, device)
	if err != nil {
		return abandon(err)
	}
	// The transfer's goroutine starts now: what is queued after the hold
	// may block in the driver until the held stream goes on, which only
	// the goroutine can make happen. It gets the drained gate (reached
	// once the stream is done with the bounce buffer: after the copies out
	// of it for reads, after the hold for writes) through after.
	after := make(chan gpu.Gate, 1)
	op, err := e.tickets.start(&e.wg, func(op *streamOp) { e.runOnStream(op, hold, after, b, target, xreqs, timeout) })
	if err != nil {
		hold.Open()
		return abandon(err)
	}
	var drained gpu.Gate
	err = copies(true)
	if err == nil && queued {
		drained, err = drv.Gate(stream, device)
	}
	after <- drained
	if err != nil {
		// The goroutine lets the stream go and keeps the buffer from reuse.
		return 0, fmt.Errorf("transfer on CUDA stream %#x: %w", stream, err)
	}
	return op.ticket, nil
}

// bounceDrain bounds the wait, after a transfer, for the stream to be done
// with its bounce buffer (this also delays Close when the engine closes
// before a stream reached its transfer); a buffer the stream may still use
// is never reused nor freed, only forgotten.
const bounceDrain = 10 * time.Second

// runOnStream waits for the stream to reach the hold, transfers, records
// the outcome, lets the stream go, and takes back the bounce buffer once
// the stream is done with it.
func (e *Engine) runOnStream(op *streamOp, hold gpu.Gate, after <-chan gpu.Gate, b gpu.BounceBuf, target string, reqs []Request, timeout time.Duration) {
	err := hold.Reached(e.ctx)
	if err != nil {
		err = fmt.Errorf("engine closed before the stream reached the transfer: %w", ErrClosed)
	} else {
		ctx, cancel := context.WithTimeout(e.ctx, timeout)
		err = e.transferTo(ctx, target, reqs, nil, transport.SubmitOptions{Sync: true, Held: true})
		cancel()
	}
	finish := func(err error) {
		if err != nil {
			e.log.Error("transfer ordered on a CUDA stream failed; the stream goes on",
				zap.Uint64("ticket", uint64(op.ticket)), zap.String("segment", target),
				zap.Int("requests", len(reqs)), zap.Error(err))
		}
		op.err = err
		op.done.Store(true)
	}
	if b.Size == 0 {
		// Nothing is queued after the hold: the outcome is recorded before
		// the stream goes on, so a caller that synchronised the stream sees
		// it.
		finish(err)
		hold.Open()
		<-after
		return
	}
	// The submitter may be queueing the copies out of the buffer, blocked
	// until the stream goes on.
	hold.Open()
	drained := <-after
	if drained == nil {
		finish(errors.Join(err, errors.New("queueing the copies out of the bounce buffer failed")))
		e.bounces.Forget(b) // the stream may still use it
		return
	}
	// The stream waits at drained: the outcome is recorded before it goes
	// on.
	finish(err)
	ctx, cancel := context.WithTimeout(context.Background(), bounceDrain)
	derr := drained.Reached(ctx)
	cancel()
	drained.Open()
	if derr != nil {
		e.log.Warn("a stream did not finish with a bounce buffer; the buffer is not reused",
			zap.Uint64("ticket", uint64(op.ticket)), zap.Int("bytes", b.Size))
		e.bounces.Forget(b)
		return
	}
	e.bounces.Put(b)
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
