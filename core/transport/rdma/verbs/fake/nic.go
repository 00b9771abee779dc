package fake

import (
	"slices"
	"time"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// NIC is one fake RDMA device on a host. Its methods inject faults and
// inspect state; all are safe for concurrent use.
type NIC struct {
	fab  *Fabric
	id   int
	host string
	spec NICSpec

	// Guarded by fab.mu.
	port    verbs.PortState
	lid     uint16
	gids    []verbs.GIDEntry
	removed bool
	qps     map[uint32]*qp
	lkeys   map[uint32]*mr
	rkeys   map[uint32]*mr
	devices []*device
	nextQPN uint32
	postErr int // requests to accept before failing one; -1 = never
	faults  map[*NIC]*pathFault
	delay   time.Duration
	dmabufs int
	// statuses counts completions by status; posted counts requests
	// accepted by PostSend, including those of QPs since destroyed.
	statuses map[verbs.WCStatus]int
	posted   int
}

type pathFault struct {
	status verbs.WCStatus
	count  int // remaining; -1 = forever
}

// Name is the device name.
func (n *NIC) Name() string { return n.spec.Name }

// Host is the host the NIC is on.
func (n *NIC) Host() string { return n.host }

// GID returns the NIC's GID at index i.
func (n *NIC) GID(i int) verbs.GID {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	return n.gids[i].GID
}

// SetPort brings the port up or down, raising PORT_ACTIVE or PORT_ERR on
// every open device of the NIC when the state changes. While the port is
// down, requests through it retry and then fail with RETRY_EXC_ERR.
func (n *NIC) SetPort(up bool) {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	st, ev := verbs.PortDown, verbs.EventPortErr
	if up {
		st, ev = verbs.PortActive, verbs.EventPortActive
	}
	if n.port == st {
		return
	}
	n.port = st
	n.raise(verbs.AsyncEvent{Type: ev, Port: 1})
}

// FailPostAfter makes the NIC accept k more work requests and refuse the
// next one with ENOMEM (a partial ibv_post_send failure).
func (n *NIC) FailPostAfter(k int) {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	n.postErr = k
}

// FailPath makes the next count requests from this NIC to dst complete
// with status (count -1: until cleared with count 0). Each failure moves
// the posting QP to ERR.
func (n *NIC) FailPath(dst *NIC, status verbs.WCStatus, count int) {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	if count == 0 {
		delete(n.faults, dst)
		return
	}
	n.faults[dst] = &pathFault{status: status, count: count}
}

// DelayCompletions delays every successful completion of requests posted
// on this NIC by d (0 clears).
func (n *NIC) DelayCompletions(d time.Duration) {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	n.delay = d
}

// QPFatal moves QP qpn to ERR and raises QP_FATAL.
func (n *NIC) QPFatal(qpn uint32) {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	if q, ok := n.qps[qpn]; ok {
		q.state = verbs.QPSErr
		n.raise(verbs.AsyncEvent{Type: verbs.EventQPFatal, QPNum: qpn})
	}
}

// Remove unplugs the NIC: DEVICE_FATAL on its open devices, every QP to
// ERR, and the device disappears from Devices.
func (n *NIC) Remove() {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	n.removed = true
	for _, q := range n.qps {
		q.state = verbs.QPSErr
	}
	n.raise(verbs.AsyncEvent{Type: verbs.EventDeviceFatal})
}

// SetGID replaces GID table entry i and raises GID_CHANGE.
func (n *NIC) SetGID(i int, g verbs.GID) {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	n.gids[i].GID = g
	n.raise(verbs.AsyncEvent{Type: verbs.EventGIDChange, Port: 1})
}

// QPInfo is a snapshot of a fake QP.
type QPInfo struct {
	Num     uint32
	State   verbs.QPState
	DestQPN uint32
	// Attr is the attribute set as last modified; History lists every
	// successful transition with the mask used.
	Attr    verbs.QPAttr
	History []Transition
	// Outstanding counts posted requests whose completion was not polled;
	// Posted counts every request PostSend accepted.
	Outstanding int
	Posted      int
}

// Transition is one successful ibv_modify_qp.
type Transition struct {
	From, To verbs.QPState
	Mask     verbs.QPAttrMask
	Attr     verbs.QPAttr
}

// QPs lists the NIC's live QPs by number.
func (n *NIC) QPs() []QPInfo {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	var out []QPInfo
	for _, q := range n.qps {
		out = append(out, QPInfo{Num: q.num, State: q.state, DestQPN: q.attr.DestQPN, Attr: q.attr,
			History: slices.Clone(q.history), Outstanding: int(q.outstanding.Load()), Posted: q.posted})
	}
	slices.SortFunc(out, func(a, b QPInfo) int { return int(a.Num) - int(b.Num) })
	return out
}

// MRs is the number of live memory regions on the NIC; DmabufMRs how many
// registrations went through RegDmabufMR.
func (n *NIC) MRs() int {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	return len(n.lkeys)
}

// DmabufMRs counts RegDmabufMR calls that succeeded.
func (n *NIC) DmabufMRs() int {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	return n.dmabufs
}

// Completions returns how many completions the NIC generated with status.
func (n *NIC) Completions(st verbs.WCStatus) int {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	return n.statuses[st]
}

// Posted is how many work requests the NIC accepted in all.
func (n *NIC) Posted() int {
	n.fab.mu.Lock()
	defer n.fab.mu.Unlock()
	return n.posted
}

// raise delivers ev to every open device of the NIC.
// +checklocks:n.fab.mu
func (n *NIC) raise(ev verbs.AsyncEvent) {
	for _, d := range n.devices {
		d.push(ev)
	}
}
