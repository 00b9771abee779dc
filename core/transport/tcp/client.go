package tcp

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"

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
	// conns counts the connections open to the peer (see PeerConns).
	conns atomic.Int64
	// info is what Submit worked out of the last descriptor it saw.
	info atomic.Pointer[descInfo]

	// Sync lanes (see inline): no goroutine, used by one caller at a time.
	smu      sync.Mutex
	syncIdle []*syncLane // guarded by smu: pooled, not in use
	syncN    int         // guarded by smu: sync lanes created, at most Lanes
	syncDone bool        // guarded by smu: the peer was closed
}

func newPeer(t *Transport, k peerKey, addr string) *peer {
	p := &peer{t: t, key: k, addr: addr}
	p.ctx, p.cancel = context.WithCancelCause(t.ctx)
	p.lanes = make([]*lane, t.cfg.Lanes)
	for i := range p.lanes {
		p.lanes[i] = &lane{p: p, wake: make(chan struct{}, 1)}
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

func (p *peer) healthy() {
	if p.unhealthy.Load() {
		p.unhealthy.Store(false)
	}
}

// failed marks the peer unhealthy after a connection-level failure, before
// the failure is reported: a waiter that sees a task fail also sees the
// peer unhealthy.
func (p *peer) failed(err error) {
	p.unhealthy.Store(true)
	p.t.hot.Warn("tcp: connection to peer failed", zap.String("peer", p.key.name),
		zap.String("addr", p.addr), zap.Error(err))
}

// dial connects to the peer, bounded by DialTimeout, ctx and the peer's
// life.
func (p *peer) dial(ctx context.Context) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, p.t.cfg.DialTimeout)
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel)
	defer stop()
	return p.t.dialer.DialContext(dctx, "tcp", p.addr)
}

// classify tells a connection-level failure of w from a closed peer, an
// ended ctx or a refusal by the peer, and gives the cause to report.
func (p *peer) classify(w *wreq, err error) (conn bool, cause error) {
	switch {
	case p.ctx.Err() != nil:
		return false, cancelCause(p)
	case w.ctx.Err() != nil:
		return false, w.ctx.Err()
	case isRefusal(err):
		return false, err
	}
	return true, err
}

// enqueue hands w to the least loaded lane (in bytes queued or in flight),
// starting that lane's goroutine on first use. Idle peers thus keep reusing
// their first connection, and concurrent work spreads over up to Lanes.
func (p *peer) enqueue(w wreq) {
	l := p.lanes[0]
	best := l.load.Load()
	for _, c := range p.lanes[1:] {
		if v := c.load.Load(); v < best {
			l, best = c, v
		}
	}
	l.enqueue(w)
}

// lane is one persistent, pipelined connection to a peer and the goroutine
// that writes its queue; a reader goroutine per connection takes the
// replies (see conn).
type lane struct {
	p    *peer
	wake chan struct{} // one token: the queue may be non-empty
	load atomic.Int64  // bytes queued or in flight

	mu      sync.Mutex
	queue   []wreq                     // guarded by mu: queue[head:] waits, oldest first
	head    int                        // guarded by mu
	running bool                       // guarded by mu: the goroutine was started
	closed  bool                       // guarded by mu: nothing may be queued any more
	watches map[<-chan struct{}]*watch // guarded by mu: contexts of the queued and in-flight requests
	cn      *conn                      // guarded by mu; written by the lane goroutine only

	// Owned by the lane goroutine.
	cur     wreq  // the request being served, taken off the queue
	lastErr error // the failure teardown reported, for the rest of the queue
}

// watch interrupts the lane's connection when a context that some of the
// lane's requests belong to ends: those requests then fail at once,
// whether queued, being written or waiting for their reply, and the lane's
// other requests go out again on a fresh connection. Queued ones are
// failed by the watch itself: the lane goroutine may be blocked writing
// another request to a peer that reads nothing (it stopped), and a caller
// whose deadline passed must not wait for that write. Requests of one
// Submit share one watch.
type watch struct {
	n    int
	stop func() bool
}

