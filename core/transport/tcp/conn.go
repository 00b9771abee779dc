package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// conn is one client connection to a peer's data port. A lane's conn is
// pipelined: the lane goroutine writes requests one after another, without
// waiting for their replies, and a reader goroutine reads the replies in
// the same order (a v2 server, Mooncake's as ours, serves a connection's
// requests in order). At most Window requests are in flight. A sync lane's
// conn has no reader: its caller writes one request and reads its reply.
type conn struct {
	c    net.Conn
	p    *peer
	lane *lane // nil for a connection without reader
	// ctx, on a connection without reader, is the ctx of the request it
	// runs: its end stops the I/O.
	ctx context.Context
	w   stream // the writer's: the lane goroutine or the sync caller
	r   stream // the reader's
	pl  *poller

	hdr  []byte   // the encoded header (and table) of the request being written
	bufs [][]byte // what is written after hdr, or read into
	st   [statusSize]byte
	bits []byte // a refusal bitmap

	// Pipelined connections only.
	inflight   chan wreq     // requests written or being written, oldest first
	dead       chan struct{} // closed once the connection failed
	readerDone chan struct{}
	failOnce   sync.Once
	err        error // why it failed, set before dead is closed
	// cur is the request the reader was serving when it stopped (busy
	// says so); the lane takes it back after readerDone.
	cur  wreq
	busy bool
	// replied is set once the peer answered any request on the connection:
	// then a failure is not a stale pooled connection.
	replied atomic.Bool
	// interrupted holds why pending I/O was cut short (a request was
	// cancelled, the peer closed): see interrupt.
	interrupted atomic.Pointer[error]
	// rejectedClose is set when the peer refused a range and closed the
	// connection, as a v2 server does: the requests written after that one
	// were never read and may run again.
	rejectedClose atomic.Bool

	dmu     sync.Mutex
	pending int // guarded by dmu: requests in flight

	closed atomic.Bool // the socket was closed (close)
}

// errIdleClosed is why a pooled connection the peer closed is dropped.
var errIdleClosed = errors.New("tcp: peer closed an idle connection")

// errUnsolicited is what a connection is dropped for when the peer sends
// bytes nobody asked for.
var errUnsolicited = errors.New("tcp: peer sent data nobody asked for")

// aLongTimeAgo is a deadline that makes pending I/O fail at once.
var aLongTimeAgo = time.Unix(1, 0)

// newConn wraps c; with a lane it is pipelined, and the lane starts its
// reader.
func newConn(p *peer, c net.Conn, l *lane) *conn {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	cn := &conn{c: c, p: p, lane: l}
	p.conns.Add(1)
	cn.w = newStream(c, cn.stopped)
	cn.r = newStream(c, cn.stopped)
	if l != nil {
		cn.inflight = make(chan wreq, p.t.cfg.Window)
		cn.dead = make(chan struct{})
		cn.readerDone = make(chan struct{})
	}
	return cn
}

// close closes the socket, once, and counts it out of the peer's
// connections.
func (cn *conn) close() {
	if cn.closed.CompareAndSwap(false, true) {
		cn.p.conns.Add(-1)
	}
	_ = cn.c.Close()
}

// stopped says why the connection's I/O must stop, if it must.
func (cn *conn) stopped() error {
	if e := cn.interrupted.Load(); e != nil {
		return *e
	}
	if cn.ctx != nil && cn.ctx.Err() != nil {
		return cn.ctx.Err()
	}
	if err := cn.p.ctx.Err(); err != nil {
		return cancelCause(cn.p)
	}
	return nil
}

// cancelCause is why the peer was closed.
func cancelCause(p *peer) error {
	if c := context.Cause(p.ctx); c != nil {
		return c
	}
	return ErrClosed
}

// interrupt makes the connection's pending and future I/O fail with why.
func (cn *conn) interrupt(why error) {
	cn.interrupted.CompareAndSwap(nil, &why)
	_ = cn.c.SetDeadline(aLongTimeAgo)
}

