package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/transport"
)

// peerKey identifies a peer's data endpoint: the same name may move to
// another address when the peer restarts.
type peerKey struct {
	name, host string
	port       int
}

func keyOf(pe transport.Peer) peerKey {
	return peerKey{name: pe.Name, host: pe.Host, port: pe.Desc.TCPDataPort}
}

// peer is the client side for one data endpoint: its lanes and its health.
type peer struct {
	t    *Transport
	key  peerKey
	addr string // host:port
	// ctx ends when the peer or the transport is closed; its cause is the
	// error that queued tasks fail with.
	ctx       context.Context
	cancel    context.CancelCauseFunc
	lanes     []*lane
	unhealthy atomic.Bool
	// closes counts idle connections the peer closed (see PeerCloses).
	closes atomic.Uint64
	// bufs indexes the buffers of the last descriptor seen (coalesce).
	bufs atomic.Pointer[bufferIndex]

	// Sync lanes (see Sync): no goroutine, used by one caller at a time.
	smu      sync.Mutex
	syncIdle []*lane // guarded by smu: pooled, not in use
	syncN    int     // guarded by smu: sync lanes created, at most Lanes
	syncDone bool    // guarded by smu: the peer was closed
}

func newPeer(t *Transport, k peerKey, addr string) *peer {
	p := &peer{t: t, key: k, addr: addr}
	p.ctx, p.cancel = context.WithCancelCause(t.ctx)
	p.lanes = make([]*lane, t.cfg.Lanes)
	for i := range p.lanes {
		l := &lane{p: p, wake: make(chan struct{}, 1)}
		l.s.owner = l
		p.lanes[i] = l
	}
	return p
}

// close stops the peer's lanes: their goroutines fail what is queued with
// cause, close their connections and exit (the transport's wg waits).
func (p *peer) close(cause error) {
	p.cancel(cause)
	for _, l := range p.lanes {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	}
	p.closeSync()
}

// enqueue hands w to the least loaded lane (in bytes queued or in flight),
// starting that lane's goroutine on first use. Idle peers thus keep reusing
// their first connection, and concurrent work spreads over up to Lanes.
func (p *peer) enqueue(w part) {
	l := p.lanes[0]
	best := l.load.Load()
	for _, c := range p.lanes[1:] {
		if v := c.load.Load(); v < best {
			l, best = c, v
		}
	}
	l.load.Add(int64(w.n))
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.load.Add(-int64(w.n))
		l.report(&w, false, context.Cause(p.ctx))
		return
	}
	l.queue = append(l.queue, w)
	start := !l.running
	if start {
		l.running = true
		p.t.wg.Add(1)
	}
	l.mu.Unlock()
	if start {
		go l.run()
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
	l.poke()
}

func (p *peer) healthy() {
	if p.unhealthy.Load() {
		p.unhealthy.Store(false)
	}
}

// part is one request on the wire: a whole task or a slice of a split one.
type part struct {
	ctx    context.Context
	task   *transport.Task
	local  uintptr
	remote uint64
	n      uint64
	write  bool
	v1     bool
}

// lane is one persistent connection to a peer and the goroutine that runs
// its queue, one request at a time; or, for a sync lane, a pooled
// connection that synchronous callers take turns to run requests on, with
// neither goroutine nor queue (see Sync).
type lane struct {
	p    *peer
	wake chan struct{} // one token: the queue may be non-empty
	load atomic.Int64  // bytes queued or in flight

	// Sync lanes only: sync is set, pl polls for status frames, unpeer
	// stops interrupting the connection when the peer is closed.
	sync   bool
	pl     *poller
	unpeer func() bool

	mu      sync.Mutex
	queue   []part // guarded by mu
	running bool   // guarded by mu: the goroutine was started
	closed  bool   // guarded by mu: nothing may be queued any more

	// Owned by the lane goroutine.
	idleBuf [1]byte
	batch   []part
	s       stream
	hdr     [HeaderSize]byte
	st      [statusSize]byte
	cur     context.Context // ctx of the part being served
	unwatch func() bool     // stops the AfterFunc watching watched

	// cmu guards conn and watched against the cancellation callbacks, which
	// interrupt the connection by setting a past deadline. The lane
	// goroutine is the only writer and reads them without the lock.
	cmu     sync.Mutex
	conn    net.Conn
	watched <-chan struct{}
	idle    bool // guarded by cmu: the goroutine is reading the idle conn
}

