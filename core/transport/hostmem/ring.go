package hostmem

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pymooncake/pymooncake/core/transport"
)

// The shared-memory ring, for peers that cross-memory attach cannot reach
// (another uid, Yama, a PID namespace that hides the peer, or
// PYMOONCAKE_SAME_HOST=shm). The initiator creates a sealed memfd, passes
// it at setup and maps it; both sides copy through it, so each byte is
// copied twice. The ring is cut into slots; each request carries the ranges
// of one slot and gets one reply. A write copies local memory into the slot
// before the request; a read copies the slot into local memory after the
// reply. The target validates each range exactly as the TCP server does
// (memory.Table.Pin), so unregister_memory waits for it.

// ringClient is the initiator's side of one peer's ring.
type ringClient struct {
	p         *peer
	fd        int    // the memfd, until handed over
	mem       []byte // the ring
	slotBytes uint64
	free      chan int // slots not in flight

	mu      sync.Mutex
	seq     uint64              // guarded by mu
	pending map[uint64]*ringMsg // guarded by mu: sent, not yet answered
	queue   []*ringJob          // guarded by mu
	failed  error               // guarded by mu: set by failAll; nothing is queued after it
	wake    chan struct{}
}

// ringJob is the tasks of one Submit.
type ringJob struct {
	ctx  context.Context
	segs []seg

	mu       sync.Mutex
	err      error      // guarded by mu: the ctx's, once it ended
	inflight []*ringMsg // guarded by mu
	sent     bool       // guarded by mu: the sender is done with the job
	stop     func() bool
}

// answered takes m off j's requests in flight; once the sender is done and
// none is left, the watch on j's ctx is released.
func (j *ringJob) answered(m *ringMsg) {
	j.mu.Lock()
	for i, x := range j.inflight {
		if x == m {
			j.inflight = append(j.inflight[:i], j.inflight[i+1:]...)
			break
		}
	}
	release := j.sent && len(j.inflight) == 0
	j.mu.Unlock()
	if release {
		j.stop()
	}
}

// ringMsg is one request in flight: one slot's ranges.
type ringMsg struct {
	seq     uint64
	slot    int
	job     *ringJob
	segs    []seg
	offs    []uint64 // each segment's offset in the ring
	sent    time.Time
	claimed atomic.Bool // by the reply, or by the job's cancellation
}

func newRingClient(p *peer, size uint64, slots int) (*ringClient, error) {
	fd, err := newMemfd("pymooncake-hostmem-ring", int(size))
	if err != nil {
		return nil, err
	}
	mem, err := mapShared(fd, int(size), true)
	if err != nil {
		closeFD(fd)
		return nil, err
	}
	r := &ringClient{p: p, fd: fd, mem: mem, slotBytes: size / uint64(slots), free: make(chan int, slots),
		pending: map[uint64]*ringMsg{}, wake: make(chan struct{}, 1)}
	for i := range slots {
		r.free <- i
	}
	return r, nil
}

func (r *ringClient) closeFD() {
	closeFD(r.fd)
	r.fd = -1
}

func (r *ringClient) unmap() {
	r.closeFD()
	_ = unmap(r.mem)
	r.mem = nil
}

