// Package connlimit bounds the connections a server holds, in total and
// per remote IP, and spends the bound on connections that are working.
//
// A server admits each accepted connection through a Limiter before it
// serves it. Every admitted connection is idle (waiting for its peer's next
// request) or busy (in the middle of one); the server says which with
// Conn.Busy and Conn.Idle. When a bound is reached an idle connection is
// shed (closed) to make room: over the per-peer bound, the longest-idle
// connection of the same peer; over the total, the longest-idle connection
// of the peer that holds the most connections. When nothing can be shed,
// a connection over its peer's bound is refused, and Admit waits for room
// under the total bound, so that the accept loop stops taking connections
// (they wait in the kernel's backlog, costing no descriptor) until a busy
// connection finishes.
//
// Ownership: Admit's caller owns the net.Conn until Admit succeeds; after
// that the Limiter may close it at any time (shedding it, or in Close), and
// the caller must still call Conn.Release once when it is done with it.
// Close closes every admitted connection and makes Admit fail with
// ErrClosed.
package connlimit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

var (
	// ErrPeerLimit is returned by Admit when the connection's peer already
	// holds its bound of connections and none of them is idle.
	ErrPeerLimit = errors.New("connlimit: per-peer connection limit reached")
	// ErrClosed is returned by Admit once Close has been called.
	ErrClosed = errors.New("connlimit: closed")
)

// Conn states, kept in Conn.state: a positive value is the time the
// connection became idle (nanoseconds since the Limiter's epoch, plus one).
const (
	stateBusy int64 = 0
	stateShed int64 = -1
)

// Limiter admits connections within its bounds. Its methods are safe for
// concurrent use; Busy and Idle, called once per request, take no lock.
type Limiter struct {
	max, perPeer int
	epoch        time.Time

	// waiters counts the Admit calls waiting for room; only then do Idle
	// and Release signal room.
	waiters atomic.Int32
	room    chan struct{} // capacity 1
	done    chan struct{} // closed by Close

	mu     sync.Mutex
	peers  map[netip.Addr]*peer // +checklocks:mu
	n      int                  // +checklocks:mu
	shed   uint64               // +checklocks:mu
	closed bool                 // +checklocks:mu
}

type peer struct {
	addr  netip.Addr
	conns []*Conn // +checklocks:Limiter.mu
}

// Conn is one admitted connection.
type Conn struct {
	net.Conn
	l     *Limiter
	p     *peer // nil once removed from the tables (+checklocks:l.mu)
	idx   int   // position in p.conns (+checklocks:l.mu)
	state atomic.Int64
}

// New returns a Limiter holding at most max connections, at most perPeer
// of them from one remote IP. Both must be positive; perPeer above max is
// lowered to max.
func New(max, perPeer int) (*Limiter, error) {
	if max < 1 || perPeer < 1 {
		return nil, fmt.Errorf("connlimit: limits %d total, %d per peer: must be positive", max, perPeer)
	}
	return &Limiter{
		max:     max,
		perPeer: min(perPeer, max),
		epoch:   time.Now(),
		room:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		peers:   map[netip.Addr]*peer{},
	}, nil
}

// Max and PerPeer are the bounds.
func (l *Limiter) Max() int     { return l.max }
func (l *Limiter) PerPeer() int { return l.perPeer }

// Len is the number of admitted connections not yet released or shed.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// IdleLen is the number of admitted connections that are idle.
func (l *Limiter) IdleLen() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, p := range l.peers {
		for _, c := range p.conns {
			if c.state.Load() > stateBusy {
				n++
			}
		}
	}
	return n
}

// Shed is the number of idle connections closed to make room so far.
func (l *Limiter) Shed() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.shed
}