// errUnsolicited is what an idle connection is dropped for when the peer
// sends bytes nobody asked for.
var errUnsolicited = errors.New("tcp: peer sent data on an idle connection")

// aLongTimeAgo is a deadline that makes pending I/O fail at once.
var aLongTimeAgo = time.Unix(1, 0)

func (l *lane) run() {
	defer l.p.t.wg.Done()
	stop := context.AfterFunc(l.p.ctx, l.interrupt)
	defer stop()
	for l.await() {
		l.mu.Lock()
		l.batch, l.queue = l.queue, l.batch[:0]
		l.mu.Unlock()
		for i := range l.batch {
			cause, conn := l.serve(&l.batch[i])
			if cause == nil {
				continue
			}
			// The connection failed or the peer was closed: what waits on
			// this lane would meet the same fate, so fail it now.
			l.failAll(l.batch[i+1:], conn, cause)
			l.mu.Lock()
			q := l.queue
			l.queue = nil
			l.mu.Unlock()
			l.failAll(q, conn, cause)
			break
		}
		clear(l.batch)
		l.batch = l.batch[:0]
	}
}

// await waits until work may be queued (true) or the goroutine must end
// (false): the peer was closed, or the lane is idle and has no connection
// to keep, so that a peer nobody uses any more (it died, or restarted under
// a new name) holds neither a goroutine nor a descriptor; the next enqueue
// starts the goroutine again. An idle lane with a pooled connection watches
// it and drops it as soon as the peer closes it.
func (l *lane) await() bool {
	for {
		select {
		case <-l.p.ctx.Done():
			l.shutdown()
			return false
		case <-l.wake:
			return true
		default:
		}
		if l.conn == nil {
			return !l.retire()
		}
		l.watchIdle()
	}
}

// retire marks the goroutine stopped unless work is queued; it reports
// whether it did. Everything the goroutine owns is released first, since a
// new goroutine may start as soon as running is false.
func (l *lane) retire() bool {
	l.stopWatching()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) > 0 {
		return false
	}
	l.running = false
	return true
}

// stopWatching stops interrupting the connection for the ctx of the last
// part served.
func (l *lane) stopWatching() {
	if l.unwatch != nil {
		l.unwatch()
		l.unwatch = nil
	}
	l.cmu.Lock()
	l.watched = nil
	l.cmu.Unlock()
}

// watchIdle blocks in a read on the idle lane's connection until poke (new
// work) or interrupt (the peer is closing) cuts it short, or the connection
// ends: EOF, a reset, or bytes that a v2 server never sends unasked. A
// connection that ended is dropped.
func (l *lane) watchIdle() {
	l.stopWatching()
	l.cmu.Lock()
	l.idle = true
	err := l.conn.SetReadDeadline(time.Time{})
	l.cmu.Unlock()
	// poke and interrupt act under cmu once idle is set, so work or a close
	// that came before that is seen here, and one that comes after cuts
	// the read.
	if err == nil && len(l.wake) == 0 && l.p.ctx.Err() == nil {
		if _, err = l.conn.Read(l.idleBuf[:]); err == nil {
			err = errUnsolicited
		}
	}
	l.cmu.Lock()
	l.idle = false
	l.cmu.Unlock()
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return
	}
	l.p.t.hot.Debug("tcp: idle connection to peer ended", zap.String("peer", l.p.key.name),
		zap.String("addr", l.p.addr), zap.Error(err))
	l.p.closes.Add(1)
	l.drop()
}

// poke cuts short the read of an idle lane, after work was queued.
func (l *lane) poke() {
	l.cmu.Lock()
	if l.idle && l.conn != nil {
		_ = l.conn.SetReadDeadline(aLongTimeAgo)
	}
	l.cmu.Unlock()
}

// shutdown fails what is still queued and closes the connection.
func (l *lane) shutdown() {
	l.mu.Lock()
	l.closed = true
	q := l.queue
	l.queue = nil
	l.mu.Unlock()
	l.failAll(q, false, context.Cause(l.p.ctx))
	l.drop()
	if l.unwatch != nil {
		l.unwatch()
		l.unwatch = nil
	}
}

func (l *lane) failAll(ws []part, conn bool, cause error) {
	for i := range ws {
		l.load.Add(-int64(ws[i].n))
		l.report(&ws[i], conn, cause)
	}
}

