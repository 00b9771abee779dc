package rdma

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// Endpoint modes. A live endpoint is in its HCA's store; the others have
// left it and are destroyed once no work request of theirs is in flight.
const (
	modeLive    int32 = iota
	modeEvicted       // pushed out by the store: in-flight work completes normally
	modeFailed        // a failure: QPs in ERR, flushed work is retried
	modeClosed        // ClosePeer or Close: QPs in ERR, all work fails
)

// Connection states of a live endpoint.
type connState int

const (
	connIdle connState = iota
	connConnecting
	connConnected
)

// endpoint is every QP between one local HCA and one peer NIC path:
// Mooncake's RdmaEndPoint.
type endpoint struct {
	ctx      *hcaContext
	peerPath string // "<peer segment>@<peer hca>"
	peerName string
	peerNIC  string
	qps      []*qpState

	mode     atomic.Int32
	inflight atomic.Int64 // work requests posted and not yet completed
	visited  atomic.Bool  // SIEVE

	mu         sync.Mutex
	state      connState      // +checklocks:mu
	peerQPN    []uint32       // +checklocks:mu
	queue      []*slice       // +checklocks:mu; waiting to be posted
	wrs        []verbs.SendWR // +checklocks:mu; scratch
	ids        []uint64       // +checklocks:mu; scratch
	connecting bool           // +checklocks:mu; a setup goroutine runs
	cause      error          // +checklocks:mu; why it left service
	destroyed  bool           // +checklocks:mu
	peerGID    string         // +checklocks:mu; from the peer's descriptor
	peerLID    uint16         // +checklocks:mu
	nextQP     int            // +checklocks:mu
}

// qpState is one QP of an endpoint and its count of work in flight.
type qpState struct {
	qp    verbs.QP
	cq    *cqState
	depth atomic.Int64
}

// newEndpoint creates the endpoint's QPs and brings them to INIT.
func newEndpoint(c *hcaContext, peerPath string) (*endpoint, error) {
	peerName, peerNIC, ok := splitNICPath(peerPath)
	if !ok {
		return nil, fmt.Errorf("nic path %q: want <segment>@<hca>", peerPath)
	}
	ep := &endpoint{ctx: c, peerPath: peerPath, peerName: peerName, peerNIC: peerNIC}
	cfg := c.t.cfg
	for range cfg.NumQPPerEP {
		cq := c.nextCQState()
		qp, err := c.pd.CreateQP(verbs.QPInit{
			SendCQ: cq.cq, RecvCQ: cq.cq,
			MaxSendWR: uint32(c.maxWR), MaxRecvWR: uint32(c.maxWR),
			MaxSendSGE: uint32(c.maxSGE), MaxRecvSGE: uint32(c.maxSGE),
			MaxInline: uint32(c.maxInline),
		})
		if err != nil {
			ep.closeQPs()
			return nil, fmt.Errorf("create qp on %s for %s: %w", c.name, peerPath, err)
		}
		ep.qps = append(ep.qps, &qpState{qp: qp, cq: cq})
	}
	for _, q := range ep.qps {
		if err := q.qp.Modify(&verbs.QPAttr{
			State:       verbs.QPSInit,
			PortNum:     c.port,
			PKeyIndex:   uint16(cfg.PKeyIndex),
			AccessFlags: verbs.AccessLocalWrite | verbs.AccessRemoteRead | verbs.AccessRemoteWrite | verbs.AccessRemoteAtomic,
		}, verbs.MaskState|verbs.MaskPKeyIndex|verbs.MaskPort|verbs.MaskAccessFlags); err != nil {
			ep.closeQPs()
			return nil, fmt.Errorf("qp %d on %s to INIT: %w", q.qp.Num(), c.name, err)
		}
	}
	c.qpMu.Lock()
	for _, q := range ep.qps {
		c.byQPN[q.qp.Num()] = ep
	}
	c.qpMu.Unlock()
	return ep, nil
}

func splitNICPath(p string) (segment, nic string, ok bool) {
	i := len(p) - 1
	for i >= 0 && p[i] != '@' {
		i--
	}
	if i <= 0 || i == len(p)-1 {
		return "", "", false
	}
	return p[:i], p[i+1:], true
}

func (ep *endpoint) qpNums() []uint32 {
	out := make([]uint32, len(ep.qps))
	for i, q := range ep.qps {
		out[i] = q.qp.Num()
	}
	return out
}