// fail marks a pipelined connection failed with err and wakes the writer.
// The socket stays open a moment for the reader to take the replies that
// already arrived (a v2 server sends REJECTED, then closes); the lane closes
// it when it tears the connection down.
func (cn *conn) fail(err error) {
	cn.failOnce.Do(func() {
		cn.dmu.Lock()
		defer cn.dmu.Unlock()
		cn.err = err
		close(cn.dead)
		if cn.interrupted.Load() == nil {
			_ = cn.c.SetReadDeadline(time.Now().Add(rejectDrain))
		}
	})
}

// rejectDrain bounds how long the reader of a failed connection goes on
// taking replies that are already on their way.
const rejectDrain = 100 * time.Millisecond

// isDead reports whether the pipelined connection failed.
func (cn *conn) isDead() bool {
	select {
	case <-cn.dead:
		return true
	default:
		return false
	}
}

// push records w as in flight, waiting while the window is full; false if
// the connection failed first. The reader's deadline covers it from now.
func (cn *conn) push(w *wreq) bool {
	select {
	case cn.inflight <- *w:
	case <-cn.dead:
		return false
	}
	cn.dmu.Lock()
	cn.pending++
	if cn.pending == 1 && cn.interrupted.Load() == nil && !cn.isDead() {
		// The reader may be parked in a read without a deadline (idle).
		_ = cn.c.SetReadDeadline(time.Now().Add(cn.p.t.cfg.StatusTimeout))
	}
	cn.dmu.Unlock()
	return true
}

// armIdle sets the reader's deadline for its next status frame:
// StatusTimeout while a request is in flight, none while idle (the server
// keeps an idle connection 10 minutes).
func (cn *conn) armIdle() (idle bool, err error) {
	cn.dmu.Lock()
	defer cn.dmu.Unlock()
	if err := cn.stopped(); err != nil {
		return false, err
	}
	switch {
	case cn.isDead() && cn.pending > 0:
		// Failed: take only the replies already on their way (fail set
		// the deadline; it is not extended).
		return false, nil
	case cn.isDead():
		return true, cn.err
	case cn.pending > 0:
		return false, cn.c.SetReadDeadline(time.Now().Add(cn.p.t.cfg.StatusTimeout))
	}
	return true, cn.c.SetReadDeadline(time.Time{})
}

func (cn *conn) finished() {
	cn.dmu.Lock()
	cn.pending--
	cn.dmu.Unlock()
}

// readLoop reads the replies of a pipelined connection, in order, until
// the connection fails; the lane then tears it down. While nothing is in
// flight it waits in a read with no deadline, so that it sees at once a
// peer that closes the connection (it died, restarted, or dropped the idle
// connection).
func (cn *conn) readLoop() {
	defer close(cn.readerDone)
	defer func() {
		if r := recover(); r != nil {
			cn.p.t.log.Error("tcp: panic reading replies, connection dropped", zap.String("peer", cn.p.key.name),
				zap.Any("panic", r), zap.StackSkip("stack", 1))
			cn.fail(fmt.Errorf("tcp: panic: %v", r))
		}
	}()
	for {
		idle, err := cn.armIdle()
		if err == nil {
			if err = cn.readStatus(idle); err == nil {
				if err = cn.reply(); err == nil {
					continue
				}
				idle = false
			}
		}
		if idle && cn.interrupted.Load() == nil && !cn.isDead() && !isTimeout(err) {
			cn.p.t.hot.Debug("tcp: idle connection to peer ended", zap.String("peer", cn.p.key.name),
				zap.String("addr", cn.p.addr), zap.Error(err))
			cn.p.closes.Add(1)
			err = fmt.Errorf("%w: %w", errIdleClosed, err)
		}
		cn.fail(err)
		return
	}
}

