package rdma

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// pollBatch is how many completions one poll asks for (Mooncake's 64).
const pollBatch = 64

// hcaContext is one opened HCA: Mooncake's RdmaContext.
type hcaContext struct {
	t    *Transport
	id   int
	name string
	dev  verbs.Device
	port uint8
	pd   verbs.PD

	attr     verbs.DeviceAttr
	linkIB   bool
	pathMTU  verbs.MTU
	gidIndex int

	addrMu sync.Mutex
	lid    uint16    // +checklocks:addrMu
	gid    verbs.GID // +checklocks:addrMu

	// Effective per-device limits (Config clamped by this device).
	maxWR, maxSGE, maxInline, maxCQE int
	rdAtom, initRdAtom               uint8
	maxMR                            uint64

	chans  []verbs.CompChannel
	cqs    []*cqState
	nextCQ atomic.Uint32

	store *epStore
	slab  slab

	qpMu  sync.Mutex
	byQPN map[uint32]*endpoint // +checklocks:qpMu

	retiredMu sync.Mutex
	retired   map[*endpoint]struct{} // +checklocks:retiredMu

	blockedMu sync.Mutex
	blocked   map[*endpoint]struct{} // +checklocks:blockedMu; waiting for CQ room

	portUp      atomic.Bool
	fatal       atomic.Bool
	pausedUntil atomic.Int64 // unix ns
	failStreak  atomic.Int64

	wg sync.WaitGroup // pollers and the async loop
}

// cqState is a CQ and its count of work requests posted and not yet
// polled, which must never exceed its size.
type cqState struct {
	cq          verbs.CQ
	ch          int
	capacity    int64
	outstanding atomic.Int64
}

// reserve takes room for up to n completions and returns how many it took.
func (q *cqState) reserve(n int) int {
	for {
		cur := q.outstanding.Load()
		k := min(int64(n), q.capacity-cur)
		if k <= 0 {
			return 0
		}
		if q.outstanding.CompareAndSwap(cur, cur+k) {
			return int(k)
		}
	}
}

func openContext(t *Transport, id int, name string) (_ *hcaContext, err error) {
	cfg := t.cfg
	dev, err := t.deps.Provider.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open hca %s: %w", name, err)
	}
	c := &hcaContext{
		t: t, id: id, name: name, dev: dev, port: uint8(cfg.Port),
		byQPN:   map[uint32]*endpoint{},
		retired: map[*endpoint]struct{}{},
		blocked: map[*endpoint]struct{}{},
	}
	defer func() {
		if err != nil {
			c.destroy()
		}
	}()
	if c.attr, err = dev.Query(); err != nil {
		return nil, fmt.Errorf("query hca %s: %w", name, err)
	}
	pa, err := dev.QueryPort(c.port)
	if err != nil {
		return nil, fmt.Errorf("query hca %s port %d: %w", name, c.port, err)
	}
	if pa.State != verbs.PortActive {
		return nil, fmt.Errorf("hca %s port %d is %s, not ACTIVE", name, c.port, pa.State)
	}
	c.portUp.Store(true)
	c.linkIB = pa.LinkLayer == verbs.LinkInfiniBand
	mtu, _ := verbs.MTUFromBytes(cfg.MTU)
	c.pathMTU = min(mtu, pa.ActiveMTU)
	c.lid = pa.LID
	if c.gidIndex, c.gid, err = c.chooseGID(pa); err != nil {
		return nil, err
	}

	// Per-device limits; the Config is never changed (Mooncake R7, R8).
	a := c.attr
	c.maxWR = clampPos(cfg.MaxWR, a.MaxQPWR)
	c.maxSGE = clampPos(cfg.MaxSGE, a.MaxSGE)
	c.maxInline = cfg.MaxInline
	c.maxCQE = clampPos(cfg.MaxCQE, a.MaxCQE)
	c.rdAtom = uint8(clampPos(16, a.MaxQPRdAtom))
	c.initRdAtom = uint8(clampPos(16, a.MaxQPInitRdAtom))
	c.maxMR = cfg.MaxMRSize
	if a.MaxMRSize > 0 && a.MaxMRSize < c.maxMR {
		c.maxMR = a.MaxMRSize
	}

	if c.pd, err = dev.AllocPD(); err != nil {
		return nil, fmt.Errorf("alloc pd on %s: %w", name, err)
	}
	for range cfg.NumCompChannelsPerCtx {
		ch, err := dev.CreateCompChannel()
		if err != nil {
			return nil, fmt.Errorf("create completion channel on %s: %w", name, err)
		}
		c.chans = append(c.chans, ch)
	}
	vectors := max(a.NumCompVectors, 1)
	for i := range cfg.NumCQPerCtx {
		chIdx := i % len(c.chans)
		cq, err := dev.CreateCQ(c.maxCQE, c.chans[chIdx], i%vectors)
		if err != nil {
			return nil, fmt.Errorf("create cq on %s: %w", name, err)
		}
		c.cqs = append(c.cqs, &cqState{cq: cq, ch: chIdx, capacity: int64(c.maxCQE)})
	}
	c.store = newEPStore(cfg.EndpointStore, cfg.MaxEPPerCtx)
	return c, nil
}

