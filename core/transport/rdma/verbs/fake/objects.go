package fake

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

var (
	_ verbs.Provider    = (*provider)(nil)
	_ verbs.Device      = (*device)(nil)
	_ verbs.PD          = (*pd)(nil)
	_ verbs.MR          = (*mr)(nil)
	_ verbs.QP          = (*qp)(nil)
	_ verbs.CQ          = (*cq)(nil)
	_ verbs.CompChannel = (*channel)(nil)
)

type provider struct {
	fab  *Fabric
	host string
}

func (p *provider) Devices() ([]string, error) {
	p.fab.mu.Lock()
	defer p.fab.mu.Unlock()
	var out []string
	for _, n := range p.fab.nics {
		if n.host == p.host && !n.removed {
			out = append(out, n.spec.Name)
		}
	}
	if len(out) == 0 {
		return nil, verbs.ErrNoDevices
	}
	slices.Sort(out)
	return out, nil
}

func (p *provider) Open(name string) (verbs.Device, error) {
	p.fab.mu.Lock()
	defer p.fab.mu.Unlock()
	for _, n := range p.fab.nics {
		if n.host == p.host && n.spec.Name == name && !n.removed {
			d := &device{nic: n, wake: make(chan struct{}, 1), closed: make(chan struct{})}
			n.devices = append(n.devices, d)
			p.fab.track(d)
			return d, nil
		}
	}
	return nil, fmt.Errorf("open %q on fake host %q: %w", name, p.host, verbs.ErrNoSuchDevice)
}

func (p *provider) Close() error { return nil }

// device is an opened NIC.
type device struct {
	nic      *NIC
	children int // +checklocks:nic.fab.mu
	isClosed bool

	evMu   sync.Mutex
	events []verbs.AsyncEvent // +checklocks:evMu
	wake   chan struct{}
	closed chan struct{}
}

func (d *device) fab() *Fabric { return d.nic.fab }

func (d *device) Name() string { return d.nic.spec.Name }

func (d *device) Query() (verbs.DeviceAttr, error) {
	l := d.nic.spec.Limits
	return verbs.DeviceAttr{
		MaxMRSize: l.MaxMRSize, MaxQP: l.MaxQP, MaxQPWR: l.MaxQPWR, MaxSGE: l.MaxSGE,
		MaxCQ: 1 << 16, MaxCQE: l.MaxCQE, MaxMR: 1 << 20, MaxQPRdAtom: l.MaxQPRdAtom,
		MaxQPInitRdAtom: l.MaxQPInitRdAtom, PhysPortCnt: 1, NumCompVectors: 4,
	}, nil
}

func (d *device) QueryPort(port uint8) (verbs.PortAttr, error) {
	f := d.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	if port != 1 {
		return verbs.PortAttr{}, errno("query port", syscall.EINVAL)
	}
	a := verbs.PortAttr{State: d.nic.port, MaxMTU: verbs.MTU4096, ActiveMTU: d.nic.spec.ActiveMTU,
		GIDTblLen: len(d.nic.gids), LID: d.nic.lid, LinkLayer: verbs.LinkEthernet}
	if d.nic.spec.InfiniBand {
		a.LinkLayer = verbs.LinkInfiniBand
	}
	return a, nil
}

func (d *device) QueryGID(port uint8, index int) (verbs.GIDEntry, error) {
	f := d.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	if port != 1 || index < 0 || index >= len(d.nic.gids) {
		return verbs.GIDEntry{}, errno("query gid", syscall.EINVAL)
	}
	return d.nic.gids[index], nil
}

func (d *device) AllocPD() (verbs.PD, error) {
	f := d.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	d.children++
	p := &pd{dev: d}
	f.track(p)
	return p, nil
}

func (d *device) CreateCompChannel() (verbs.CompChannel, error) {
	f := d.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	d.children++
	c := &channel{dev: d, wake: make(chan struct{}, 1), closed: make(chan struct{})}
	f.track(c)
	return c, nil
}