// report fails w's task part with cause, naming the peer and the request.
func (l *lane) report(w *part, conn bool, cause error) {
	op := "read"
	if w.write {
		op = "write"
	}
	w.task.PartDone(0, &PeerError{
		Peer: l.p.key.name, Addr: l.p.addr, Op: op,
		Remote: w.remote, Size: w.n, Conn: conn, Err: cause,
	})
}

// interrupt makes the connection's pending I/O fail now; the lane goroutine
// then sees why through stopped.
func (l *lane) interrupt() {
	l.cmu.Lock()
	if l.conn != nil {
		_ = l.conn.SetDeadline(aLongTimeAgo)
	}
	l.cmu.Unlock()
}

// stopped returns why the current part must stop: the peer (or transport)
// was closed, or the part's ctx ended.
func (l *lane) stopped() error {
	if l.p.ctx.Err() != nil {
		return context.Cause(l.p.ctx)
	}
	if l.cur != nil {
		return l.cur.Err()
	}
	return nil
}

// watch arranges for ctx's end to interrupt the connection while a part of
// ctx is being served. Consecutive parts of one Submit share a ctx, so this
// registers once per batch, not per request.
func (l *lane) watch(ctx context.Context) {
	done := ctx.Done()
	if done == l.watched {
		return
	}
	if l.unwatch != nil {
		l.unwatch()
		l.unwatch = nil
	}
	l.cmu.Lock()
	l.watched = done
	l.cmu.Unlock()
	if done == nil {
		return
	}
	l.unwatch = context.AfterFunc(ctx, func() {
		l.cmu.Lock()
		if l.watched == done && l.conn != nil {
			_ = l.conn.SetDeadline(aLongTimeAgo)
		}
		l.cmu.Unlock()
	})
}

// serve runs one part and reports its outcome. It returns a cause when the
// rest of the lane's queue must fail too (conn: the connection failed).
func (l *lane) serve(w *part) (cause error, conn bool) {
	defer l.load.Add(-int64(w.n))
	if l.p.ctx.Err() != nil {
		cause := context.Cause(l.p.ctx)
		l.report(w, false, cause)
		return cause, false
	}
	if err := w.ctx.Err(); err != nil {
		l.report(w, false, err)
		return nil, false
	}
	l.watch(w.ctx)
	l.cur = w.ctx
	defer func() { l.cur = nil }()
	var err error
	for attempt := 0; ; attempt++ {
		if w.v1 {
			l.drop() // v1 servers take one request per connection
		}
		reused := l.conn != nil
		if !reused {
			if err = l.dial(w.ctx); err != nil {
				break
			}
		}
		var replied bool
		replied, err = l.exchange(w)
		if err == nil {
			if w.v1 {
				l.drop()
			}
			l.p.healthy()
			w.task.PartDone(w.n, nil)
			return nil, false
		}
		l.drop()
		// A pooled connection that the peer closed while idle fails before
		// any reply: try once more on a fresh one.
		if attempt > 0 || !reused || replied || !stale(err) || l.stopped() != nil {
			break
		}
	}
	conn, cause = l.classify(w, err)
	if conn {
		// Before reporting, so that a waiter that sees the task fail also
		// sees the peer unhealthy.
		l.p.unhealthy.Store(true)
		l.report(w, conn, cause)
		l.p.t.hot.Warn("tcp: connection to peer failed", zap.String("peer", l.p.key.name),
			zap.String("addr", l.p.addr), zap.Error(err))
		return cause, true
	}
	l.report(w, conn, cause)
	if l.p.ctx.Err() != nil {
		return cause, false
	}
	return nil, false
}

// classify tells a connection-level failure from a closed transport, an
// ended ctx or a refusal by the peer, and gives the cause to report.
func (l *lane) classify(w *part, err error) (conn bool, cause error) {
	switch {
	case l.p.ctx.Err() != nil:
		return false, context.Cause(l.p.ctx)
	case w.ctx.Err() != nil:
		return false, w.ctx.Err()
	case errors.Is(err, ErrRejected), errors.Is(err, ErrLegacyPeer), errors.Is(err, ErrUnknownStatus),
		errors.Is(err, ErrStaging):
		return false, err
	}
	return true, err
}