// clampPos is min(want, limit), ignoring a limit that is not positive.
func clampPos(want, limit int) int {
	if limit > 0 && limit < want {
		return limit
	}
	return want
}

// chooseGID applies Mooncake's rule: a configured index is used as is (a
// RoCE GID must have a netdev); otherwise the first IPv4-mapped RoCE v2 or
// IB GID with a netdev wins, else the first such GID without one.
func (c *hcaContext) chooseGID(pa verbs.PortAttr) (int, verbs.GID, error) {
	if idx := c.t.cfg.GIDIndex; idx >= 0 {
		e, err := c.dev.QueryGID(c.port, idx)
		if err != nil {
			return 0, verbs.GID{}, fmt.Errorf("query gid %d of %s: %w", idx, c.name, err)
		}
		if e.GID.IsZero() {
			return 0, verbs.GID{}, fmt.Errorf("gid %d of %s is null", idx, c.name)
		}
		if !c.linkIB && e.NetdevIfindex == 0 {
			return 0, verbs.GID{}, fmt.Errorf("gid %d of %s has no network device", idx, c.name)
		}
		return idx, e.GID, nil
	}
	fallback := -1
	var fallbackGID verbs.GID
	for i := 0; i < pa.GIDTblLen; i++ {
		e, err := c.dev.QueryGID(c.port, i)
		if err != nil || e.GID.IsZero() {
			continue
		}
		if !(e.Type == verbs.GIDTypeIB || (e.Type == verbs.GIDTypeRoCEv2 && e.GID.IPv4Mapped())) {
			continue
		}
		if e.NetdevIfindex != 0 || e.Type == verbs.GIDTypeIB {
			return i, e.GID, nil
		}
		if fallback < 0 {
			fallback, fallbackGID = i, e.GID
		}
	}
	if fallback >= 0 {
		return fallback, fallbackGID, nil
	}
	return 0, verbs.GID{}, fmt.Errorf("no usable gid on %s port %d (want an IB or IPv4-mapped RoCE v2 gid)", c.name, c.port)
}

// address is the HCA's current LID and GID.
func (c *hcaContext) address() (uint16, verbs.GID) {
	c.addrMu.Lock()
	defer c.addrMu.Unlock()
	return c.lid, c.gid
}

// active reports whether new work may use this HCA.
func (c *hcaContext) active() bool {
	return !c.fatal.Load() && c.portUp.Load() && time.Now().UnixNano() >= c.pausedUntil.Load()
}

// start launches the pollers and the async event loop.
func (c *hcaContext) start() {
	for i, ch := range c.chans {
		var mine []*cqState
		for _, q := range c.cqs {
			if q.ch == i {
				mine = append(mine, q)
			}
		}
		c.wg.Add(1)
		go c.pollLoop(ch, mine)
	}
	c.wg.Add(1)
	go c.asyncLoop()
}

// pollLoop drains its CQs, then arms them and sleeps on the completion
// channel until the next completion (no spinning while idle).
func (c *hcaContext) pollLoop(ch verbs.CompChannel, cqs []*cqState) {
	defer c.wg.Done()
	defer c.recoverLoop("poller")
	wcs := make([]verbs.WC, pollBatch)
	ctx := c.t.pollCtx
	drain := func() int {
		total := 0
		for _, q := range cqs {
			for {
				n := c.poll(q, wcs)
				total += n
				if n < len(wcs) {
					break
				}
			}
		}
		return total
	}
	for {
		if drain() > 0 {
			continue
		}
		for _, q := range cqs {
			if err := q.cq.ReqNotify(); err != nil {
				c.t.dlog.Warn("arm cq", zap.String("hca", c.name), zap.Error(err))
			}
		}
		// A completion that arrived before arming raised no event.
		if drain() > 0 {
			continue
		}
		if _, err := ch.Wait(ctx); err != nil {
			if ctx.Err() == nil && !errors.Is(err, verbs.ErrClosed) {
				c.t.log.Error("completion channel failed; hca out of service", zap.String("hca", c.name), zap.Error(err))
				c.fatal.Store(true)
			}
			return
		}
	}
}

