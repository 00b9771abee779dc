package tcp

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/transport"
)

// InlineMax is the largest request that a synchronous caller runs on its
// own goroutine (see Sync); larger ones gain nothing from it and go to the
// lanes.
const InlineMax = 64 << 10

// syncSweep is how often pooled sync connections are checked for a close
// by their peer.
const syncSweep = 100 * time.Millisecond

// inline runs task on the calling goroutine and reports whether it did: a
// Submit with SubmitOptions.Sync whose wire request is a lone v2 request of
// at most InlineMax bytes runs it over a pooled connection that nothing else
// uses meanwhile, polling for the status frame before parking; the task has
// finished when Submit returns, and no other goroutine is woken on the way.
// When no such connection is free (at most Lanes per peer), the request goes
// to the lanes as usual. Other Submits never wait for the network.
func (p *peer) inline(ctx context.Context, task *transport.Task) bool {
	if task.Length > InlineMax {
		return false
	}
	l := p.takeSync()
	if l == nil {
		return false
	}
	defer p.putSync(l)
	if l.conn != nil && !l.pl.idle() {
		// Closed, reset or written to by the peer while pooled.
		l.p.t.hot.Debug("tcp: pooled connection to peer ended", zap.String("peer", p.key.name),
			zap.String("addr", p.addr))
		p.closes.Add(1)
		l.drop()
	}
	w := part{
		ctx: ctx, task: task, local: task.Local, remote: task.Remote, n: task.Length,
		write: task.Opcode == transport.Write,
	}
	task.Start(1)
	l.load.Add(int64(w.n))
	l.serve(&w)
	return true
}

// takeSync hands out an idle sync lane, creating one while fewer than Lanes
// exist; nil when none is free or the peer is closed. The caller owns the
// lane until putSync, and the transport's Close waits for that.
func (p *peer) takeSync() *lane {
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
	l := &lane{p: p, sync: true}
	l.s.owner = l
	l.unpeer = context.AfterFunc(p.ctx, l.interrupt)
	p.t.wg.Add(1)
	return l
}

// putSync returns a sync lane to the pool, or closes it when the peer was
// closed meanwhile.
func (p *peer) putSync(l *lane) {
	defer p.t.wg.Done()
	l.stopWatching()
	p.smu.Lock()
	if !p.syncDone {
		p.syncIdle = append(p.syncIdle, l)
		p.smu.Unlock()
		return
	}
	p.smu.Unlock()
	l.release()
}

// closeSync closes the pooled sync lanes and lets no more be taken; lanes in
// use are interrupted by the peer's ctx and closed by putSync.
func (p *peer) closeSync() {
	p.smu.Lock()
	p.syncDone = true
	idle := p.syncIdle
	p.syncIdle = nil
	p.smu.Unlock()
	for _, l := range idle {
		l.release()
	}
}

// reapSync drops the pooled sync connections that the peer closed, counting
// them as PeerCloses does the lanes' idle ones.
func (p *peer) reapSync() {
	p.smu.Lock()
	defer p.smu.Unlock()
	for _, l := range p.syncIdle {
		if l.conn != nil && !l.pl.idle() {
			p.closes.Add(1)
			l.drop()
		}
	}
}

// release closes a sync lane for good.
func (l *lane) release() {
	l.drop()
	l.unpeer()
}
