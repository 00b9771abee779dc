package fake

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// Limits are a fake NIC's device limits (ibv_device_attr).
type Limits struct {
	MaxQP           int
	MaxQPWR         int
	MaxSGE          int
	MaxCQE          int
	MaxMRSize       uint64
	MaxQPRdAtom     int
	MaxQPInitRdAtom int
}

// DefaultLimits are a ConnectX-6's, roughly.
var DefaultLimits = Limits{
	MaxQP:           1 << 17,
	MaxQPWR:         32768,
	MaxSGE:          30,
	MaxCQE:          4194303,
	MaxMRSize:       ^uint64(0),
	MaxQPRdAtom:     16,
	MaxQPInitRdAtom: 16,
}

// NICSpec describes a NIC to add to the fabric.
type NICSpec struct {
	// Name is the device name on its host, e.g. "mlx5_0". Different hosts
	// may reuse a name.
	Name string
	// InfiniBand selects an IB port (one IB GID, a LID); otherwise the port
	// is RoCE with four GIDs, the last an IPv4-mapped RoCE v2 one.
	InfiniBand bool
	// ActiveMTU is the port's active MTU; 0 means 4096.
	ActiveMTU verbs.MTU
	// Down starts the port DOWN.
	Down bool
	// Limits are the device limits; zero fields take DefaultLimits'.
	Limits Limits
}

// Fabric is a set of fake NICs wired to each other.
type Fabric struct {
	// RetryDelay is the virtual transport timeout before a request to a
	// peer QP that is not ready is tried again; RetryLimit is how many
	// times (retry_cnt). Set them before posting.
	RetryDelay time.Duration
	RetryLimit int

	mu         sync.Mutex
	nics       []*NIC         // +checklocks:mu
	ready      []*request     // +checklocks:mu
	delayed    []*request     // +checklocks:mu; sorted by due
	live       map[any]string // +checklocks:mu; object -> creation stack
	violations []string       // +checklocks:mu
	closed     bool           // +checklocks:mu
	nextKey    uint32         // +checklocks:mu
	wake       chan struct{}
	done       chan struct{}
	wg         sync.WaitGroup
}

// NewFabric returns an empty fabric with its wire goroutine running.
func NewFabric() *Fabric {
	f := &Fabric{
		RetryDelay: time.Millisecond,
		RetryLimit: 7,
		live:       map[any]string{},
		nextKey:    0x1000,
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	f.wg.Add(1)
	go f.wire()
	return f
}

// Close stops the wire. Requests still queued are dropped.
func (f *Fabric) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	f.mu.Unlock()
	close(f.done)
	f.wg.Wait()
}

// AddNIC adds a NIC to host.
func (f *Fabric) AddNIC(host string, spec NICSpec) *NIC {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := len(f.nics) + 1
	l := spec.Limits
	d := DefaultLimits
	for _, p := range []struct {
		v   *int
		def int
	}{{&l.MaxQP, d.MaxQP}, {&l.MaxQPWR, d.MaxQPWR}, {&l.MaxSGE, d.MaxSGE}, {&l.MaxCQE, d.MaxCQE},
		{&l.MaxQPRdAtom, d.MaxQPRdAtom}, {&l.MaxQPInitRdAtom, d.MaxQPInitRdAtom}} {
		if *p.v == 0 {
			*p.v = p.def
		}
	}
	if l.MaxMRSize == 0 {
		l.MaxMRSize = d.MaxMRSize
	}
	spec.Limits = l
	if spec.ActiveMTU == 0 {
		spec.ActiveMTU = verbs.MTU4096
	}
	n := &NIC{
		fab: f, id: id, host: host, spec: spec,
		port:     verbs.PortActive,
		qps:      map[uint32]*qp{},
		lkeys:    map[uint32]*mr{},
		rkeys:    map[uint32]*mr{},
		nextQPN:  uint32(id * 1000),
		postErr:  -1,
		faults:   map[*NIC]*pathFault{},
		statuses: map[verbs.WCStatus]int{},
	}
	if spec.Down {
		n.port = verbs.PortDown
	}
	if spec.InfiniBand {
		n.lid = uint16(id)
		n.gids = []verbs.GIDEntry{{GID: linkLocal(id), Index: 0, Type: verbs.GIDTypeIB}}
	} else {
		v4 := verbs.GID{10: 0xff, 11: 0xff, 12: 10, 13: 0, 14: byte(id >> 8), 15: byte(id)}
		n.gids = []verbs.GIDEntry{
			{GID: linkLocal(id), Index: 0, Type: verbs.GIDTypeRoCEv1, NetdevIfindex: 100 + id},
			{GID: linkLocal(id), Index: 1, Type: verbs.GIDTypeRoCEv2, NetdevIfindex: 100 + id},
			{GID: v4, Index: 2, Type: verbs.GIDTypeRoCEv1, NetdevIfindex: 100 + id},
			{GID: v4, Index: 3, Type: verbs.GIDTypeRoCEv2, NetdevIfindex: 100 + id},
		}
	}
	f.nics = append(f.nics, n)
	return n
}

