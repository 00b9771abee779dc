package tcp

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// syncSweep is how often pooled sync connections are checked for a close
// by their peer.
const syncSweep = 100 * time.Millisecond

// syncLane is a pooled connection that synchronous callers take turns to
// run one request at a time on: no goroutine, no queue, no reader.
type syncLane struct {
	p  *peer
	cn *conn // nil until dialed, and after a failure
	// busy is cn while a caller runs a request on it, for the callbacks
	// that interrupt it (the request's ctx ended, the peer was closed).
	busy atomic.Pointer[conn]
}

// inline runs w on the calling goroutine and reports whether it did: a
// Submit with SubmitOptions.Sync whose wire requests are one v2 request (a
// single task below Config.SplitThreshold, or several in one
// scatter-gather or coalesced request) runs it over a pooled connection
// that nothing else uses meanwhile, polling for the reply before parking;
// the tasks have finished when Submit returns, and no other goroutine is
// woken on the way. Handing a lone request to a lane costs two cross-CPU
// wake-ups whatever its size: a 1 MiB write from Python went from 2.3 to
// 4.0 GB/s inline (docs/benchmarks.md). Requests that are split, and
// batches of several requests, go to the lanes, which overlap them. When
// no pooled connection is free (at most Lanes per peer), the request goes
// to the lanes as usual. Other Submits never wait for the network.
func (p *peer) inline(w *wreq) bool {
	if w.v1 {
		return false
	}
	l := p.takeSync()
	if l == nil {
		return false
	}
	defer p.putSync(l)
	ctx := w.ctx
	stopReq := context.AfterFunc(ctx, func() { l.interrupt(ctx.Err()) })
	defer stopReq()
	stopPeer := context.AfterFunc(p.ctx, func() { l.interrupt(cancelCause(p)) })
	defer stopPeer()
	defer l.busy.Store(nil)
	for attempt := 0; ; attempt++ {
		if l.cn != nil && l.cn.interrupted.Load() != nil {
			l.drop() // cut short after its last request: not reusable
		}
		reused := l.cn != nil
		if reused && !l.cn.pl.idle() {
			// Closed, reset or written to by the peer while pooled.
			p.t.hot.Debug("tcp: pooled connection to peer ended", zap.String("peer", p.key.name),
				zap.String("addr", p.addr))
			p.closes.Add(1)
			l.drop()
			reused = false
		}
		if l.cn == nil {
			c, err := p.dial(w.ctx)
			if err != nil {
				l.reportErr(w, err)
				return true
			}
			cn := newConn(p, c, nil)
			cn.pl = newPoller(c, p.t.cfg.PollBudget, func() bool { return cn.stopped() != nil })
			l.cn = cn
		}
		l.cn.ctx = w.ctx
		l.busy.Store(l.cn)
		// A cancellation that came before busy was set is seen by the
		// stream's next deadline arming (stopped checks ctx).
		replied, err := l.cn.exchange(w)
		l.busy.Store(nil)
		if l.cn != nil {
			l.cn.ctx = nil
		}
		switch {
		case err == nil:
			return true
		case err == errReported:
			l.drop()
			return true
		}
		l.drop()
		// A pooled connection that the peer closed while idle fails before
		// any reply: try once more on a fresh one.
		if attempt > 0 || !reused || replied || !stale(err) || w.ctx.Err() != nil || p.ctx.Err() != nil {
			l.reportErr(w, err)
			return true
		}
	}
}

// interrupt cuts short the request running on the lane, if any.
func (l *syncLane) interrupt(why error) {
	if cn := l.busy.Load(); cn != nil {
		cn.interrupt(why)
	}
}

// reportErr reports w's failure on a sync lane.
func (l *syncLane) reportErr(w *wreq, err error) {
	conn, cause := l.p.classify(w, err)
	if conn {
		l.p.failed(err)
	}
	w.fail(l.p, conn, cause)
}

// drop closes the sync lane's connection, if any.
func (l *syncLane) drop() {
	if l.cn != nil {
		l.cn.close()
		l.cn = nil
	}
}

// takeSync hands out an idle sync lane, creating one while fewer than Lanes
// exist; nil when none is free or the peer is closed. The caller owns the
// lane until putSync, and the transport's Close waits for that.
func (p *peer) takeSync() *syncLane {
	p.smu.Lock()
	defer p.smu.Unlock()
	if p.syncDone {
		return nil
	}
	if n := len(p.syncIdle); n > 0 {
		l := p.syncIdle[n-1]
		p.syncIdle[n-1] = nil
		p.syncIdle = p.syncIdle[:n-1]
		p.t.wg.Add(1)
		return l
	}
	if p.syncN >= p.t.cfg.Lanes {
		return nil
	}
	p.syncN++
	p.t.wg.Add(1)
	return &syncLane{p: p}
}

// putSync returns a sync lane to the pool, or closes it when the peer was
// closed meanwhile.
func (p *peer) putSync(l *syncLane) {
	defer p.t.wg.Done()
	p.smu.Lock()
	if !p.syncDone {
		p.syncIdle = append(p.syncIdle, l)
		p.smu.Unlock()
		return
	}
	p.smu.Unlock()
	l.drop()
}

// closeSync closes the pooled sync lanes and lets no more be taken; lanes in
// use are interrupted by the peer's ctx (through their conn's stopped) and
// closed by putSync.
func (p *peer) closeSync() {
	p.smu.Lock()
	p.syncDone = true
	idle := p.syncIdle
	p.syncIdle = nil
	p.smu.Unlock()
	for _, l := range idle {
		l.drop()
	}
}

// reapSync drops the pooled sync connections that the peer closed, counting
// them as PeerCloses does the lanes' idle ones.
func (p *peer) reapSync() {
	p.smu.Lock()
	defer p.smu.Unlock()
	for _, l := range p.syncIdle {
		if l.cn != nil && !l.cn.pl.idle() {
			p.closes.Add(1)
			l.drop()
		}
	}
}