func (d *device) CreateCQ(cqe int, ch verbs.CompChannel, vector int) (verbs.CQ, error) {
	f := d.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	if cqe < 1 || cqe > d.nic.spec.Limits.MaxCQE || vector < 0 || vector >= 4 {
		return nil, errno("create cq", syscall.EINVAL)
	}
	var c *channel
	if ch != nil {
		var ok bool
		if c, ok = ch.(*channel); !ok || c.dev != d {
			return nil, errno("create cq: channel of another device", syscall.EINVAL)
		}
		c.users.Add(1)
	}
	d.children++
	q := &cq{dev: d, cqe: cqe, ch: c}
	f.track(q)
	return q, nil
}

func (d *device) push(ev verbs.AsyncEvent) {
	d.evMu.Lock()
	d.events = append(d.events, ev)
	d.evMu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *device) AsyncEvent(ctx context.Context) (verbs.AsyncEvent, error) {
	for {
		d.evMu.Lock()
		if len(d.events) > 0 {
			ev := d.events[0]
			d.events = d.events[1:]
			d.evMu.Unlock()
			return ev, nil
		}
		d.evMu.Unlock()
		select {
		case <-d.wake:
		case <-d.closed:
			return verbs.AsyncEvent{}, verbs.ErrClosed
		case <-ctx.Done():
			return verbs.AsyncEvent{}, ctx.Err()
		}
	}
}

func (d *device) Close() error {
	f := d.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.isClosed {
		return nil
	}
	if d.children > 0 {
		f.violate("device %s closed with %d live children", d.nic.spec.Name, d.children)
	}
	d.isClosed = true
	close(d.closed)
	d.nic.devices = slices.DeleteFunc(d.nic.devices, func(x *device) bool { return x == d })
	f.untrack(d)
	return nil
}

type pd struct {
	dev      *device
	children int // +checklocks:dev.nic.fab.mu
	closed   bool
}

func (p *pd) RegMR(addr uintptr, length uint64, access verbs.Access) (verbs.MR, error) {
	return p.reg(uint64(addr), length, access, nil)
}

// RegDmabufMR maps the dma-buf's pages [offset, offset+length) (a real
// NIC reaches them by DMA): transfers on the MR read and write them there,
// whatever is mapped at iova in this process.
func (p *pd) RegDmabufMR(offset, length, iova uint64, fd int, access verbs.Access) (verbs.MR, error) {
	if fd < 0 {
		return nil, errno("reg dmabuf mr", syscall.EBADF)
	}
	page := uint64(os.Getpagesize())
	start := offset &^ (page - 1)
	if length == 0 || offset+length < offset || offset-start+length > math.MaxInt {
		return nil, errno("reg dmabuf mr", syscall.EINVAL)
	}
	mapping, err := syscall.Mmap(fd, int64(start), int(offset-start+length), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("fake reg dmabuf mr: map fd %d at %d: %w", fd, offset, err)
	}
	m, err := p.reg(iova, length, access, mapping)
	if err != nil {
		_ = syscall.Munmap(mapping)
		return nil, err
	}
	m.pages = mapping[offset-start:]
	return m, nil
}

func (p *pd) reg(addr, length uint64, access verbs.Access, mapping []byte) (*mr, error) {
	f := p.dev.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	n := p.dev.nic
	if p.closed || addr == 0 || length == 0 || length > n.spec.Limits.MaxMRSize || addr+length < addr {
		return nil, errno("reg mr", syscall.EINVAL)
	}
	m := &mr{pd: p, addr: addr, length: length, access: access, lkey: f.key(), mapping: mapping}
	m.rkey = m.lkey ^ 0x00a5_0000
	n.lkeys[m.lkey] = m
	n.rkeys[m.rkey] = m
	if mapping != nil {
		n.dmabufs++
	}
	p.children++
	f.track(m)
	return m, nil
}