// poll reaps one batch of completions from q.
func (c *hcaContext) poll(q *cqState, wcs []verbs.WC) int {
	n, err := q.cq.Poll(wcs)
	if err != nil {
		if !c.fatal.Swap(true) {
			c.t.log.Error("poll cq failed; hca out of service", zap.String("hca", c.name), zap.Error(err))
		}
		return 0
	}
	if n == 0 {
		return 0
	}
	var touched []*endpoint
	for _, wc := range wcs[:n] {
		s := c.slab.Take(wc.WRID)
		if s == nil {
			// A completion for a slot that is free or reused: never act on it.
			c.t.dlog.Warn("completion for an unknown work request", zap.String("hca", c.name), zap.Uint64("wr_id", wc.WRID))
			continue
		}
		ep, qp := s.ep, s.qp
		qp.depth.Add(-1)
		q.outstanding.Add(-1)
		c.t.life.Completed(1)
		s.ep, s.qp = nil, nil
		if wc.Status == verbs.WCSuccess {
			c.failStreak.Store(0)
			s.finish(nil)
		} else {
			c.onFailure(ep, s, wc.Status)
		}
		if ep.inflight.Add(-1) == 0 && ep.mode.Load() != modeLive {
			ep.maybeDestroy()
		}
		if len(touched) == 0 || touched[len(touched)-1] != ep {
			touched = append(touched, ep)
		}
	}
	for _, ep := range touched {
		if ep.mode.Load() == modeLive {
			ep.post()
		}
	}
	c.unblock()
	return n
}

// onFailure handles a failed completion: the endpoint leaves service and
// the slice is retried elsewhere or fails.
func (c *hcaContext) onFailure(ep *endpoint, s *slice, st verbs.WCStatus) {
	switch ep.mode.Load() {
	case modeClosed:
		s.finish(ep.causeErr())
		return
	}
	if st != verbs.WCWRFlushErr {
		c.t.dlog.Warn("rdma work request failed", zap.String("hca", c.name), zap.String("peer", ep.peerPath),
			zap.Stringer("op", s.op), zap.Uint64("remote", s.remote), zap.Uint32("length", s.length), zap.Error(st))
		if c.failStreak.Add(1) >= int64(c.t.cfg.ContextFailureThreshold) {
			c.pause()
		}
	} else {
		c.t.log.Debug("rdma work request flushed", zap.String("hca", c.name), zap.String("peer", ep.peerPath))
	}
	ep.retire(modeFailed, fmt.Errorf("completion on %s: %w", ep.peerPath, st))
	c.t.retry([]*slice{s}, st)
}

// pause takes the HCA out of service for ContextRecovery after too many
// consecutive failures.
func (c *hcaContext) pause() {
	c.failStreak.Store(0)
	c.pausedUntil.Store(time.Now().Add(c.t.cfg.ContextRecovery).UnixNano())
	c.t.log.Warn("hca out of service after consecutive failures", zap.String("hca", c.name),
		zap.Duration("for", c.t.cfg.ContextRecovery))
}

// block remembers an endpoint that has work queued but no CQ room.
func (c *hcaContext) block(ep *endpoint) {
	c.blockedMu.Lock()
	c.blocked[ep] = struct{}{}
	c.blockedMu.Unlock()
}

// unblock retries the endpoints that waited for CQ room.
func (c *hcaContext) unblock() {
	c.blockedMu.Lock()
	if len(c.blocked) == 0 {
		c.blockedMu.Unlock()
		return
	}
	eps := make([]*endpoint, 0, len(c.blocked))
	for ep := range c.blocked {
		eps = append(eps, ep)
	}
	clear(c.blocked)
	c.blockedMu.Unlock()
	for _, ep := range eps {
		ep.post()
	}
}

// nextCQState picks the CQ for a new QP, round robin.
func (c *hcaContext) nextCQState() *cqState {
	return c.cqs[int(c.nextCQ.Add(1)-1)%len(c.cqs)]
}