func linkLocal(id int) verbs.GID {
	return verbs.GID{0: 0xfe, 1: 0x80, 8: 0x02, 14: byte(id >> 8), 15: byte(id)}
}

// Provider returns what an engine on host sees of the fabric.
func (f *Fabric) Provider(host string) verbs.Provider { return &provider{fab: f, host: host} }

// Leaks lists the objects created and not closed, with their creation
// stacks.
func (f *Fabric) Leaks() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.live))
	for obj, stack := range f.live {
		out = append(out, fmt.Sprintf("%T created at\n%s", obj, stack))
	}
	sort.Strings(out)
	return out
}

// Violations lists misuse a real NIC would not report.
func (f *Fabric) Violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.violations)
}

// +checklocks:f.mu
func (f *Fabric) track(obj any) {
	var pcs [8]uintptr
	n := runtime.Callers(3, pcs[:])
	frames := runtime.CallersFrames(pcs[:n])
	var b strings.Builder
	for {
		fr, more := frames.Next()
		fmt.Fprintf(&b, "\t%s (%s:%d)\n", fr.Function, fr.File, fr.Line)
		if !more {
			break
		}
	}
	f.live[obj] = b.String()
}

// +checklocks:f.mu
func (f *Fabric) untrack(obj any) { delete(f.live, obj) }

// +checklocks:f.mu
func (f *Fabric) violate(format string, args ...any) {
	f.violations = append(f.violations, fmt.Sprintf(format, args...))
}

// +checklocks:f.mu
func (f *Fabric) key() uint32 {
	f.nextKey += 0x101
	return f.nextKey
}

// nicByGID finds the live NIC owning gid.
// +checklocks:f.mu
func (f *Fabric) nicByGID(g verbs.GID) *NIC {
	for _, n := range f.nics {
		if n.removed {
			continue
		}
		for _, e := range n.gids {
			if e.GID == g {
				return n
			}
		}
	}
	return nil
}

// +checklocks:f.mu
func (f *Fabric) nicByLID(lid uint16) *NIC {
	for _, n := range f.nics {
		if !n.removed && n.spec.InfiniBand && n.lid == lid {
			return n
		}
	}
	return nil
}

// request is one posted work request on its way through the wire.
type request struct {
	verbs.SendWR
	qp       *qp
	attempts int
	due      time.Time
	// done is set once the request has been processed and only its
	// completion is delayed.
	done   bool
	status verbs.WCStatus
}

// +checklocks:f.mu
func (f *Fabric) enqueue(r *request) {
	f.ready = append(f.ready, r)
	f.signal()
}

// +checklocks:f.mu
func (f *Fabric) delay(r *request, d time.Duration) {
	r.due = time.Now().Add(d)
	i := sort.Search(len(f.delayed), func(i int) bool { return f.delayed[i].due.After(r.due) })
	f.delayed = slices.Insert(f.delayed, i, r)
	f.signal()
}