// enqueue cuts tasks into segments no larger than a slot, starts them, and
// queues them for the sender.
func (r *ringClient) enqueue(ctx context.Context, tasks []*transport.Task) {
	j := &ringJob{ctx: ctx}
	for _, task := range tasks {
		task.Start(int((task.Length + r.slotBytes - 1) / r.slotBytes))
		for off := uint64(0); off < task.Length; off += r.slotBytes {
			j.segs = append(j.segs, seg{task: task, local: task.Local + uintptr(off), remote: task.Remote + off, n: min(r.slotBytes, task.Length-off)})
		}
	}
	r.mu.Lock()
	if err := r.failed; err != nil {
		r.mu.Unlock()
		for _, s := range j.segs {
			s.task.PartDone(0, r.p.segError(s, err))
		}
		return
	}
	r.queue = append(r.queue, j)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// send is the peer's sender goroutine: it fills slots and sends requests,
// job after job, until the peer closes.
func (r *ringClient) send() {
	p := r.p
	defer p.wg.Done()
	var out []byte
	var ents []reqEntry
	for {
		r.mu.Lock()
		var j *ringJob
		if len(r.queue) > 0 {
			j = r.queue[0]
			r.queue[0] = nil
			r.queue = r.queue[1:]
		}
		r.mu.Unlock()
		if j == nil {
			select {
			case <-r.wake:
				continue
			case <-p.done:
				return
			}
		}
		j.stop = context.AfterFunc(j.ctx, func() { r.cancel(j) })
		out, ents = r.sendJob(j, out, ents)
		j.mu.Lock()
		j.sent = true
		release := len(j.inflight) == 0
		j.mu.Unlock()
		if release {
			j.stop()
		}
	}
}

// sendJob sends the requests of one job; what it cannot send fails.
func (r *ringClient) sendJob(j *ringJob, out []byte, ents []reqEntry) ([]byte, []reqEntry) {
	p := r.p
	segs := j.segs
	fail := func(err error) {
		for _, s := range segs {
			s.task.PartDone(0, p.segError(s, err))
		}
	}
	for len(segs) > 0 {
		if err := r.stopped(j); err != nil {
			fail(err)
			return out, ents
		}
		var slot int
		select {
		case slot = <-r.free:
		case <-j.ctx.Done():
			fail(j.ctx.Err())
			return out, ents
		case <-p.done:
			fail(p.closeErr)
			return out, ents
		}
		base := uint64(slot) * r.slotBytes
		m := &ringMsg{slot: slot, job: j}
		ents = ents[:0]
		used := uint64(0)
		for len(segs) > 0 && len(ents) < maxReqEntries && used+segs[0].n <= r.slotBytes {
			s := segs[0]
			off := base + used
			if s.task.Opcode == transport.Write {
				copy(r.mem[off:off+s.n], bytesAt(s.local, s.n))
			}
			m.segs = append(m.segs, s)
			m.offs = append(m.offs, off)
			ents = append(ents, reqEntry{remote: s.remote, ringOff: off, length: uint32(s.n), op: uint8(s.task.Opcode)})
			used += (s.n + 63) &^ 63 // keep ranges cache-line aligned
			segs = segs[1:]
		}
		r.mu.Lock()
		r.seq++
		m.seq = r.seq
		m.sent = time.Now()
		r.pending[m.seq] = m
		r.mu.Unlock()
		j.mu.Lock()
		if j.err != nil {
			// Cancelled while we filled the slot: the request still goes
			// (the slot comes back with its reply), its tasks fail now.
			if m.claimed.CompareAndSwap(false, true) {
				r.failMsg(m, j.err)
			}
		} else {
			j.inflight = append(j.inflight, m)
		}
		j.mu.Unlock()
		out = appendRequest(out, m.seq, ents)
		err := p.conn.SetWriteDeadline(time.Now().Add(p.t.cfg.IOTimeout))
		if err == nil {
			_, err = p.conn.Write(out)
		}
		if err != nil {
			perr := fmt.Errorf("send ring request: %w: %w", ErrPeer, err)
			p.t.peerFailed(p, perr, false)
			r.failAll(perr)
			fail(perr)
			return out, ents
		}
	}
	return out, ents
}

// stopped is why no more requests of j may go, or nil.
func (r *ringClient) stopped(j *ringJob) error {
	select {
	case <-r.p.done:
		return r.p.closeErr
	default:
	}
	if err := r.p.failure(); err != nil {
		return err
	}
	return j.ctx.Err()
}

// cancel fails j's requests in flight with its ctx's error. Their slots
// come back with their replies (or when the connection fails).
func (r *ringClient) cancel(j *ringJob) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.err = j.ctx.Err()
	for _, m := range j.inflight {
		if m.claimed.CompareAndSwap(false, true) {
			r.failMsg(m, j.err)
		}
	}
	j.inflight = nil
}