func (p *pd) CreateQP(init verbs.QPInit) (verbs.QP, error) {
	f := p.dev.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	n := p.dev.nic
	scq, ok1 := init.SendCQ.(*cq)
	rcq, ok2 := init.RecvCQ.(*cq)
	if p.closed || !ok1 || !ok2 || scq.dev != p.dev || rcq.dev != p.dev ||
		init.MaxSendWR == 0 || int(init.MaxSendWR) > n.spec.Limits.MaxQPWR ||
		int(init.MaxRecvWR) > n.spec.Limits.MaxQPWR || int(init.MaxSendSGE) > n.spec.Limits.MaxSGE {
		return nil, errno("create qp", syscall.EINVAL)
	}
	n.nextQPN++
	q := &qp{pd: p, nic: n, num: n.nextQPN, sendCQ: scq, recvCQ: rcq, maxSend: int64(init.MaxSendWR)}
	n.qps[q.num] = q
	scq.users++
	rcq.users++
	p.children++
	f.track(q)
	return q, nil
}

func (p *pd) Close() error {
	f := p.dev.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	if p.closed {
		return nil
	}
	if p.children > 0 {
		return errno(fmt.Sprintf("dealloc pd with %d live children", p.children), syscall.EBUSY)
	}
	p.closed = true
	p.dev.children--
	f.untrack(p)
	return nil
}

type mr struct {
	pd           *pd
	addr, length uint64
	access       verbs.Access
	lkey, rkey   uint32
	closed       bool
	// mapping is a dma-buf MR's mapping of the dma-buf, and pages the MR's
	// part of it, from addr on; nil for memory registered by address.
	mapping, pages []byte
}

// bytes is where the NIC reads and writes [addr, addr+n) of the MR, which
// covers it: the process's memory at addr, or a dma-buf's pages.
func (m *mr) bytes(addr uint64, n uint32) []byte {
	if m.pages != nil {
		off := addr - m.addr
		return m.pages[off : off+uint64(n)]
	}
	return bytesAt(addr, n)
}

func (m *mr) LKey() uint32 { return m.lkey }
func (m *mr) RKey() uint32 { return m.rkey }

func (m *mr) covers(addr, length uint64, need verbs.Access) bool {
	return addr >= m.addr && addr+length >= addr && addr+length <= m.addr+m.length && m.access&need == need
}

func (m *mr) Close() error {
	f := m.pd.dev.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	n := m.pd.dev.nic
	delete(n.lkeys, m.lkey)
	delete(n.rkeys, m.rkey)
	m.pd.children--
	f.untrack(m)
	if m.mapping != nil {
		return syscall.Munmap(m.mapping)
	}
	return nil
}

// qp is a fake RC queue pair; its fields are guarded by the fabric mutex
// except outstanding.
type qp struct {
	pd             *pd
	nic            *NIC
	num            uint32
	sendCQ, recvCQ *cq
	maxSend        int64
	state          verbs.QPState
	attr           verbs.QPAttr
	history        []Transition
	destroyed      bool
	posted         int // +checklocks:nic.fab.mu
	outstanding    atomic.Int64
}

func (q *qp) Num() uint32 { return q.num }

// remote is the NIC this QP's address vector points at.
// +checklocks:q.nic.fab.mu
func (q *qp) remote() *NIC {
	if q.attr.AH.IsGlobal {
		return q.nic.fab.nicByGID(q.attr.AH.DGID)
	}
	return q.nic.fab.nicByLID(q.attr.AH.DLID)
}

// Required masks per transition, as the IB spec (and mlx5) demand them.
const (
	maskInit = verbs.MaskState | verbs.MaskPKeyIndex | verbs.MaskPort | verbs.MaskAccessFlags
	maskRTR  = verbs.MaskState | verbs.MaskAV | verbs.MaskPathMTU | verbs.MaskDestQPN | verbs.MaskRQPSN |
		verbs.MaskMaxDestRdAtomic | verbs.MaskMinRNRTimer
	maskRTS = verbs.MaskState | verbs.MaskTimeout | verbs.MaskRetryCnt | verbs.MaskRNRRetry |
		verbs.MaskSQPSN | verbs.MaskMaxQPRdAtomic
)

