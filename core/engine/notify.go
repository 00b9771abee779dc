package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/handshake"
)

// errNotifyLimit is matched by the reason a notify is refused for.
var errNotifyLimit = errors.New("notify queue full")

// notifyLimits bound the queue: in total, and per sending IP. Bytes count
// names and messages.
type notifyLimits struct {
	count, peerCount int
	bytes, peerBytes int64
}

// notifyLimitsOf takes the limits from env; zero fields mean the defaults.
func notifyLimitsOf(env config.Env) notifyLimits {
	l := notifyLimits{count: env.NotifyMaxCount, peerCount: env.NotifyMaxCountPerPeer,
		bytes: env.NotifyMaxBytes, peerBytes: env.NotifyMaxBytesPerPeer}
	if l.count <= 0 {
		l.count = config.DefaultNotifyMaxCount
	}
	if l.peerCount <= 0 {
		l.peerCount = min(config.DefaultNotifyMaxCountPerPeer, l.count)
	}
	if l.bytes <= 0 {
		l.bytes = config.DefaultNotifyMaxBytes
	}
	if l.peerBytes <= 0 {
		l.peerBytes = min(config.DefaultNotifyMaxBytesPerPeer, l.bytes)
	}
	return l
}

// len is how many notifies are queued.
func (n *notifyQueue) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.total.count
}

// queuedNotify is a notify and the IP it came from.
type queuedNotify struct {
	Notify
	from netip.Addr
}

func (n *Notify) size() int64 { return int64(len(n.Name) + len(n.Msg)) }

// usage is what one sender holds in the queue.
type usage struct {
	count int
	bytes int64
}

// notifyQueue holds the notifies received and not yet taken, oldest first,
// within its limits. Taking from the front costs the notifies taken, not
// the queue's length.
type notifyQueue struct {
	limits notifyLimits // set by init, before the RPC server starts
	warn   *zap.Logger  // sampled: peers decide how often it is called

	mu    sync.Mutex
	q     []queuedNotify        // +checklocks:mu; pending: q[head:]
	head  int                   // +checklocks:mu
	total usage                 // +checklocks:mu
	peers map[netip.Addr]*usage // +checklocks:mu
}

// init sets the limits from env and the logger refusals go to.
func (n *notifyQueue) init(env config.Env, log *zap.Logger) {
	n.limits = notifyLimitsOf(env)
	n.warn = log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 5, 0)
	}))
}

// push queues v, from the IP from, unless a limit would be passed: then
// it returns why (matching errNotifyLimit), and changes nothing.
func (n *notifyQueue) push(v Notify, from netip.Addr) error {
	size := v.size()
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[from]
	var held usage
	if p != nil {
		held = *p
	}
	switch l := n.limits; {
	case n.total.count >= l.count:
		return fmt.Errorf("%w: %d notifies queued (limit %d)", errNotifyLimit, n.total.count, l.count)
	case n.total.bytes+size > l.bytes:
		return fmt.Errorf("%w: %d bytes queued, %d more asked (limit %d)", errNotifyLimit, n.total.bytes, size, l.bytes)
	case held.count >= l.peerCount:
		return fmt.Errorf("%w: %d notifies queued from %s (limit %d per peer)", errNotifyLimit, held.count, from, l.peerCount)
	case held.bytes+size > l.peerBytes:
		return fmt.Errorf("%w: %d bytes queued from %s, %d more asked (limit %d per peer)", errNotifyLimit, held.bytes, from, size, l.peerBytes)
	}
	if p == nil {
		if n.peers == nil {
			n.peers = map[netip.Addr]*usage{}
		}
		p = &usage{}
		n.peers[from] = p
	}
	p.count++
	p.bytes += size
	n.total.count++
	n.total.bytes += size
	n.q = append(n.q, queuedNotify{Notify: v, from: from})
	return nil
}

// take removes and returns, oldest first, at most max notifies, stopping
// at the first one fits refuses (fits sees each one once, under the
// queue's lock, and must not block); left is how many stay queued.
func (n *notifyQueue) take(max int, fits func(*Notify) bool) (out []Notify, left int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for len(out) < max && n.head < len(n.q) {
		v := &n.q[n.head]
		if !fits(&v.Notify) {
			break
		}
		out = append(out, v.Notify)
		size := v.size()
		n.total.count--
		n.total.bytes -= size
		if p := n.peers[v.from]; p != nil {
			p.count--
			p.bytes -= size
			if p.count == 0 {
				delete(n.peers, v.from)
			}
		}
		*v = queuedNotify{} // the strings are the caller's now
		n.head++
	}
	switch {
	case n.head == len(n.q):
		n.q, n.head = n.q[:0], 0
	case n.head >= 1024 && n.head >= len(n.q)/2:
		m := copy(n.q, n.q[n.head:])
		clear(n.q[m:])
		n.q, n.head = n.q[:m], 0
	}
	return out, len(n.q) - n.head
}

func (e *Engine) onNotify(ctx context.Context, _ handshake.MsgType, payload []byte) []byte {
	from, _ := handshake.PeerFromContext(ctx)
	n, err := handshake.DecodeNotifyMsg(payload)
	if err != nil {
		e.log.Debug("bad notify", zap.Stringer("peer", from), zap.Error(err))
		return handshake.NotifyRefusal("malformed notify")
	}
	if err := e.notifies.push(Notify{Name: n.Name, Msg: n.Msg}, from); err != nil {
		e.notifies.warn.Warn("refusing notify", zap.Stringer("peer", from), zap.String("name", clipName(n.Name)), zap.Error(err))
		return handshake.NotifyRefusal(err.Error())
	}
	return handshake.NotifyAck()
}

// clipName keeps a peer's notify name short in logs.
func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Notifies drains and returns the notifies received so far.
func (e *Engine) Notifies() []Notify {
	ns, _ := e.notifies.take(math.MaxInt, func(*Notify) bool { return true })
	return ns
}

// TakeNotifies removes and returns the oldest notifies, at most max of
// them, stopping at the first one fits refuses: fits sees each notify once,
// in order, and must be quick (it runs under the queue's lock). left is how
// many stay queued. It lets a caller drain the queue in bounded pieces.
func (e *Engine) TakeNotifies(max int, fits func(*Notify) bool) (ns []Notify, left int) {
	return e.notifies.take(max, fits)
}