func (f *Fabric) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// wire processes requests one at a time, in posting order except for
// retried and delayed ones.
func (f *Fabric) wire() {
	defer f.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		f.mu.Lock()
		now := time.Now()
		for len(f.delayed) > 0 && !f.delayed[0].due.After(now) {
			f.ready = append(f.ready, f.delayed[0])
			f.delayed = f.delayed[1:]
		}
		batch := f.ready
		f.ready = nil
		for _, r := range batch {
			f.process(r)
		}
		wait := time.Hour
		if len(f.delayed) > 0 {
			wait = time.Until(f.delayed[0].due)
		}
		more := len(f.ready) > 0
		f.mu.Unlock()
		if more {
			continue
		}
		timer.Reset(max(wait, 0))
		select {
		case <-f.done:
			return
		case <-f.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// process runs one request: the checks a NIC makes, the copy, the
// completion.
// +checklocks:f.mu
func (f *Fabric) process(r *request) {
	q := r.qp
	if q.destroyed {
		return
	}
	if r.done {
		q.complete(r, r.status)
		return
	}
	src := q.nic
	if q.state == verbs.QPSErr || src.removed {
		q.complete(r, verbs.WCWRFlushErr)
		return
	}
	var dst *NIC
	if q.attr.AH.IsGlobal {
		dst = f.nicByGID(q.attr.AH.DGID)
	} else {
		dst = f.nicByLID(q.attr.AH.DLID)
	}
	if pf := src.faults[dst]; dst != nil && pf != nil && pf.count != 0 {
		if pf.count > 0 {
			pf.count--
		}
		f.fail(r, pf.status)
		return
	}
	var peer *qp
	if dst != nil && src.port == verbs.PortActive && dst.port == verbs.PortActive {
		peer = dst.qps[q.attr.DestQPN]
	}
	connected := peer != nil && (peer.state == verbs.QPSRTR || peer.state == verbs.QPSRTS) &&
		peer.attr.DestQPN == q.num && peer.remote() == src
	if !connected {
		if r.attempts < f.RetryLimit {
			r.attempts++
			f.delay(r, f.RetryDelay)
			return
		}
		f.fail(r, verbs.WCRetryExcErr)
		return
	}
	local, ok := src.lkeys[r.LKey]
	want := verbs.Access(0)
	if r.Opcode == verbs.WRRDMARead {
		want = verbs.AccessLocalWrite
	}
	if !ok || local.pd != q.pd || !local.covers(r.LocalAddr, uint64(r.Length), want) {
		f.fail(r, verbs.WCLocProtErr)
		return
	}
	remote, ok := dst.rkeys[r.RKey]
	want = verbs.AccessRemoteWrite
	if r.Opcode == verbs.WRRDMARead {
		want = verbs.AccessRemoteRead
	}
	if !ok || remote.pd != peer.pd || !remote.covers(r.RemoteAddr, uint64(r.Length), want) {
		f.fail(r, verbs.WCRemAccessErr)
		return
	}
	if r.Length > 0 {
		l := local.bytes(r.LocalAddr, r.Length)
		m := remote.bytes(r.RemoteAddr, r.Length)
		if r.Opcode == verbs.WRRDMARead {
			copy(l, m)
		} else {
			copy(m, l)
		}
	}
	if d := src.delay; d > 0 {
		r.done, r.status = true, verbs.WCSuccess
		f.delay(r, d)
		return
	}
	q.complete(r, verbs.WCSuccess)
}

// fail completes r with an error status and moves its QP to ERR, as a NIC
// does on any completion error.
// +checklocks:f.mu
func (f *Fabric) fail(r *request, st verbs.WCStatus) {
	r.qp.state = verbs.QPSErr
	r.qp.complete(r, st)
}

// ptr turns an address into a pointer without go vet's unsafeptr warning;
// the memory is outside the Go heap (tests mmap it).
func ptr(p uint64) unsafe.Pointer { u := uintptr(p); return *(*unsafe.Pointer)(unsafe.Pointer(&u)) }

func bytesAt(addr uint64, n uint32) []byte { return unsafe.Slice((*byte)(ptr(addr)), int(n)) }

// errno wraps a syscall error as the verbs calls return them.
func errno(op string, e syscall.Errno) error { return fmt.Errorf("fake %s: %w", op, e) }