// readStatus reads the next status frame into cn.st. While idle it reads
// one byte first: bytes that arrive with nothing in flight are bytes
// nobody asked for, and the connection is dropped.
func (cn *conn) readStatus(idle bool) error {
	from := 0
	if idle {
		if _, err := io.ReadFull(cn.c, cn.st[:1]); err != nil {
			return err
		}
		cn.dmu.Lock()
		asked := cn.pending > 0
		cn.dmu.Unlock()
		if !asked {
			return errUnsolicited
		}
		if err := cn.armIdleBusy(); err != nil {
			return err
		}
		from = 1
	}
	_, err := io.ReadFull(cn.c, cn.st[from:])
	return err
}

// armIdleBusy arms the deadline of a status frame whose first byte came
// while the reader was idle.
func (cn *conn) armIdleBusy() error {
	cn.dmu.Lock()
	defer cn.dmu.Unlock()
	if !cn.isDead() {
		if err := cn.c.SetReadDeadline(time.Now().Add(cn.p.t.cfg.StatusTimeout)); err != nil {
			return err
		}
	}
	return cn.stopped()
}

// reply serves the reply whose status frame is in cn.st: it takes the
// oldest request in flight, reads the rest of the reply and reports the
// outcome.
func (cn *conn) reply() error {
	select {
	case cn.cur = <-cn.inflight:
	default:
		return errUnsolicited
	}
	cn.busy = true
	cn.replied.Store(true)
	err := cn.finishReply(&cn.cur, &cn.r)
	if err != nil && !cn.rejectedClose.Load() {
		return err // cur stays: the lane reports it
	}
	// Reported (a rejection reports the request, then fails the
	// connection).
	cn.lane.release(&cn.cur)
	cn.cur, cn.busy = wreq{}, false
	cn.finished()
	return err
}

// finishReply reads what follows the status frame in cn.st for w (a
// bitmap, data) through s and reports w's outcome. It returns an error
// only when the connection cannot go on; w is then unreported.
func (cn *conn) finishReply(w *wreq, s *stream) error {
	status, err := DecodeStatus(cn.st)
	if err != nil {
		return err
	}
	cfg := &cn.p.t.cfg
	switch status {
	case StatusOK:
	case StatusRejected:
		// The server refused the range and closes the connection: the
		// requests written after this one were never read.
		cn.rejectedClose.Store(true)
		w.fail(cn.p, false, ErrRejected)
		return fmt.Errorf("tcp: peer closed the connection after a rejection: %w", ErrRejected)
	case StatusPartial:
		if w.sg == nil {
			return fmt.Errorf("%v for a plain request: %w", status, ErrUnknownStatus)
		}
		nb := bitmapSize(len(w.sg))
		if cap(cn.bits) < nb {
			cn.bits = make([]byte, nb)
		}
		bits := cn.bits[:nb]
		if _, err := s.readFull(bits, cfg.StatusTimeout); err != nil {
			return err
		}
		if !w.write {
			cn.bufs = cn.bufs[:0]
			for i, t := range w.sg {
				if !bitSet(bits, i) {
					cn.bufs = append(cn.bufs, memory(t.Local, t.Length))
				}
			}
			_, err := s.readv(cn.bufs, cfg.IOTimeout)
			clear(cn.bufs)
			if err != nil {
				return err
			}
		}
		w.partial(cn.p, bits)
		cn.p.healthy()
		return nil
	default:
		return fmt.Errorf("%v: %w", status, ErrUnknownStatus)
	}
	if !w.write {
		if err := cn.readData(w, s); err != nil {
			return err
		}
	}
	w.done()
	cn.p.healthy()
	return nil
}