// asyncLoop handles every asynchronous event of the device.
func (c *hcaContext) asyncLoop() {
	defer c.wg.Done()
	defer c.recoverLoop("async events")
	for {
		ev, err := c.dev.AsyncEvent(c.t.pollCtx)
		if err != nil {
			if c.t.pollCtx.Err() == nil && !errors.Is(err, verbs.ErrClosed) {
				c.t.log.Error("async event channel failed", zap.String("hca", c.name), zap.Error(err))
			}
			return
		}
		c.onEvent(ev)
	}
}

func (c *hcaContext) onEvent(ev verbs.AsyncEvent) {
	log := c.t.log.With(zap.String("hca", c.name), zap.Stringer("event", ev.Type))
	switch ev.Type {
	case verbs.EventPortErr:
		if ev.Port == int(c.port) {
			log.Warn("rdma port down")
			c.portUp.Store(false)
		}
	case verbs.EventPortActive:
		if ev.Port == int(c.port) {
			log.Info("rdma port active")
			c.failStreak.Store(0)
			c.pausedUntil.Store(0)
			c.portUp.Store(true)
		}
	case verbs.EventQPFatal, verbs.EventQPReqErr, verbs.EventQPAccessErr:
		c.qpMu.Lock()
		ep := c.byQPN[ev.QPNum]
		c.qpMu.Unlock()
		log.Warn("queue pair failed", zap.Uint32("qpn", ev.QPNum))
		if ep != nil {
			ep.retire(modeFailed, fmt.Errorf("qp %d: %s", ev.QPNum, ev.Type))
		}
	case verbs.EventDeviceFatal, verbs.EventCQErr, verbs.EventWQFatal:
		log.Error("hca failed; out of service")
		c.fatal.Store(true)
		c.retireAll(fmt.Errorf("hca %s: %s", c.name, ev.Type))
	case verbs.EventLIDChange, verbs.EventGIDChange, verbs.EventPKeyChange, verbs.EventClientRereg:
		log.Warn("port addressing changed; reconnecting every endpoint")
		c.refreshAddress()
		c.retireAll(fmt.Errorf("hca %s: %s", c.name, ev.Type))
	default:
		log.Debug("rdma async event")
	}
}

// refreshAddress re-reads the LID and GID after an addressing event.
func (c *hcaContext) refreshAddress() {
	pa, err := c.dev.QueryPort(c.port)
	if err != nil {
		c.t.log.Warn("re-query port", zap.String("hca", c.name), zap.Error(err))
		return
	}
	e, err := c.dev.QueryGID(c.port, c.gidIndex)
	if err != nil {
		c.t.log.Warn("re-query gid", zap.String("hca", c.name), zap.Error(err))
		return
	}
	c.addrMu.Lock()
	c.lid, c.gid = pa.LID, e.GID
	c.addrMu.Unlock()
}

// retireAll takes every endpoint of the HCA out of service.
func (c *hcaContext) retireAll(cause error) {
	for _, ep := range c.store.removeIf(func(*endpoint) bool { return true }) {
		ep.retire(modeFailed, cause)
	}
}

func (c *hcaContext) recoverLoop(what string) {
	if r := recover(); r != nil {
		c.t.log.Error("rdma goroutine panicked; hca out of service", zap.String("hca", c.name),
			zap.String("goroutine", what), zap.Any("panic", r), zap.Stack("stack"))
		c.fatal.Store(true)
	}
}

// destroyEndpoints destroys every endpoint left after the drain.
func (c *hcaContext) destroyEndpoints() error {
	c.retiredMu.Lock()
	eps := make([]*endpoint, 0, len(c.retired))
	for ep := range c.retired {
		eps = append(eps, ep)
	}
	c.retiredMu.Unlock()
	var errs []error
	for _, ep := range eps {
		errs = append(errs, ep.destroy())
	}
	return errors.Join(errs...)
}

// destroy releases the device's objects, children first.
func (c *hcaContext) destroy() error {
	var errs []error
	for _, q := range c.cqs {
		errs = append(errs, q.cq.Close())
	}
	c.cqs = nil
	for _, ch := range c.chans {
		errs = append(errs, ch.Close())
	}
	c.chans = nil
	if c.pd != nil {
		errs = append(errs, c.pd.Close())
		c.pd = nil
	}
	if c.dev != nil {
		errs = append(errs, c.dev.Close())
		c.dev = nil
	}
	return errors.Join(errs...)
}
