package core

import "sync"

// Notify is a message sent to a peer's engine after a transfer (Mooncake's
// TransferNotify / NotifyDesc).
type Notify struct {
	Name string
	Msg  string
}

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

func (n *notifyQueue) drain() []Notify {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.q
	n.q = nil
	return out
}