// enqueue queues w and wakes the lane goroutine, starting it when needed.
func (l *lane) enqueue(w wreq) {
	l.load.Add(int64(w.n))
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.load.Add(-int64(w.n))
		w.fail(l.p, false, cancelCause(l.p))
		return
	}
	l.queue = append(l.queue, w)
	l.watchLocked(w.ctx)
	start := !l.running
	if start {
		l.running = true
		l.p.t.wg.Add(1)
	}
	l.mu.Unlock()
	if start {
		go l.run()
	}
	l.sweepEnded(&w)
	l.signal()
}

// sweepEnded sweeps w's ctx if it has ended already: its watch fires once,
// and may have fired before w was queued (while another request of the
// same Submit was in flight, or before teardown put w back).
func (l *lane) sweepEnded(w *wreq) {
	if err := w.ctx.Err(); err != nil {
		l.sweep(w.ctx.Done(), err)
	}
}

func (l *lane) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// requeue puts back requests that may run again (they still count as the
// lane's: load and watches stay).
func (l *lane) requeue(ws []wreq) {
	if len(ws) == 0 {
		return
	}
	l.mu.Lock()
	l.queue = append(l.queue, ws...)
	l.mu.Unlock()
	for i := range ws {
		l.sweepEnded(&ws[i])
	}
	l.signal()
}

func (l *lane) watchLocked(ctx context.Context) {
	done := ctx.Done()
	if done == nil {
		return
	}
	if w := l.watches[done]; w != nil {
		w.n++
		return
	}
	if l.watches == nil {
		l.watches = map[<-chan struct{}]*watch{}
	}
	l.watches[done] = &watch{n: 1, stop: context.AfterFunc(ctx, func() {
		l.sweep(done, ctx.Err())
		l.interrupt(ctx.Err())
	})}
}

// sweep fails the queued requests whose ctx's Done channel is done.
func (l *lane) sweep(done <-chan struct{}, why error) {
	l.mu.Lock()
	var gone []wreq
	keep := l.queue[:0] // in place: it never passes what was read
	for _, w := range l.queue[l.head:] {
		if w.ctx.Done() == done {
			gone = append(gone, w)
		} else {
			keep = append(keep, w)
		}
	}
	clear(l.queue[len(keep):])
	l.queue, l.head = keep, 0
	l.mu.Unlock()
	for i := range gone {
		l.report(&gone[i], false, why)
	}
}

// pop takes the oldest queued request into l.cur; false when none waits.
// The lane takes one at a time so that sweep reaches all the others.
func (l *lane) pop() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.head == len(l.queue) {
		l.queue, l.head = l.queue[:0], 0
		return false
	}
	l.cur = l.queue[l.head]
	l.queue[l.head] = wreq{}
	l.head++
	if l.head >= compactAfter && 2*l.head >= len(l.queue) {
		// A lane that never empties its queue would otherwise keep
		// every request it ever queued in the array's prefix.
		n := copy(l.queue, l.queue[l.head:])
		clear(l.queue[n:])
		l.queue, l.head = l.queue[:n], 0
	}
	return true
}

// compactAfter is how many taken requests the queue's prefix may hold
// before pop moves the waiting ones to the front.
const compactAfter = 64

// takeQueueLocked empties the queue and returns what waited in it.
func (l *lane) takeQueueLocked() []wreq {
	q := l.queue[l.head:]
	l.queue, l.head = nil, 0
	return q
}

// release accounts for a request of the lane that was reported.
func (l *lane) release(w *wreq) {
	l.load.Add(-int64(w.n))
	done := w.ctx.Done()
	if done == nil {
		return
	}
	l.mu.Lock()
	if wt := l.watches[done]; wt != nil {
		if wt.n--; wt.n == 0 {
			wt.stop()
			delete(l.watches, done)
		}
	}
	l.mu.Unlock()
}