// PeerOf is the key connections are counted under: the remote IP (IPv4 in
// IPv6 unmapped), or the zero Addr for connections that have none.
func PeerOf(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// Admit admits c, idle, shedding an idle connection when a bound is
// reached. Over the total bound with nothing idle, it waits until a
// connection is released or turns idle, or ctx ends (ctx's error). Over the
// peer's bound with nothing idle it returns ErrPeerLimit. On error the
// caller still owns c.
func (l *Limiter) Admit(ctx context.Context, c net.Conn) (*Conn, error) {
	key := PeerOf(c)
	for {
		lc, victim, err := l.tryAdmit(c, key)
		if victim != nil {
			_ = victim.Conn.Close() // its server goroutine sees the close and releases it
		}
		if lc != nil || err != nil {
			return lc, err
		}
		// Full and nothing idle: wait for room. The re-check after
		// registering as a waiter closes the race with a Release that
		// came before.
		l.waiters.Add(1)
		lc, victim, err = l.tryAdmit(c, key)
		if victim != nil {
			_ = victim.Conn.Close()
		}
		if lc != nil || err != nil {
			l.waiters.Add(-1)
			return lc, err
		}
		select {
		case <-l.room:
			l.waiters.Add(-1)
		case <-l.done:
			l.waiters.Add(-1)
		case <-ctx.Done():
			l.waiters.Add(-1)
			return nil, ctx.Err()
		}
	}
}

// tryAdmit admits c if it fits, possibly shedding victim (which the caller
// closes, outside the lock). Neither a Conn nor an error: wait for room.
func (l *Limiter) tryAdmit(c net.Conn, key netip.Addr) (admitted, victim *Conn, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, nil, ErrClosed
	}
	p := l.peers[key]
	if p != nil && len(p.conns) >= l.perPeer {
		victim = l.shedFrom(p)
		if victim == nil {
			return nil, nil, fmt.Errorf("%w: %s holds %d", ErrPeerLimit, key, len(p.conns))
		}
	} else if l.n >= l.max {
		victim = l.shedAny()
		if victim == nil {
			return nil, nil, nil
		}
	}
	if p == nil {
		p = &peer{addr: key}
		l.peers[key] = p
	}
	lc := &Conn{Conn: c, l: l, p: p, idx: len(p.conns)}
	lc.state.Store(l.now())
	p.conns = append(p.conns, lc)
	l.n++
	return lc, victim, nil
}

// shedAny sheds the longest-idle connection of the peer that holds the
// most connections and has an idle one; nil when none is idle.
// +checklocks:l.mu
func (l *Limiter) shedAny() *Conn {
	var best *peer
	var bestSince int64
	for _, p := range l.peers {
		o := oldestIdle(p)
		if o == nil {
			continue
		}
		since := o.state.Load()
		if best == nil || len(p.conns) > len(best.conns) || len(p.conns) == len(best.conns) && since < bestSince {
			best, bestSince = p, since
		}
	}
	if best == nil {
		return nil
	}
	return l.shedFrom(best)
}

// shedFrom sheds p's longest-idle connection; nil when none is idle.
// +checklocks:l.mu
func (l *Limiter) shedFrom(p *peer) *Conn {
	for {
		c := oldestIdle(p)
		if c == nil {
			return nil
		}
		v := c.state.Load()
		if v <= stateBusy || !c.state.CompareAndSwap(v, stateShed) {
			continue // it just turned busy: look again
		}
		l.remove(c)
		l.shed++
		return c
	}
}

// oldestIdle is p's connection idle the longest, or nil.
// +checklocks:l.mu
func oldestIdle(p *peer) *Conn {
	var best *Conn
	var since int64
	for _, c := range p.conns {
		if v := c.state.Load(); v > stateBusy && (best == nil || v < since) {
			best, since = c, v
		}
	}
	return best
}

// remove takes c out of the tables.
// +checklocks:l.mu
func (l *Limiter) remove(c *Conn) {
	p := c.p
	if p == nil {
		return
	}
	last := len(p.conns) - 1
	p.conns[c.idx] = p.conns[last]
	p.conns[c.idx].idx = c.idx
	p.conns[last] = nil
	p.conns = p.conns[:last]
	if len(p.conns) == 0 {
		delete(l.peers, p.addr)
	}
	c.p = nil
	l.n--
}

// now is the idle state for the present moment.
func (l *Limiter) now() int64 { return int64(time.Since(l.epoch)) + 1 }

// signal tells one waiting Admit that there may be room.
func (l *Limiter) signal() {
	if l.waiters.Load() > 0 {
		select {
		case l.room <- struct{}{}:
		default:
		}
	}
}

// Close closes every admitted connection and makes Admit fail with
// ErrClosed. The connections' goroutines still call Release.
func (l *Limiter) Close() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
	var live []net.Conn
	for _, p := range l.peers {
		for _, c := range p.conns {
			live = append(live, c.Conn)
		}
	}
	l.mu.Unlock()
	for _, c := range live {
		_ = c.Close()
	}
}

// Busy marks c as working on a request, so that it is not shed. It
// returns false when c was shed already: the caller must stop serving it
// (it is closed).
func (c *Conn) Busy() bool {
	for {
		v := c.state.Load()
		if v == stateShed {
			return false
		}
		if v == stateBusy || c.state.CompareAndSwap(v, stateBusy) {
			return true
		}
	}
}

// Idle marks c as waiting for its peer, so that it may be shed when room
// is needed.
func (c *Conn) Idle() {
	if c.state.CompareAndSwap(stateBusy, c.l.now()) {
		c.l.signal()
	}
}

// Release takes c out of the limiter's count (if it was not shed) and
// makes room for a waiting Admit. It does not close c. Call it once, when
// done with c.
func (c *Conn) Release() {
	l := c.l
	l.mu.Lock()
	l.remove(c)
	l.mu.Unlock()
	l.signal()
}