// readData reads a READ's data into its local memory.
func (cn *conn) readData(w *wreq, s *stream) error {
	cfg := &cn.p.t.cfg
	if w.sg != nil {
		cn.bufs = w.locals(cn.bufs[:0])
		_, err := s.readv(cn.bufs, cfg.IOTimeout)
		clear(cn.bufs)
		return err
	}
	st, err := cn.p.t.stage(uint64(w.local), w.n)
	if err != nil {
		return err
	}
	if st != nil {
		defer st.Release()
		_, err = s.recvStaged(st, w.local, w.n, cfg.IOTimeout)
		return err
	}
	_, err = s.readFull(memory(w.local, w.n), cfg.IOTimeout)
	return err
}

// send writes w (header, table, WRITE body) on the connection.
func (cn *conn) send(w *wreq) error {
	cfg := &cn.p.t.cfg
	cn.hdr = w.encode(cn.hdr)
	if !w.write {
		return cn.w.write(cn.hdr, nil, cfg.IOTimeout)
	}
	if w.sg != nil {
		cn.bufs = w.locals(append(cn.bufs[:0], cn.hdr))
		err := cn.w.writev(cn.bufs, cfg.IOTimeout)
		clear(cn.bufs)
		return err
	}
	// GPU memory goes through a stage's page-locked buffers.
	st, err := cn.p.t.stage(uint64(w.local), w.n)
	if err != nil {
		return err
	}
	if st != nil {
		defer st.Release()
		return cn.w.sendStaged(cn.hdr, st, w.local, w.n, cfg.IOTimeout)
	}
	return cn.w.write(cn.hdr, memory(w.local, w.n), cfg.IOTimeout)
}

// exchange runs one request synchronously on a connection without reader
// (a sync lane's, or a v1 one). replied says whether the peer answered
// anything (then a retry could not be transparent).
func (cn *conn) exchange(w *wreq) (replied bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			cn.p.t.log.Error("tcp: panic in request, connection dropped", zap.String("peer", cn.p.key.name),
				zap.Any("panic", r), zap.StackSkip("stack", 1))
			replied, err = true, fmt.Errorf("tcp: panic: %v", r)
		}
	}()
	if err := cn.send(w); err != nil {
		if w.write && !w.v1 && !errors.Is(err, ErrStaging) && cn.rejectedEarly(err) {
			w.fail(cn.p, false, ErrRejected)
			return true, errReported
		}
		return false, err
	}
	if w.v1 {
		if w.write {
			w.done() // v1 has no acknowledgement
			return false, nil
		}
		err := cn.readData(w, &cn.r)
		if err == nil {
			w.done()
		}
		return err != nil, err
	}
	// Sync lanes: the frame is usually microseconds away, unless a large
	// body is still being read by the server (then polling would only
	// count a miss and make the small calls after it park).
	got := 0
	if !w.write || w.n <= pollMax {
		var err error
		if got, err = cn.pl.waitInto(cn.st[:]); err != nil {
			return false, err
		}
	}
	if got < len(cn.st) {
		n, err := cn.r.readFull(cn.st[got:], cn.p.t.cfg.StatusTimeout)
		if err != nil {
			return got+n > 0, err
		}
	}
	if err := cn.finishReply(w, &cn.r); err != nil {
		if cn.rejectedClose.Load() {
			return true, errReported
		}
		return true, err
	}
	return true, nil
}

// errReported is returned by exchange when it reported the request's
// failure itself (a rejection) and the connection must be dropped.
var errReported = errors.New("tcp: request reported")

// rejectedEarly looks, after a failed body write, for the REJECTED frame
// that a v2 server sends before closing without draining the body.
func (cn *conn) rejectedEarly(err error) bool {
	if isTimeout(err) || cn.stopped() != nil {
		return false
	}
	wait := min(cn.p.t.cfg.StatusTimeout, rejectDrain)
	if cn.c.SetReadDeadline(time.Now().Add(wait)) != nil {
		return false
	}
	if _, err := io.ReadFull(cn.c, cn.st[:]); err != nil {
		return false
	}
	s, err := DecodeStatus(cn.st)
	return err == nil && s == StatusRejected
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// stale reports errors that a connection closed by the peer while idle
// produces on its next use.
func stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, errIdleClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
