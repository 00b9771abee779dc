package engine

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/handshake"
)

// maxQueuedNotifies bounds the notifies a peer can pile up before the
// application drains them; beyond it new ones are refused, and the sender
// sees the refusal (an empty notify_msg in the reply).
const maxQueuedNotifies = 1 << 16

type notifyQueue struct {
	mu sync.Mutex
	q  []Notify // +checklocks:mu
}

func (n *notifyQueue) push(v Notify) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.q) >= maxQueuedNotifies {
		return false
	}
	n.q = append(n.q, v)
	return true
}

func (n *notifyQueue) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.q)
}

func (n *notifyQueue) drain() []Notify {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.q
	n.q = nil
	return out
}

func (e *Engine) onNotify(_ context.Context, _ handshake.MsgType, payload []byte) []byte {
	n, err := handshake.DecodeNotifyMsg(payload)
	if err != nil {
		e.log.Debug("bad notify", zap.Error(err))
		b, _ := handshake.NotifyMsg{}.Marshal()
		return b
	}
	if !e.notifies.push(Notify{Name: n.Name, Msg: n.Msg}) {
		e.log.Warn("notify queue full; refusing notify", zap.String("name", n.Name))
		b, _ := handshake.NotifyMsg{}.Marshal()
		return b
	}
	return handshake.NotifyAck()
}

// Notifies drains and returns the notifies received so far.
func (e *Engine) Notifies() []Notify { return e.notifies.drain() }