// connectLocked brings every QP from INIT to RTR, paired with the peer's QP
// of the same position, and then to RTS, with Mooncake's attributes
// (transports.md §4.4), rd_atomic clamped by the device.
// +checklocks:ep.mu
func (ep *endpoint) connectLocked(peerQPN []uint32, gid verbs.GID, lid uint16) error {
	c := ep.ctx
	cfg := c.t.cfg
	if len(peerQPN) != len(ep.qps) {
		return fmt.Errorf("peer %s has %d qps, this side %d (MC_NUM_QP_PER_EP must match)", ep.peerPath, len(peerQPN), len(ep.qps))
	}
	tc := uint8(0)
	if cfg.TrafficClass >= 0 {
		tc = uint8(cfg.TrafficClass)
	}
	for i, q := range ep.qps {
		rtr := verbs.QPAttr{
			State:   verbs.QPSRTR,
			PathMTU: c.pathMTU,
			AH: verbs.AHAttr{
				IsGlobal: true, DGID: gid, SGIDIndex: uint8(c.gidIndex), HopLimit: 16, TrafficClass: tc,
				DLID: lid, SL: uint8(cfg.ServiceLevel), PortNum: c.port,
			},
			DestQPN:         peerQPN[i],
			RQPSN:           0,
			MaxDestRdAtomic: c.rdAtom,
			MinRNRTimer:     12,
		}
		if err := q.qp.Modify(&rtr, verbs.MaskState|verbs.MaskPathMTU|verbs.MaskMinRNRTimer|verbs.MaskAV|
			verbs.MaskMaxDestRdAtomic|verbs.MaskDestQPN|verbs.MaskRQPSN); err != nil {
			return fmt.Errorf("qp %d on %s to RTR (peer qp %d): %w", q.qp.Num(), c.name, peerQPN[i], err)
		}
		rts := verbs.QPAttr{State: verbs.QPSRTS, Timeout: 14, RetryCnt: 7, RNRRetry: 7, SQPSN: 0, MaxRdAtomic: c.initRdAtom}
		if err := q.qp.Modify(&rts, verbs.MaskState|verbs.MaskTimeout|verbs.MaskRetryCnt|verbs.MaskRNRRetry|
			verbs.MaskSQPSN|verbs.MaskMaxQPRdAtomic); err != nil {
			return fmt.Errorf("qp %d on %s to RTS: %w", q.qp.Num(), c.name, err)
		}
	}
	ep.peerQPN = slices.Clone(peerQPN)
	ep.state = connConnected
	return nil
}

// enqueue queues slices and posts what fits; an idle endpoint starts its
// connection setup.
func (ep *endpoint) enqueue(ss []*slice) {
	t := ep.ctx.t
	ep.mu.Lock()
	if ep.mode.Load() != modeLive {
		ep.mu.Unlock()
		t.requeue(ss)
		return
	}
	ep.queue = append(ep.queue, ss...)
	switch ep.state {
	case connIdle:
		ep.state = connConnecting
		ep.connecting = true
		if !t.life.Go(func() { t.connect(ep) }) {
			ep.state = connIdle
			ep.connecting = false
			q := ep.queue
			ep.queue = nil
			ep.mu.Unlock()
			finishAll(q, ErrClosed)
			return
		}
		ep.mu.Unlock()
	case connConnecting:
		ep.mu.Unlock()
	case connConnected:
		ep.mu.Unlock()
		ep.post()
	}
}

// post moves queued slices onto the QPs as far as QP depth and CQ room
// allow, in one PostSend per QP batch.
func (ep *endpoint) post() {
	c := ep.ctx
	t := c.t
	ep.mu.Lock()
	if ep.state != connConnected || ep.mode.Load() != modeLive {
		ep.mu.Unlock()
		return
	}
	ep.dropCanceledLocked()
	var (
		failed  []*slice
		postErr error
	)
	for len(ep.queue) > 0 && postErr == nil {
		q := ep.pickQPLocked()
		if q == nil {
			break // completions will call post again
		}
		room := int(int64(c.maxWR) - q.depth.Load())
		n := q.cq.reserve(min(room, len(ep.queue)))
		if n == 0 {
			c.block(ep)
			break
		}
		batch := ep.queue[:n]
		ep.ids = c.slab.PutAll(batch, ep.ids[:0])
		ep.wrs = ep.wrs[:0]
		for i, s := range batch {
			s.ep, s.qp = ep, q
			op := verbs.WRRDMAWrite
			if s.op == opRead {
				op = verbs.WRRDMARead
			}
			ep.wrs = append(ep.wrs, verbs.SendWR{WRID: ep.ids[i], LocalAddr: s.local, RemoteAddr: s.remote,
				Length: s.length, LKey: s.lkey, RKey: s.rkey, Opcode: op})
		}
		q.depth.Add(int64(n))
		ep.inflight.Add(int64(n))
		t.life.Posted(int64(n))
		posted, err := q.qp.PostSend(ep.wrs)
		if posted < n {
			// Nothing from the bad request on was posted: undo it.
			bad := n - posted
			for _, id := range ep.ids[posted:] {
				c.slab.Take(id)
			}
			q.depth.Add(-int64(bad))
			ep.inflight.Add(-int64(bad))
			t.life.Completed(int64(bad))
			q.cq.outstanding.Add(-int64(bad))
			for _, s := range batch[posted:] {
				s.ep, s.qp = nil, nil
			}
			failed = append(failed, batch[posted:]...)
			if err == nil {
				err = errors.New("post send accepted fewer requests than given")
			}
			postErr = fmt.Errorf("post send on %s qp %d: %w", c.name, q.qp.Num(), err)
		}
		ep.queue = ep.queue[n:]
	}
	if len(ep.queue) == 0 {
		ep.queue = nil // let the backing array go
	}
	ep.mu.Unlock()
	if postErr != nil {
		t.dlog.Warn("rdma post failed", zap.String("hca", c.name), zap.String("peer", ep.peerPath), zap.Error(postErr))
		ep.retire(modeFailed, postErr)
		t.retry(failed, postErr)
	}
}