func (q *qp) Modify(a *verbs.QPAttr, mask verbs.QPAttrMask) error {
	f := q.nic.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	if q.destroyed {
		return errno("modify qp", syscall.EINVAL)
	}
	if mask&verbs.MaskState == 0 {
		return errno("modify qp without IBV_QP_STATE", syscall.EINVAL)
	}
	from, to := q.state, a.State
	bad := func(why string) error {
		return errno(fmt.Sprintf("modify qp %d %s->%s: %s", q.num, from, to, why), syscall.EINVAL)
	}
	next := q.attr
	switch {
	case to == verbs.QPSReset || to == verbs.QPSErr:
		next.State = to
	case from == verbs.QPSReset && to == verbs.QPSInit:
		if mask&maskInit != maskInit {
			return bad("missing attribute mask bits")
		}
		if a.PortNum != 1 || a.PKeyIndex != 0 {
			return bad("bad port or pkey index")
		}
		next.PortNum, next.PKeyIndex, next.AccessFlags = a.PortNum, a.PKeyIndex, a.AccessFlags
	case from == verbs.QPSInit && to == verbs.QPSRTR:
		if mask&maskRTR != maskRTR {
			return bad("missing attribute mask bits")
		}
		if a.PathMTU < verbs.MTU256 || a.PathMTU > q.nic.spec.ActiveMTU {
			return bad(fmt.Sprintf("path mtu %d above the port's %d", a.PathMTU.Bytes(), q.nic.spec.ActiveMTU.Bytes()))
		}
		if int(a.MaxDestRdAtomic) > q.nic.spec.Limits.MaxQPRdAtom {
			return bad("max_dest_rd_atomic above the device limit")
		}
		if a.AH.PortNum != 1 {
			return bad("address vector port")
		}
		var dst *NIC
		if a.AH.IsGlobal {
			if int(a.AH.SGIDIndex) >= len(q.nic.gids) {
				return bad("sgid index out of range")
			}
			dst = f.nicByGID(a.AH.DGID)
		} else {
			if !q.nic.spec.InfiniBand {
				return bad("RoCE needs a GRH (is_global)")
			}
			dst = f.nicByLID(a.AH.DLID)
		}
		if dst == nil {
			return bad("destination gid/lid not on the fabric")
		}
		if _, ok := dst.qps[a.DestQPN]; !ok {
			return bad(fmt.Sprintf("destination qpn %d does not exist", a.DestQPN))
		}
		next.PathMTU, next.AH, next.DestQPN, next.RQPSN = a.PathMTU, a.AH, a.DestQPN, a.RQPSN
		next.MaxDestRdAtomic, next.MinRNRTimer = a.MaxDestRdAtomic, a.MinRNRTimer
	case from == verbs.QPSRTR && to == verbs.QPSRTS:
		if mask&maskRTS != maskRTS {
			return bad("missing attribute mask bits")
		}
		if int(a.MaxRdAtomic) > q.nic.spec.Limits.MaxQPInitRdAtom {
			return bad("max_rd_atomic above the device limit")
		}
		next.Timeout, next.RetryCnt, next.RNRRetry = a.Timeout, a.RetryCnt, a.RNRRetry
		next.SQPSN, next.MaxRdAtomic = a.SQPSN, a.MaxRdAtomic
	default:
		return bad("transition not allowed")
	}
	next.State = to
	q.state = to
	q.attr = next
	q.history = append(q.history, Transition{From: from, To: to, Mask: mask, Attr: *a})
	return nil
}

func (q *qp) PostSend(wrs []verbs.SendWR) (int, error) {
	f := q.nic.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	if q.destroyed {
		return 0, errno("post send", syscall.EINVAL)
	}
	if q.state != verbs.QPSRTS && q.state != verbs.QPSErr && q.state != verbs.QPSSQE {
		return 0, errno(fmt.Sprintf("post send on qp %d in %s", q.num, q.state), syscall.EINVAL)
	}
	n := q.nic
	for i, w := range wrs {
		if n.postErr == 0 {
			n.postErr = -1
			return i, errno("post send (injected)", syscall.ENOMEM)
		}
		if q.outstanding.Load() >= q.maxSend {
			return i, errno("post send: send queue full", syscall.ENOMEM)
		}
		if w.Opcode != verbs.WRRDMAWrite && w.Opcode != verbs.WRRDMARead {
			return i, errno("post send: opcode", syscall.EINVAL)
		}
		if n.postErr > 0 {
			n.postErr--
		}
		q.outstanding.Add(1)
		q.posted++
		n.posted++
		f.enqueue(&request{SendWR: w, qp: q})
	}
	return len(wrs), nil
}

