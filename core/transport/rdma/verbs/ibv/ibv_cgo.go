//go:build cgo && linux

package ibv

/*
#cgo CFLAGS: -O2 -Wall
#include "mcv_wrap.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// Library is the libibverbs soname Open loads.
const Library = "libibverbs.so.1"

// symbols are loaded into struct mcv_fns in this order.
var symbols = []struct {
	name     string
	optional bool
}{
	{"ibv_get_device_list", false}, {"ibv_free_device_list", false}, {"ibv_get_device_name", false},
	{"ibv_open_device", false}, {"ibv_close_device", false}, {"ibv_query_device", false},
	{"ibv_query_port", false}, {"ibv_query_gid", false}, {"ibv_alloc_pd", false},
	{"ibv_dealloc_pd", false}, {"ibv_reg_mr", false}, {"ibv_dereg_mr", false},
	{"ibv_create_comp_channel", false}, {"ibv_destroy_comp_channel", false}, {"ibv_create_cq", false},
	{"ibv_destroy_cq", false}, {"ibv_get_cq_event", false}, {"ibv_ack_cq_events", false},
	{"ibv_create_qp", false}, {"ibv_modify_qp", false}, {"ibv_destroy_qp", false},
	{"ibv_get_async_event", false}, {"ibv_ack_async_event", false}, {"ibv_fork_init", false},
	{"_ibv_query_gid_ex", true}, {"ibv_reg_mr_iova2", true}, {"ibv_reg_dmabuf_mr", true},
}

// Indices of the optional functions in symbols.
const (
	fnQueryGIDEx  = 24
	fnRegMRIova2  = 25
	fnRegDmabufMR = 26
)

// The flat arrays cross the boundary as is: their layouts must agree.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(verbs.SendWR{})-C.sizeof_struct_mcv_flat_wr]
	_ = [1]struct{}{}[C.sizeof_struct_mcv_flat_wr-unsafe.Sizeof(verbs.SendWR{})]
	_ = [1]struct{}{}[unsafe.Sizeof(verbs.WC{})-C.sizeof_struct_mcv_flat_wc]
	_ = [1]struct{}{}[C.sizeof_struct_mcv_flat_wc-unsafe.Sizeof(verbs.WC{})]
)

var (
	loadMu   sync.Mutex
	loadRefs int           // +checklocks:loadMu
	lib      *dl.Library   // +checklocks:loadMu
	forkErr  syscall.Errno // +checklocks:loadMu; ibv_fork_init's result
	forkOnce sync.Once
)

// Open loads libibverbs (or takes another reference to it) and returns a
// provider over it. An absent library is an error matching
// verbs.ErrUnavailable that names it and keeps dlerror's text; a library
// lacking a required verb matches dl.ErrMissingSymbol.
func Open() (verbs.Provider, error) {
	loadMu.Lock()
	defer loadMu.Unlock()
	if loadRefs == 0 {
		if int(C.mcv_nfns()) != len(symbols) {
			return nil, fmt.Errorf("load %s: internal error: %d symbols for %d slots", Library, len(symbols), int(C.mcv_nfns()))
		}
		l, err := dl.Open(Library)
		if err != nil {
			return nil, fmt.Errorf("load RDMA verbs: %w", err)
		}
		for i, s := range symbols {
			p, err := l.Sym(s.name)
			if err != nil {
				if s.optional {
					C.mcv_set(C.int(i), nil)
					continue
				}
				C.mcv_clear()
				l.Close()
				return nil, fmt.Errorf("load RDMA verbs: %w", err)
			}
			C.mcv_set(C.int(i), p)
		}
		lib = l
		// Registered memory must survive os/exec's fork: once per process,
		// before any registration.
		forkOnce.Do(func() { forkErr = syscall.Errno(C.mcv_fork_init()) })
	}
	loadRefs++
	return &provider{}, nil
}

// ForkInitError is ibv_fork_init's result: nil when it succeeded or
// libibverbs was never loaded.
func ForkInitError() error {
	loadMu.Lock()
	defer loadMu.Unlock()
	if forkErr == 0 {
		return nil
	}
	return forkErr
}

func has(fn int) bool { return C.mcv_has(C.int(fn)) != 0 }

func errnoErr(op string, e C.int) error {
	if e < 0 {
		e = -e
	}
	if e == 0 {
		e = C.int(syscall.EIO)
	}
	return fmt.Errorf("%s: %w", op, syscall.Errno(e))
}

type provider struct {
	once sync.Once
}

func (p *provider) Close() error {
	var err error
	p.once.Do(func() {
		loadMu.Lock()
		defer loadMu.Unlock()
		loadRefs--
		if loadRefs == 0 {
			C.mcv_clear()
			err = lib.Close()
			lib = nil
		}
	})
	return err
}

// deviceList is ibv_get_device_list's result; the caller frees it.
func deviceList() (**C.struct_mcv_device, int, error) {
	var n, e C.int
	l := C.mcv_get_device_list(&n, &e)
	if l == nil {
		switch syscall.Errno(e) {
		case syscall.ENOSYS, syscall.ENODEV, syscall.ENOENT, syscall.ENXIO:
			// A kernel without RDMA support (ENOSYS on Debian 12): none.
			return nil, 0, fmt.Errorf("ibv_get_device_list: %w (%v)", verbs.ErrNoDevices, syscall.Errno(e))
		}
		return nil, 0, errnoErr("ibv_get_device_list", e)
	}
	if n <= 0 {
		C.mcv_free_device_list(l)
		return nil, 0, fmt.Errorf("ibv_get_device_list: %w", verbs.ErrNoDevices)
	}
	return l, int(n), nil
}

func (p *provider) Devices() ([]string, error) {
	l, n, err := deviceList()
	if err != nil {
		return nil, err
	}
	defer C.mcv_free_device_list(l)
	out := make([]string, n)
	for i := range n {
		out[i] = C.GoString(C.mcv_device_name(l, C.int(i)))
	}
	return out, nil
}

func (p *provider) Open(name string) (verbs.Device, error) {
	l, n, err := deviceList()
	if err != nil {
		return nil, err
	}
	defer C.mcv_free_device_list(l)
	for i := range n {
		if C.GoString(C.mcv_device_name(l, C.int(i))) != name {
			continue
		}
		var e C.int
		ctx := C.mcv_open_device(l, C.int(i), &e)
		if ctx == nil {
			return nil, errnoErr("ibv_open_device "+name, e)
		}
		d := &device{name: name, ctx: ctx}
		afd := C.mcv_async_fd(ctx)
		if r := C.mcv_set_nonblock(afd); r != 0 {
			C.mcv_close_device(ctx)
			return nil, errnoErr("async fd of "+name, r)
		}
		if d.async, err = newWaiter(int(afd), name+"-async"); err != nil {
			C.mcv_close_device(ctx)
			return nil, err
		}
		return d, nil
	}
	return nil, fmt.Errorf("open %q: %w", name, verbs.ErrNoSuchDevice)
}

type device struct {
	name  string
	ctx   *C.struct_mcv_context
	async *waiter
	once  sync.Once
}

func (d *device) Name() string { return d.name }

func (d *device) Query() (verbs.DeviceAttr, error) {
	var a C.struct_mcv_device_attr
	if r := C.mcv_query_device(d.ctx, &a); r != 0 {
		return verbs.DeviceAttr{}, errnoErr("ibv_query_device "+d.name, r)
	}
	return verbs.DeviceAttr{
		MaxMRSize: uint64(a.max_mr_size), MaxQP: int(a.max_qp), MaxQPWR: int(a.max_qp_wr), MaxSGE: int(a.max_sge),
		MaxCQ: int(a.max_cq), MaxCQE: int(a.max_cqe), MaxMR: int(a.max_mr), MaxQPRdAtom: int(a.max_qp_rd_atom),
		MaxQPInitRdAtom: int(a.max_qp_init_rd_atom), PhysPortCnt: int(a.phys_port_cnt),
		NumCompVectors: int(C.mcv_num_comp_vectors(d.ctx)),
	}, nil
}

func (d *device) QueryPort(port uint8) (verbs.PortAttr, error) {
	var a C.struct_mcv_port_attr
	if r := C.mcv_query_port(d.ctx, C.uint8_t(port), &a); r != 0 {
		return verbs.PortAttr{}, errnoErr(fmt.Sprintf("ibv_query_port %s:%d", d.name, port), r)
	}
	return verbs.PortAttr{
		State: verbs.PortState(a.state), MaxMTU: verbs.MTU(a.max_mtu), ActiveMTU: verbs.MTU(a.active_mtu),
		GIDTblLen: int(a.gid_tbl_len), LID: uint16(a.lid), LinkLayer: verbs.LinkLayer(a.link_layer),
	}, nil
}

func (d *device) QueryGID(port uint8, index int) (verbs.GIDEntry, error) {
	var e C.struct_mcv_gid_entry
	r := C.mcv_query_gid(d.ctx, C.uint8_t(port), C.int(index), &e)
	if r < 0 {
		return verbs.GIDEntry{}, errnoErr(fmt.Sprintf("query gid %s:%d[%d]", d.name, port, index), r)
	}
	out := verbs.GIDEntry{Index: index}
	copy(out.GID[:], C.GoBytes(unsafe.Pointer(&e.gid), 16))
	if r == 1 {
		out.Type = verbs.GIDType(e.gid_type)
		out.NetdevIfindex = int(e.ndev_ifindex)
		return out, nil
	}
	// An old libibverbs without _ibv_query_gid_ex: sysfs says the rest.
	out.Type, out.NetdevIfindex = sysfsGIDAttrs(d.name, port, index)
	return out, nil
}

// sysfsGIDAttrs reads a GID's type and netdev from sysfs.
func sysfsGIDAttrs(dev string, port uint8, index int) (verbs.GIDType, int) {
	base := filepath.Join("/sys/class/infiniband", dev, "ports", fmt.Sprint(port), "gid_attrs")
	typ := verbs.GIDTypeIB
	if b, err := os.ReadFile(filepath.Join(base, "types", fmt.Sprint(index))); err == nil {
		switch s := strings.TrimSpace(string(b)); {
		case strings.EqualFold(s, "RoCE v2"):
			typ = verbs.GIDTypeRoCEv2
		case strings.Contains(s, "RoCE"):
			typ = verbs.GIDTypeRoCEv1
		}
	}
	ifindex := 0
	if b, err := os.ReadFile(filepath.Join(base, "ndevs", fmt.Sprint(index))); err == nil {
		if iface, err := net.InterfaceByName(strings.TrimSpace(string(b))); err == nil {
			ifindex = iface.Index
		}
	}
	return typ, ifindex
}

func (d *device) AllocPD() (verbs.PD, error) {
	var e C.int
	p := C.mcv_alloc_pd(d.ctx, &e)
	if p == nil {
		return nil, errnoErr("ibv_alloc_pd "+d.name, e)
	}
	return &pd{d: d, pd: p}, nil
}

func (d *device) CreateCompChannel() (verbs.CompChannel, error) {
	var e C.int
	ch := C.mcv_create_comp_channel(d.ctx, &e)
	if ch == nil {
		return nil, errnoErr("ibv_create_comp_channel "+d.name, e)
	}
	if e != 0 {
		C.mcv_destroy_comp_channel(ch)
		return nil, errnoErr("completion channel fd of "+d.name, e)
	}
	w, err := newWaiter(int(C.mcv_channel_fd(ch)), d.name+"-cq-events")
	if err != nil {
		C.mcv_destroy_comp_channel(ch)
		return nil, err
	}
	return &compChannel{d: d, ch: ch, w: w, cqs: map[*C.struct_mcv_cq]*cq{}}, nil
}

func (d *device) CreateCQ(cqe int, ch verbs.CompChannel, vector int) (verbs.CQ, error) {
	var c *compChannel
	var cch *C.struct_mcv_comp_channel
	if ch != nil {
		var ok bool
		if c, ok = ch.(*compChannel); !ok {
			return nil, fmt.Errorf("ibv_create_cq %s: channel of another provider: %w", d.name, syscall.EINVAL)
		}
		cch = c.ch
	}
	var e C.int
	q := C.mcv_create_cq(d.ctx, C.int(cqe), cch, C.int(vector), &e)
	if q == nil {
		return nil, errnoErr("ibv_create_cq "+d.name, e)
	}
	out := &cq{d: d, cq: q, ch: c}
	if c != nil {
		c.mu.Lock()
		c.cqs[q] = out
		c.mu.Unlock()
	}
	return out, nil
}

func (d *device) AsyncEvent(ctx context.Context) (verbs.AsyncEvent, error) {
	var ev verbs.AsyncEvent
	err := d.async.wait(ctx, func() (bool, error) {
		var typ, port C.int
		var qpn C.uint32_t
		r := C.mcv_get_async_event(d.ctx, &typ, &port, &qpn)
		switch syscall.Errno(r) {
		case 0:
			ev = verbs.AsyncEvent{Type: verbs.EventType(typ), Port: int(port), QPNum: uint32(qpn)}
			return true, nil
		case syscall.EAGAIN:
			return false, nil
		}
		return true, errnoErr("ibv_get_async_event "+d.name, r)
	})
	return ev, err
}

func (d *device) Close() error {
	var errs []error
	d.once.Do(func() {
		errs = append(errs, d.async.close())
		if r := C.mcv_close_device(d.ctx); r != 0 {
			errs = append(errs, errnoErr("ibv_close_device "+d.name, r))
		}
	})
	return errors.Join(errs...)
}

type pd struct {
	d    *device
	pd   *C.struct_mcv_pd
	once sync.Once
}

func (p *pd) RegMR(addr uintptr, length uint64, access verbs.Access) (verbs.MR, error) {
	iova2 := access.Optional()
	if iova2 && !has(fnRegMRIova2) {
		return nil, fmt.Errorf("ibv_reg_mr_iova2 (for optional access flags %#x): %w", uint32(access), verbs.ErrNotSupported)
	}
	var e C.int
	m := C.mcv_reg_mr(p.pd, C.uint64_t(addr), C.uint64_t(length), C.uint(access), boolInt(iova2), &e)
	if m == nil {
		return nil, errnoErr(fmt.Sprintf("ibv_reg_mr %s [%#x, +%d)", p.d.name, addr, length), e)
	}
	return newMR(m), nil
}

func (p *pd) RegDmabufMR(offset, length, iova uint64, fd int, access verbs.Access) (verbs.MR, error) {
	if !has(fnRegDmabufMR) {
		return nil, fmt.Errorf("ibv_reg_dmabuf_mr: %w", verbs.ErrNotSupported)
	}
	var e C.int
	m := C.mcv_reg_dmabuf_mr(p.pd, C.uint64_t(offset), C.uint64_t(length), C.uint64_t(iova), C.int(fd), C.int(access), &e)
	if m == nil {
		return nil, errnoErr(fmt.Sprintf("ibv_reg_dmabuf_mr %s fd %d [%#x, +%d)", p.d.name, fd, offset, length), e)
	}
	return newMR(m), nil
}

func boolInt(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func (p *pd) CreateQP(init verbs.QPInit) (verbs.QP, error) {
	scq, ok1 := init.SendCQ.(*cq)
	rcq, ok2 := init.RecvCQ.(*cq)
	if !ok1 || !ok2 || init.MaxSendWR == 0 {
		return nil, fmt.Errorf("ibv_create_qp %s: %w", p.d.name, syscall.EINVAL)
	}
	var e C.int
	q := C.mcv_create_qp(p.pd, scq.cq, rcq.cq, C.uint32_t(init.MaxSendWR), C.uint32_t(init.MaxRecvWR),
		C.uint32_t(init.MaxSendSGE), C.uint32_t(init.MaxRecvSGE), C.uint32_t(init.MaxInline), boolInt(init.SigAll), &e)
	if q == nil {
		return nil, errnoErr("ibv_create_qp "+p.d.name, e)
	}
	n := int(init.MaxSendWR)
	wrbuf := C.calloc(C.size_t(n), C.sizeof_struct_mcv_send_wr)
	sgebuf := C.calloc(C.size_t(n), C.sizeof_struct_mcv_sge)
	if wrbuf == nil || sgebuf == nil {
		C.free(wrbuf)
		C.free(sgebuf)
		C.mcv_destroy_qp(q)
		return nil, fmt.Errorf("ibv_create_qp %s: scratch: %w", p.d.name, syscall.ENOMEM)
	}
	return &qp{d: p.d, qp: q, num: uint32(C.mcv_qp_num(q)), cap: n,
		wrbuf: (*C.struct_mcv_send_wr)(wrbuf), sgebuf: (*C.struct_mcv_sge)(sgebuf)}, nil
}

func (p *pd) Close() error {
	var err error
	p.once.Do(func() {
		if r := C.mcv_dealloc_pd(p.pd); r != 0 {
			err = errnoErr("ibv_dealloc_pd "+p.d.name, r)
		}
	})
	return err
}

type mr struct {
	mr         *C.struct_mcv_mr
	lkey, rkey uint32
	once       sync.Once
}

func newMR(m *C.struct_mcv_mr) *mr {
	return &mr{mr: m, lkey: uint32(C.mcv_mr_lkey(m)), rkey: uint32(C.mcv_mr_rkey(m))}
}

func (m *mr) LKey() uint32 { return m.lkey }
func (m *mr) RKey() uint32 { return m.rkey }

func (m *mr) Close() error {
	var err error
	m.once.Do(func() {
		if r := C.mcv_dereg_mr(m.mr); r != 0 {
			err = errnoErr("ibv_dereg_mr", r)
		}
	})
	return err
}

type qp struct {
	d   *device
	qp  *C.struct_mcv_qp
	num uint32
	cap int

	mu     sync.Mutex // the scratch chain is rebuilt on every post
	wrbuf  *C.struct_mcv_send_wr
	sgebuf *C.struct_mcv_sge
	closed bool
}

func (q *qp) Num() uint32 { return q.num }

func (q *qp) Modify(a *verbs.QPAttr, mask verbs.QPAttrMask) error {
	var c C.struct_mcv_qp_attr
	c.qp_state = C.int(a.State)
	c.path_mtu = C.int(a.PathMTU)
	c.rq_psn = C.uint32_t(a.RQPSN)
	c.sq_psn = C.uint32_t(a.SQPSN)
	c.dest_qp_num = C.uint32_t(a.DestQPN)
	c.qp_access_flags = C.uint(a.AccessFlags)
	*(*[16]byte)(unsafe.Pointer(&c.ah_attr.grh.dgid)) = a.AH.DGID
	c.ah_attr.grh.flow_label = C.uint32_t(a.AH.FlowLabel)
	c.ah_attr.grh.sgid_index = C.uint8_t(a.AH.SGIDIndex)
	c.ah_attr.grh.hop_limit = C.uint8_t(a.AH.HopLimit)
	c.ah_attr.grh.traffic_class = C.uint8_t(a.AH.TrafficClass)
	c.ah_attr.dlid = C.uint16_t(a.AH.DLID)
	c.ah_attr.sl = C.uint8_t(a.AH.SL)
	c.ah_attr.src_path_bits = C.uint8_t(a.AH.SrcPathBits)
	c.ah_attr.static_rate = C.uint8_t(a.AH.StaticRate)
	if a.AH.IsGlobal {
		c.ah_attr.is_global = 1
	}
	c.ah_attr.port_num = C.uint8_t(a.AH.PortNum)
	c.pkey_index = C.uint16_t(a.PKeyIndex)
	c.max_rd_atomic = C.uint8_t(a.MaxRdAtomic)
	c.max_dest_rd_atomic = C.uint8_t(a.MaxDestRdAtomic)
	c.min_rnr_timer = C.uint8_t(a.MinRNRTimer)
	c.port_num = C.uint8_t(a.PortNum)
	c.timeout = C.uint8_t(a.Timeout)
	c.retry_cnt = C.uint8_t(a.RetryCnt)
	c.rnr_retry = C.uint8_t(a.RNRRetry)
	// ibv_modify_qp returns the error number itself (Mooncake R6 logged a
	// stale errno instead).
	if r := C.mcv_modify_qp(q.qp, &c, C.int(mask)); r != 0 {
		return errnoErr(fmt.Sprintf("ibv_modify_qp %s qp %d to %s", q.d.name, q.num, a.State), r)
	}
	return nil
}

func (q *qp) PostSend(wrs []verbs.SendWR) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 0, fmt.Errorf("ibv_post_send qp %d: %w", q.num, verbs.ErrClosed)
	}
	done := 0
	for done < len(wrs) {
		n := min(len(wrs)-done, q.cap)
		var posted C.int
		r := C.mcv_post_send(q.qp, (*C.struct_mcv_flat_wr)(unsafe.Pointer(&wrs[done])), C.int(n), q.wrbuf, q.sgebuf, &posted)
		done += int(posted)
		if r != 0 {
			return done, errnoErr(fmt.Sprintf("ibv_post_send %s qp %d", q.d.name, q.num), r)
		}
	}
	return done, nil
}

func (q *qp) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	r := C.mcv_destroy_qp(q.qp)
	C.free(unsafe.Pointer(q.wrbuf))
	C.free(unsafe.Pointer(q.sgebuf))
	if r != 0 {
		return errnoErr(fmt.Sprintf("ibv_destroy_qp %s qp %d", q.d.name, q.num), r)
	}
	return nil
}

type cq struct {
	d    *device
	cq   *C.struct_mcv_cq
	ch   *compChannel
	once sync.Once
}

func (c *cq) Poll(wcs []verbs.WC) (int, error) {
	if len(wcs) == 0 {
		return 0, nil
	}
	n := C.mcv_poll_cq(c.cq, C.int(min(len(wcs), 64)), (*C.struct_mcv_flat_wc)(unsafe.Pointer(&wcs[0])))
	if n < 0 {
		return 0, errnoErr("ibv_poll_cq "+c.d.name, n)
	}
	return int(n), nil
}

func (c *cq) ReqNotify() error {
	if r := C.mcv_req_notify_cq(c.cq); r != 0 {
		return errnoErr("ibv_req_notify_cq "+c.d.name, r)
	}
	return nil
}

func (c *cq) Close() error {
	var err error
	c.once.Do(func() {
		if c.ch != nil {
			c.ch.mu.Lock()
			delete(c.ch.cqs, c.cq)
			c.ch.mu.Unlock()
		}
		if r := C.mcv_destroy_cq(c.cq); r != 0 {
			err = errnoErr("ibv_destroy_cq "+c.d.name, r)
		}
	})
	return err
}

type compChannel struct {
	d    *device
	ch   *C.struct_mcv_comp_channel
	w    *waiter
	once sync.Once

	mu  sync.Mutex
	cqs map[*C.struct_mcv_cq]*cq // +checklocks:mu
}

func (c *compChannel) Wait(ctx context.Context) (verbs.CQ, error) {
	for {
		var got *C.struct_mcv_cq
		err := c.w.wait(ctx, func() (bool, error) {
			switch r := C.mcv_get_cq_event(c.ch, &got); syscall.Errno(r) {
			case 0:
				return true, nil
			case syscall.EAGAIN:
				return false, nil
			default:
				return true, errnoErr("ibv_get_cq_event "+c.d.name, r)
			}
		})
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		q := c.cqs[got]
		c.mu.Unlock()
		if q != nil {
			return q, nil
		}
		// An event for a CQ being destroyed: already acknowledged; wait on.
	}
}

func (c *compChannel) Close() error {
	var errs []error
	c.once.Do(func() {
		errs = append(errs, c.w.close())
		if r := C.mcv_destroy_comp_channel(c.ch); r != 0 {
			errs = append(errs, errnoErr("ibv_destroy_comp_channel "+c.d.name, r))
		}
	})
	return errors.Join(errs...)
}