// failMsg fails the tasks of a request that its caller claimed.
func (r *ringClient) failMsg(m *ringMsg, err error) {
	for _, s := range m.segs {
		s.task.PartDone(0, r.p.segError(s, err))
	}
}

// receive reads replies until the connection fails, finishing each
// request's tasks; it returns why it stopped, and whether the peer closed
// the connection. A peer that leaves requests unanswered for IOTimeout
// (stopped, wedged) fails them.
func (r *ringClient) receive() (error, bool) {
	p := r.p
	buf := make([]byte, replyHeadLen+maxReqEntries+1)
	for {
		if err := p.conn.SetReadDeadline(time.Now().Add(p.t.cfg.IOTimeout)); err != nil {
			return fmt.Errorf("ring: %w: %w", ErrPeer, err), false
		}
		n, _, flags, _, err := p.conn.ReadMsgUnix(buf, nil)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if oldest := r.oldest(); !oldest.IsZero() && time.Since(oldest) >= p.t.cfg.IOTimeout {
				return fmt.Errorf("ring: no reply for %v: %w", p.t.cfg.IOTimeout, ErrPeer), false
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("ring connection to %s: %w: %w", p.sock, ErrPeer, err), true
		}
		if flags&syscall.MSG_TRUNC != 0 {
			return fmt.Errorf("ring reply too long: %w: %w", ErrPeer, ErrMalformed), false
		}
		seq, status, err := parseReply(buf[:n])
		if err != nil {
			return fmt.Errorf("ring reply: %w: %w", ErrPeer, err), false
		}
		r.mu.Lock()
		m := r.pending[seq]
		delete(r.pending, seq)
		r.mu.Unlock()
		if m == nil || len(status) != len(m.segs) {
			return fmt.Errorf("ring reply %d of %d statuses matches no request: %w: %w", seq, len(status), ErrPeer, ErrMalformed), false
		}
		if m.claimed.CompareAndSwap(false, true) {
			r.finish(m, status)
		}
		m.job.answered(m)
		r.free <- m.slot
	}
}

// finish completes a request's tasks from the target's statuses, copying
// what reads brought into local memory.
func (r *ringClient) finish(m *ringMsg, status []uint8) {
	p := r.p
	for i, s := range m.segs {
		var err error
		switch status[i] {
		case statusOK:
			if s.task.Opcode == transport.Read {
				copy(bytesAt(s.local, s.n), r.mem[m.offs[i]:m.offs[i]+s.n])
			}
			s.task.PartDone(s.n, nil)
			continue
		case statusRejected:
			err = fmt.Errorf("range not inside one registered region of the peer: %w", ErrRejected)
		case statusNotHost:
			err = fmt.Errorf("range in GPU memory of the peer: %w", ErrRejected)
		default:
			err = fmt.Errorf("the peer refused the request (status %d): %w", status[i], ErrMalformed)
		}
		s.task.PartDone(0, p.segError(s, err))
	}
}

// oldest is when the oldest unanswered request went out (zero: none).
func (r *ringClient) oldest() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var t time.Time
	for _, m := range r.pending {
		if t.IsZero() || m.sent.Before(t) {
			t = m.sent
		}
	}
	return t
}

// failAll fails every request in flight and every queued job with err.
func (r *ringClient) failAll(err error) {
	r.mu.Lock()
	if r.failed == nil {
		r.failed = err
	}
	pending := r.pending
	r.pending = map[uint64]*ringMsg{}
	queue := r.queue
	r.queue = nil
	r.mu.Unlock()
	for _, m := range pending {
		if m.claimed.CompareAndSwap(false, true) {
			r.failMsg(m, err)
		}
	}
	for _, j := range queue {
		for _, s := range j.segs {
			s.task.PartDone(0, r.p.segError(s, err))
		}
	}
}