// complete delivers r's completion to the send CQ.
// +checklocks:q.nic.fab.mu
func (q *qp) complete(r *request, st verbs.WCStatus) {
	op := uint32(1) // IBV_WC_RDMA_WRITE
	if r.Opcode == verbs.WRRDMARead {
		op = 2
	}
	wc := verbs.WC{WRID: r.WRID, Status: st, Opcode: op, QPNum: q.num}
	if st == verbs.WCSuccess {
		wc.ByteLen = r.Length
	}
	q.nic.statuses[st]++
	q.sendCQ.push(wc, q)
}

func (q *qp) Close() error {
	f := q.nic.fab
	f.mu.Lock()
	defer f.mu.Unlock()
	if q.destroyed {
		return nil
	}
	if n := q.outstanding.Load(); n > 0 {
		f.violate("qp %d on %s/%s destroyed with %d work requests in flight", q.num, q.nic.host, q.nic.spec.Name, n)
	}
	q.destroyed = true
	delete(q.nic.qps, q.num)
	q.sendCQ.users--
	q.recvCQ.users--
	q.pd.children--
	f.untrack(q)
	return nil
}

type cq struct {
	dev   *device
	cqe   int
	ch    *channel
	users int // QPs using the CQ; +checklocks:dev.nic.fab.mu

	mu      sync.Mutex
	entries []entry // +checklocks:mu
	armed   bool    // +checklocks:mu
	overrun bool    // +checklocks:mu
	closed  bool    // +checklocks:mu
}

type entry struct {
	wc verbs.WC
	qp *qp
}

// push adds a completion; a full CQ overruns, raising CQ_ERR.
func (c *cq) push(wc verbs.WC, q *qp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if len(c.entries) >= c.cqe {
		if !c.overrun {
			c.overrun = true
			c.dev.push(verbs.AsyncEvent{Type: verbs.EventCQErr})
		}
		return
	}
	c.entries = append(c.entries, entry{wc: wc, qp: q})
	if c.armed && c.ch != nil {
		c.armed = false
		c.ch.notify(c)
	}
}

func (c *cq) Poll(wcs []verbs.WC) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, errno("poll cq", syscall.EINVAL)
	}
	if c.overrun {
		return 0, errno("poll cq: overrun", syscall.EIO)
	}
	n := min(len(wcs), len(c.entries))
	for i := range n {
		e := c.entries[i]
		wcs[i] = e.wc
		e.qp.outstanding.Add(-1)
	}
	c.entries = c.entries[n:]
	return n, nil
}

func (c *cq) ReqNotify() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errno("req notify cq", syscall.EINVAL)
	}
	c.armed = true
	return nil
}

func (c *cq) Close() error {
	f := c.dev.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if c.users > 0 {
		return errno(fmt.Sprintf("destroy cq used by %d qps", c.users), syscall.EBUSY)
	}
	c.closed = true
	if c.ch != nil {
		c.ch.users.Add(-1)
	}
	c.dev.children--
	f.untrack(c)
	return nil
}

type channel struct {
	dev   *device
	users atomic.Int32 // CQs attached

	mu      sync.Mutex
	pending []*cq // +checklocks:mu
	wake    chan struct{}
	closed  chan struct{}
	done    bool // +checklocks:mu
}

func (c *channel) notify(q *cq) {
	c.mu.Lock()
	c.pending = append(c.pending, q)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *channel) Wait(ctx context.Context) (verbs.CQ, error) {
	for {
		c.mu.Lock()
		if len(c.pending) > 0 {
			q := c.pending[0]
			c.pending = c.pending[1:]
			c.mu.Unlock()
			return q, nil
		}
		c.mu.Unlock()
		select {
		case <-c.wake:
		case <-c.closed:
			return nil, verbs.ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *channel) Close() error {
	f := c.dev.fab()
	f.mu.Lock()
	defer f.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	if n := c.users.Load(); n > 0 {
		return errno(fmt.Sprintf("destroy comp channel used by %d cqs", n), syscall.EBUSY)
	}
	c.done = true
	close(c.closed)
	c.dev.children--
	f.untrack(c)
	return nil
}