// stale reports errors that a connection closed by the peer while idle
// produces on its next use.
func stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// dial connects the lane, bounded by DialTimeout, ctx and the peer's life.
func (l *lane) dial(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, l.p.t.cfg.DialTimeout)
	defer cancel()
	stop := context.AfterFunc(l.p.ctx, cancel)
	defer stop()
	c, err := l.p.t.dialer.DialContext(dctx, "tcp", l.p.addr)
	if err != nil {
		return err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	l.cmu.Lock()
	l.conn = c
	l.cmu.Unlock()
	l.s.c = c
	if l.sync {
		l.pl = newPoller(c, l.p.t.cfg.PollBudget, l.halted)
	}
	return nil
}

// halted tells a sync lane's poller to give up: the request must stop.
func (l *lane) halted() bool { return l.stopped() != nil }

// drop closes the lane's connection, if any.
func (l *lane) drop() {
	if l.conn == nil {
		return
	}
	l.cmu.Lock()
	c := l.conn
	l.conn = nil
	l.cmu.Unlock()
	l.s.c = nil
	l.pl = nil
	_ = c.Close()
}

// exchange runs one request on the lane's connection. replied says whether
// the peer answered anything (then a retry could not be transparent).
func (l *lane) exchange(w *part) (replied bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			l.p.t.log.Error("tcp: panic in request, connection dropped", zap.String("peer", l.p.key.name),
				zap.Any("panic", r), zap.StackSkip("stack", 1))
			replied, err = true, fmt.Errorf("tcp: panic: %v", r)
		}
	}()
	cfg := &l.p.t.cfg
	op := uint8(transport.Read)
	if w.write {
		op = opWrite
	}
	if !w.v1 {
		op |= FlagV2
	}
	Header{Size: w.n, Addr: w.remote, Opcode: op}.Encode(&l.hdr)
	// GPU memory goes through a stage's page-locked buffers.
	st, err := l.p.t.stage(uint64(w.local), w.n)
	if err != nil {
		return false, err
	}
	if st != nil {
		defer st.Release()
	}
	if w.write {
		if st != nil {
			err = l.s.sendStaged(l.hdr[:], st, w.local, w.n, cfg.IOTimeout)
		} else {
			err = l.s.write(l.hdr[:], memory(w.local, w.n), cfg.IOTimeout)
		}
		if err != nil {
			if !w.v1 && !errors.Is(err, ErrStaging) && l.rejectedEarly(err) {
				return true, ErrRejected
			}
			return false, err
		}
		if w.v1 {
			return false, nil // v1 has no acknowledgement
		}
		return l.status()
	}
	if err := l.s.write(l.hdr[:], nil, cfg.IOTimeout); err != nil {
		return false, err
	}
	if !w.v1 {
		if replied, err := l.status(); err != nil {
			return replied, err
		}
	}
	var n int
	if st != nil {
		n, err = l.s.recvStaged(st, w.local, w.n, cfg.IOTimeout)
	} else {
		n, err = l.s.readFull(memory(w.local, w.n), cfg.IOTimeout)
	}
	return !w.v1 || n > 0, err
}

// status reads one status frame, bounded by StatusTimeout.
func (l *lane) status() (replied bool, err error) {
	l.pl.wait() // sync lanes: the frame is usually microseconds away
	n, err := l.s.readFull(l.st[:], l.p.t.cfg.StatusTimeout)
	if err != nil {
		return n > 0, err
	}
	s, err := DecodeStatus(l.st)
	if err != nil {
		return true, err
	}
	switch s {
	case StatusOK:
		return true, nil
	case StatusRejected:
		return true, ErrRejected
	}
	return true, fmt.Errorf("%v: %w", s, ErrUnknownStatus)
}

// rejectedEarly looks, after a failed body write, for the REJECTED frame
// that a v2 server sends before closing without draining the body.
func (l *lane) rejectedEarly(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || l.stopped() != nil {
		return false
	}
	wait := min(l.p.t.cfg.StatusTimeout, 100*time.Millisecond)
	if l.s.c.SetReadDeadline(time.Now().Add(wait)) != nil {
		return false
	}
	if _, err := io.ReadFull(l.s.c, l.st[:]); err != nil {
		return false
	}
	s, err := DecodeStatus(l.st)
	return err == nil && s == StatusRejected
}

// submitError is the error of a task refused before it reached a lane.
func submitError(pe transport.Peer, task *transport.Task, err error) error {
	port := 0
	if pe.Desc != nil {
		port = pe.Desc.TCPDataPort
	}
	return &PeerError{
		Peer: pe.Name, Addr: net.JoinHostPort(pe.Host, strconv.Itoa(port)),
		Op: task.Opcode.String(), Remote: task.Remote, Size: task.Length, Err: err,
	}
}