// interrupt cuts the lane's connection short (see watch); the lane
// goroutine then sorts out its requests.
func (l *lane) interrupt(why error) {
	l.mu.Lock()
	cn := l.cn
	l.mu.Unlock()
	if cn != nil {
		cn.interrupt(why)
	}
	l.signal()
}

// report reports w's failure with cause and releases it.
func (l *lane) report(w *wreq, conn bool, cause error) {
	w.fail(l.p, conn, cause)
	l.release(w)
}

// run is the lane goroutine: it writes queued requests, pipelined, until
// the peer is closed or the lane has neither work nor a connection.
func (l *lane) run() {
	defer l.p.t.wg.Done()
	stop := context.AfterFunc(l.p.ctx, func() { l.interrupt(cancelCause(l.p)) })
	defer stop()
	for l.await() {
		for l.pop() {
			ok := l.serve(&l.cur)
			l.cur = wreq{}
			if !ok {
				// The connection failed: what waits on this lane would
				// meet the same fate.
				l.failRest()
				break
			}
		}
	}
}

// await waits until work may be queued (true) or the goroutine must end
// (false): the peer was closed, or the lane has no work and no connection
// to keep, so that a peer nobody uses any more (it died, or restarted under
// a new name) holds neither a goroutine nor a descriptor; the next enqueue
// starts the goroutine again. A connection that dies while idle (its reader
// saw the peer close it) is dropped at once.
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
		l.mu.Lock()
		cn := l.cn
		if cn == nil {
			if l.head < len(l.queue) {
				l.mu.Unlock()
				return true
			}
			l.running = false
			l.mu.Unlock()
			return false
		}
		l.mu.Unlock()
		select {
		case <-l.p.ctx.Done():
			l.shutdown()
			return false
		case <-l.wake:
			return true
		case <-cn.dead:
			l.teardown(cn)
		}
	}
}

// shutdown fails what is queued and drops the connection: the peer was
// closed.
func (l *lane) shutdown() {
	l.mu.Lock()
	l.closed = true
	q := l.takeQueueLocked()
	cn := l.cn
	l.mu.Unlock()
	if cn != nil {
		cn.interrupt(cancelCause(l.p))
		cn.fail(cancelCause(l.p))
		l.teardown(cn)
	}
	for i := range q {
		l.report(&q[i], false, cancelCause(l.p))
	}
}

// failRest fails the queued requests with the connection failure that
// teardown reported.
func (l *lane) failRest() {
	l.mu.Lock()
	q := l.takeQueueLocked()
	l.mu.Unlock()
	for i := range q {
		w := &q[i]
		conn, cause := l.p.classify(w, l.lastErr)
		l.report(w, conn, cause)
	}
}

// serve writes w on the lane's connection, dialing one when needed. It
// returns false when the connection failed and that failure was reported
// (the lane then fails what waits on it).
func (l *lane) serve(w *wreq) bool {
	if l.p.ctx.Err() != nil {
		l.report(w, false, cancelCause(l.p))
		return true
	}
	if err := w.ctx.Err(); err != nil {
		l.report(w, false, err)
		return true
	}
	if w.v1 {
		return l.serveV1(w)
	}
	for {
		l.mu.Lock()
		cn := l.cn
		l.mu.Unlock()
		if cn != nil && cn.isDead() {
			if !l.teardown(cn) {
				l.requeue([]wreq{*w}) // failRest reports it
				return false
			}
			cn = nil
		}
		if cn == nil {
			var failed bool
			if cn, failed = l.dial(w); cn == nil {
				return !failed
			}
		}
		if !cn.push(w) {
			continue // died before w went out: w goes on a fresh one
		}
		if err := w.ctx.Err(); err != nil {
			// It ended after the check above, maybe while cn was being
			// dialed, before its watch could reach cn: cut cn short as
			// the watch would have (teardown reports w).
			cn.interrupt(err)
		}
		if err := cn.send(w); err != nil {
			cn.fail(err)
			return l.teardown(cn) // w is in flight: teardown reports or requeues it
		}
		return true
	}
}