// pickQPLocked returns the QP with the most room, or nil when all are full.
// +checklocks:ep.mu
func (ep *endpoint) pickQPLocked() *qpState {
	maxWR := int64(ep.ctx.maxWR)
	var best *qpState
	bestRoom := int64(0)
	for i := range ep.qps {
		q := ep.qps[(ep.nextQP+i)%len(ep.qps)]
		if room := maxWR - q.depth.Load(); room > bestRoom {
			best, bestRoom = q, room
		}
	}
	ep.nextQP++
	return best
}

// dropCanceledLocked fails queued slices whose Submit context ended.
// +checklocks:ep.mu
func (ep *endpoint) dropCanceledLocked() {
	keep := ep.queue[:0]
	for _, s := range ep.queue {
		if err := s.call.Err(); err != nil {
			s.finish(err)
			continue
		}
		keep = append(keep, s)
	}
	clear(ep.queue[len(keep):])
	ep.queue = keep
}

// purgeCanceled is dropCanceledLocked for a Submit whose context ended.
func (ep *endpoint) purgeCanceled() {
	ep.mu.Lock()
	ep.dropCanceledLocked()
	ep.mu.Unlock()
}

// retire takes the endpoint out of service (see the mode constants). Its
// queued slices are requeued elsewhere (evicted), retried (failed) or
// failed (closed). It is idempotent: the first mode wins.
func (ep *endpoint) retire(mode int32, cause error) {
	c := ep.ctx
	t := c.t
	if !ep.mode.CompareAndSwap(modeLive, mode) {
		return
	}
	c.store.remove(ep)
	c.retiredMu.Lock()
	c.retired[ep] = struct{}{}
	c.retiredMu.Unlock()
	ep.mu.Lock()
	ep.cause = cause
	q := ep.queue
	ep.queue = nil
	if mode != modeEvicted && !ep.destroyed {
		// The NIC flushes every work request still on the QPs. Under mu:
		// destroy cannot run meanwhile.
		for _, qs := range ep.qps {
			if err := qs.qp.Modify(&verbs.QPAttr{State: verbs.QPSErr}, verbs.MaskState); err != nil {
				t.dlog.Warn("qp to ERR", zap.String("hca", c.name), zap.Uint32("qpn", qs.qp.Num()), zap.Error(err))
			}
		}
	}
	ep.mu.Unlock()
	switch mode {
	case modeEvicted:
		t.requeue(q)
	case modeFailed:
		t.retry(q, cause)
	default:
		finishAll(q, cause)
	}
	ep.maybeDestroy()
}

func (ep *endpoint) causeErr() error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.cause == nil {
		return ErrClosed
	}
	return ep.cause
}

// maybeDestroy destroys a retired endpoint once nothing of it is in flight
// and no setup goroutine uses it.
func (ep *endpoint) maybeDestroy() {
	if ep.mode.Load() == modeLive || ep.inflight.Load() != 0 {
		return
	}
	ep.mu.Lock()
	busy := ep.connecting
	ep.mu.Unlock()
	if busy {
		return
	}
	if err := ep.destroy(); err != nil {
		ep.ctx.t.log.Warn("destroy endpoint", zap.String("peer", ep.peerPath), zap.Error(err))
	}
}

// destroy closes the QPs (once) and forgets the endpoint.
func (ep *endpoint) destroy() error {
	c := ep.ctx
	ep.mu.Lock()
	if ep.destroyed {
		ep.mu.Unlock()
		return nil
	}
	ep.destroyed = true
	ep.mu.Unlock()
	c.retiredMu.Lock()
	delete(c.retired, ep)
	c.retiredMu.Unlock()
	c.blockedMu.Lock()
	delete(c.blocked, ep)
	c.blockedMu.Unlock()
	c.qpMu.Lock()
	for _, q := range ep.qps {
		if c.byQPN[q.qp.Num()] == ep {
			delete(c.byQPN, q.qp.Num())
		}
	}
	c.qpMu.Unlock()
	return ep.closeQPs()
}

func (ep *endpoint) closeQPs() error {
	var errs []error
	for _, q := range ep.qps {
		errs = append(errs, q.qp.Close())
	}
	return errors.Join(errs...)
}

func finishAll(ss []*slice, err error) {
	for _, s := range ss {
		s.finish(err)
	}
}