// dial connects the lane for w and starts the connection's reader. On
// failure it reports w and returns nil, and whether the failure was the
// connection's (not w's ctx, not a closed peer).
func (l *lane) dial(w *wreq) (_ *conn, failed bool) {
	c, err := l.p.dial(w.ctx)
	if err != nil {
		conn, cause := l.p.classify(w, err)
		if conn {
			l.p.failed(err)
			l.lastErr = err
		}
		l.report(w, conn, cause)
		return nil, conn
	}
	cn := newConn(l.p, c, l)
	l.mu.Lock()
	l.cn = cn
	l.mu.Unlock()
	l.p.t.wg.Add(1)
	go func() {
		defer l.p.t.wg.Done()
		cn.readLoop()
	}()
	return cn, false
}

// teardown closes a connection that failed, once its reader has stopped
// (so nothing is written to local memory after this), and sorts out its
// requests in flight: those whose ctx ended, or whose peer was closed,
// fail with that; those that may run again (the connection was cut short
// for another request's sake, closed by the peer while idle, or closed
// after a refusal under them) are queued again, once; the rest fail with
// the connection's error, which marks the peer unhealthy. It returns false
// when it reported such a connection-level failure.
func (cn *conn) closeAfterReader() {
	// The reader stops on its own within rejectDrain of the failure (or at
	// once when interrupted), after taking the replies already on their
	// way: a REJECTED frame the peer sent before closing is one.
	<-cn.readerDone
	cn.close()
}

func (l *lane) teardown(cn *conn) bool {
	cn.closeAfterReader()
	l.mu.Lock()
	if l.cn == cn {
		l.cn = nil
	}
	l.mu.Unlock()
	var ws []wreq
	if cn.busy {
		ws = append(ws, cn.cur)
		cn.cur, cn.busy = wreq{}, false
	}
	for {
		select {
		case w := <-cn.inflight:
			ws = append(ws, w)
			continue
		default:
		}
		break
	}
	interrupted := cn.interrupted.Load() != nil
	cause := cn.err
	retry := interrupted || cn.rejectedClose.Load() || errorsIsIdle(cause)
	var again []wreq
	ok := true
	for i := range ws {
		w := &ws[i]
		switch {
		case l.p.ctx.Err() != nil:
			l.report(w, false, cancelCause(l.p))
		case w.ctx.Err() != nil:
			l.report(w, false, w.ctx.Err())
		case retry && (interrupted || !w.retried):
			w.retried = w.retried || !interrupted
			again = append(again, *w)
		default:
			conn, c := l.p.classify(w, cause)
			if conn && ok {
				l.p.failed(cause)
				l.lastErr = cause
				ok = false
			}
			l.report(w, conn, c)
		}
	}
	l.requeue(again)
	return ok
}

func errorsIsIdle(err error) bool { return errors.Is(err, errIdleClosed) }

// isRefusal reports failures that are the request's, not the connection's:
// the peer refused it, answered something v2 does not define, or a local
// GPU copy failed.
func isRefusal(err error) bool {
	return errors.Is(err, ErrRejected) || errors.Is(err, ErrLegacyPeer) || errors.Is(err, ErrUnknownStatus) ||
		errors.Is(err, ErrStaging)
}

// serveV1 runs a v1 request on a connection of its own: v1 servers take one
// request per connection, and v1 has no status frame to pipeline on.
func (l *lane) serveV1(w *wreq) bool {
	c, err := l.p.dial(w.ctx)
	if err == nil {
		cn := newConn(l.p, c, nil)
		ctx := w.ctx // w lives in the lane's batch, cleared once served
		stop := context.AfterFunc(ctx, func() { cn.interrupt(ctx.Err()) })
		_, err = cn.exchange(w)
		stop()
		cn.close()
		if err == nil || err == errReported {
			l.release(w)
			return true
		}
	}
	conn, cause := l.p.classify(w, err)
	if conn {
		l.p.failed(err)
		l.lastErr = err
	}
	l.report(w, conn, cause)
	return !conn
}
