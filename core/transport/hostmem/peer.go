package hostmem

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// pathNone: no same-host path serves the peer; its tasks go to the
// fallback.
const pathNone = 0

func pathName(path int) string {
	switch path {
	case pathCMA:
		return "cma"
	case pathRing:
		return "shm"
	}
	return "fallback"
}

// peer is one incarnation of a target (one control socket): the path that
// serves it and what that path holds.
type peer struct {
	t    *Transport
	name string
	sock string
	desc atomic.Pointer[metadata.SegmentDesc] // the last descriptor seen
	info atomic.Pointer[descInfo]

	ctx    context.Context // ends at close: bounds the setup
	cancel context.CancelFunc
	ready  chan struct{} // closed when the setup is done

	// Set by the setup before ready closes; read-only after.
	path     int
	why      string // why this path (the log's "reason")
	setupErr error
	conn     *net.UnixConn
	pid      int
	pidfd    int
	tbl      *importTable // cross-memory attach
	ring     *ringClient  // the ring

	// mu is held shared by every copy over cross-memory attach (they use
	// the mappings); close takes it to unmap them.
	mu     sync.RWMutex
	closed bool         // guarded by mu
	parked []parkedCall // guarded by mu: calls waiting for the setup

	// retryAt, when not zero, is when a path the peer refused (it was
	// busy) is asked for again (UnixNano).
	retryAt atomic.Int64

	dead      atomic.Pointer[error] // the connection's failure, once
	done      chan struct{}         // closed by close
	closeErr  error                 // set before done closes
	wg        sync.WaitGroup        // reader and ring sender
	closeOnce sync.Once
}

type parkedCall struct {
	ctx   context.Context
	pe    transport.Peer
	tasks []*transport.Task
	opts  transport.SubmitOptions
}

func newPeer(t *Transport, name, sock string) *peer {
	p := &peer{t: t, name: name, sock: sock, pidfd: -1, ready: make(chan struct{}), done: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(t.ctx)
	return p
}

// taskError wraps err for task (p may be nil: no peer was made).
func (p *peer) taskError(task *transport.Task, err error) error {
	e := &PeerError{Op: task.Opcode.String(), Remote: task.Remote, Size: task.Length, Err: err}
	if p != nil {
		e.Peer = p.name
		select {
		case <-p.ready:
			if p.path != pathNone {
				e.Path = pathName(p.path)
			}
		default:
		}
	}
	return e
}

// park queues a call until the setup is done; false if it is done already.
func (p *peer) park(ctx context.Context, pe transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.ready:
		return false
	default:
	}
	if p.closed {
		for _, task := range tasks {
			task.Fail(p.taskError(task, p.closeErr))
		}
		return true
	}
	p.parked = append(p.parked, parkedCall{ctx, pe, tasks, opts})
	return true
}

// refusedRetry is how long a peer that refused a same-host path is reached
// through the fallback before it is asked again.
const refusedRetry = 5 * time.Second

// stale reports whether p's refused path is due to be asked for again.
func (p *peer) stale() bool {
	at := p.retryAt.Load()
	return at != 0 && time.Now().UnixNano() >= at
}

// fail records the connection's first failure; false if one was recorded.
func (p *peer) fail(err error) bool { return p.dead.CompareAndSwap(nil, &err) }

// failure is the connection's failure, or nil.
func (p *peer) failure() error {
	if e := p.dead.Load(); e != nil {
		return *e
	}
	return nil
}

// setup connects to the peer and chooses its path, then runs the calls
// parked meanwhile.
func (p *peer) setup() {
	defer p.t.wg.Done()
	ctx, cancel := context.WithTimeout(p.ctx, p.t.cfg.DialTimeout)
	res, err := p.connect(ctx)
	cancel()

	// The outcome is recorded before the waiters wake: a caller that saw
	// this setup fail, or succeed, reads the same in PeerHealth at once.
	log := p.t.log.With(zap.String("peer", p.name), zap.String("socket", p.sock))
	switch {
	case err != nil && (errors.Is(err, ErrClosed) || p.ctx.Err() != nil):
		// Closed here during the setup: nothing to say of the peer.
	case err != nil:
		log.Info("same-host setup failed", zap.Error(err))
		p.t.peerFailed(p, err, false)
	default:
		log.Info("same-host path chosen", zap.String("path", pathName(res.path)), zap.Int("pid", res.pid), zap.String("reason", res.why))
		p.t.peerReady(p)
		if res.retry {
			p.retryAt.Store(time.Now().Add(refusedRetry).UnixNano())
		}
	}

	p.mu.Lock()
	if p.closed {
		res.release()
		err = p.closeErr
	}
	if err != nil {
		p.setupErr = err
	} else {
		p.path, p.why, p.conn, p.pid, p.pidfd, p.tbl, p.ring = res.path, res.why, res.conn, res.pid, res.pidfd, res.tbl, res.ring
		if p.conn != nil {
			p.wg.Add(1)
			go p.read()
		}
		if p.ring != nil {
			p.wg.Add(1)
			go p.ring.send()
		}
	}
	parked := p.parked
	p.parked = nil
	close(p.ready)
	p.mu.Unlock()

	for _, c := range parked {
		if err := c.ctx.Err(); err != nil {
			for _, task := range c.tasks {
				task.Fail(p.taskError(task, err))
			}
			continue
		}
		p.t.dispatch(c.ctx, p, c.pe, c.tasks, c.opts)
	}
}

// setupResult is what connect opened; release undoes it.
type setupResult struct {
	retry bool // the peer refused for now: ask again after refusedRetry
	path  int
	why   string
	conn  *net.UnixConn
	pid   int
	pidfd int
	tbl   *importTable
	ring  *ringClient
	// probe receives the peer's nonce. It lives in this heap object: an
	// iovec holds a plain address, which a moving goroutine stack would
	// leave behind.
	probe [nonceBytes]byte
}

func (r *setupResult) release() {
	if r == nil {
		return
	}
	if r.conn != nil {
		r.conn.Close()
	}
	closeFD(r.pidfd)
	if r.tbl != nil {
		r.tbl.close()
	}
	if r.ring != nil {
		r.ring.unmap()
	}
}

// peerErr marks a setup failure that says the peer is gone or wedged.
func peerErr(what string, err error) error {
	return fmt.Errorf("%s: %w: %w", what, ErrPeer, err)
}

// connect dials the peer's control socket, learns its pid from the kernel
// (SO_PEERCRED), tries cross-memory attach, then the ring, as the mode
// allows, and reports which path serves the peer and why.
func (p *peer) connect(ctx context.Context) (_ *setupResult, err error) {
	t := p.t
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", p.sock)
	if err != nil {
		return nil, peerErr("connect to "+p.sock, err)
	}
	r := &setupResult{conn: c.(*net.UnixConn), pidfd: -1}
	defer func() {
		if err != nil {
			r.release()
			r = nil
		}
	}()
	if dl, ok := ctx.Deadline(); ok {
		if err := r.conn.SetDeadline(dl); err != nil {
			return nil, err
		}
	}
	stop := context.AfterFunc(ctx, func() { r.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	raw, err := r.conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var uid uint32
	var credErr error
	if err := raw.Control(func(fd uintptr) { r.pid, uid, credErr = peerCred(fd) }); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, credErr
	}
	flags := uint32(0)
	if t.cfg.Mode != RingOnly {
		flags |= flagCMA
	}
	if t.cfg.Mode != CMAOnly {
		flags |= flagRing
	}
	if _, err := r.conn.Write(helloMsg(flags)); err != nil {
		return nil, peerErr("send hello", err)
	}
	buf := make([]byte, 64)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := r.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, peerErr("read welcome", err)
	}
	fds, err := parseRights(oob[:oobn])
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, fd := range fds {
			closeFD(fd)
		}
	}()
	w, err := parseWelcome(buf[:n])
	if err != nil {
		return nil, err
	}
	switch w.status {
	case statusOK:
	case statusBusy:
		// The peer is well and serves as many initiators as it allows;
		// asked again after refusedRetry.
		r.retry = true
		return r.none([]string{"the peer serves its maximum of same-host initiators (PYMOONCAKE_SAME_HOST_MAX_CONNS)"}), nil
	default:
		// A setup step failed there (no memory for a pin area): the peer
		// is well, the paths are not available for now.
		r.retry = true
		return r.none([]string{fmt.Sprintf("the peer could not set up a same-host path (status %d)", w.status)}), nil
	}
	var why []string
	if flags&flagCMA == 0 {
		why = append(why, "cross-memory attach off (PYMOONCAKE_SAME_HOST=shm)")
	} else if ok, reason, err := p.tryCMA(r, w, fds, uid); err != nil {
		return nil, err
	} else if ok {
		r.path, r.why = pathCMA, reason
		if err := p.use(r, use{path: pathCMA}, nil); err != nil {
			return nil, err
		}
		return r, nil
	} else {
		why = append(why, reason)
	}
	if flags&flagRing == 0 {
		why = append(why, "the shared-memory ring is off (PYMOONCAKE_SAME_HOST=cma)")
		return r.none(why), nil
	}
	ring, err := newRingClient(p, t.cfg.RingBytes, t.cfg.RingSlots)
	if err == nil {
		r.ring = ring
		err = p.use(r, use{path: pathRing, slots: uint32(t.cfg.RingSlots), ringBytes: t.cfg.RingBytes}, rightsOOB(ring.fd))
		if err == nil {
			ring.closeFD()
			r.path, r.why = pathRing, strings.Join(why, "; ")
			return r, nil
		}
		if !errors.Is(err, errRefused) {
			return nil, err
		}
		ring.unmap()
		r.ring = nil
	}
	why = append(why, "no shared-memory ring: "+err.Error())
	return r.none(why), nil
}

// errRefused is a setup step the peer refused (it could not map the ring):
// the peer is well, the path is not available.
var errRefused = errors.New("refused by the peer")

// none makes r the result of a peer no same-host path serves: the
// connection is closed (the peer's session ends with it), its tasks go to
// the fallback.
func (r *setupResult) none(why []string) *setupResult {
	r.conn.Close()
	r.conn = nil
	r.path, r.why = pathNone, strings.Join(why, "; ")
	return r
}

// use sends the path chosen and waits for the peer's ready.
func (p *peer) use(r *setupResult, u use, oob []byte) error {
	if _, _, err := r.conn.WriteMsgUnix(u.marshal(), oob, nil); err != nil {
		return peerErr("send use", err)
	}
	buf := make([]byte, 64)
	n, err := r.conn.Read(buf)
	if err != nil {
		return peerErr("read ready", err)
	}
	st, err := parseReady(buf[:n])
	if err != nil {
		return err
	}
	if st != statusOK {
		return fmt.Errorf("the %s path (status %d): %w", pathName(int(u.path)), st, errRefused)
	}
	return r.conn.SetDeadline(time.Time{})
}

// tryCMA maps the peer's table and pin area and reads the table's nonce at
// the peer's address with process_vm_readv: equal bytes prove that the
// kernel lets us reach the peer and that the pid names it. It reports
// whether cross-memory attach serves the peer, and why (not), or an error
// when the peer is gone.
func (p *peer) tryCMA(r *setupResult, w welcome, fds []int, uid uint32) (bool, string, error) {
	if len(fds) != 2 || w.capacity == 0 || w.capacity > MaxRegions || w.tableSize != uint64(tableBytes(int(w.capacity))) {
		return false, "", fmt.Errorf("welcome with %d descriptors, a table of %d bytes for %d regions: %w", len(fds), w.tableSize, w.capacity, ErrMalformed)
	}
	if r.pid == 0 {
		return false, "cross-memory attach impossible: the peer's pid is not visible in this PID namespace", nil
	}
	capacity := int(w.capacity)
	if err := checkSealed(fds[0], tableBytes(capacity)); err != nil {
		return false, "", fmt.Errorf("registration table: %w: %w", ErrMalformed, err)
	}
	if err := checkSealed(fds[1], pinsBytes(capacity)); err != nil {
		return false, "", fmt.Errorf("pin area: %w: %w", ErrMalformed, err)
	}
	mem, err := mapShared(fds[0], tableBytes(capacity), false)
	if err != nil {
		return false, "", err
	}
	pins, err := mapShared(fds[1], pinsBytes(capacity), true)
	if err != nil {
		unmap(mem)
		return false, "", err
	}
	tbl, err := openImportTable(mem, pins, capacity)
	if err != nil {
		unmap(mem)
		unmap(pins)
		return false, "", err
	}
	r.tbl = tbl
	pidfd, err := pidfdOpen(r.pid)
	switch {
	case err == nil:
		r.pidfd = pidfd
	case errnoIs(err, errESRCH):
		return false, "", peerErr("pidfd_open", err)
	case errnoIs(err, errENOSYS):
		// Before Linux 5.3: the control connection alone tells that the
		// peer exited.
	default:
		return false, "", err
	}
	got := r.probe[:]
	local := []iovec{{base: uintptr(unsafe.Pointer(&got[0])), len: nonceBytes}}
	remote := []iovec{{base: uintptr(w.tableAddr) + nonceOffset, len: nonceBytes}}
	n, err := cma(false, r.pid, local, remote)
	reason := ""
	switch {
	case err == nil && n == nonceBytes && bytes.Equal(got, tbl.nonce()):
		if r.pidfd >= 0 && exited(r.pidfd) {
			return false, "", peerErr("the peer exited during the setup", errESRCH)
		}
		return true, fmt.Sprintf("cross-memory attach allowed (pid %d, uid %d)", r.pid, uid), nil
	case errnoIs(err, errESRCH):
		return false, "", peerErr("process_vm_readv", err)
	case errnoIs(err, errEPERM, errEACCES):
		reason = fmt.Sprintf("cross-memory attach not permitted (%v): ", err)
		switch scope := ptraceScope(); {
		case uid != p.t.id.UID:
			reason += fmt.Sprintf("the peer runs as uid %d, we as %d", uid, p.t.id.UID)
		case scope != "" && scope != "0":
			reason += "Yama ptrace_scope is " + scope
		default:
			reason += "the peer is not dumpable, or a security module forbids it"
		}
	case err != nil:
		reason = fmt.Sprintf("cross-memory attach failed: %v", err)
	default:
		reason = "cross-memory attach reached another process than the peer (its pid was reused)"
	}
	tbl.close()
	r.tbl = nil
	closeFD(r.pidfd)
	r.pidfd = -1
	return false, reason, nil
}

// read watches the control connection: a lease carries nothing, so any end
// of it means the peer exited or dropped us; a ring connection carries the
// replies.
func (p *peer) read() {
	defer p.wg.Done()
	var err error
	byPeer := true
	if p.ring != nil {
		err, byPeer = p.ring.receive()
	} else {
		buf := make([]byte, 64)
		for err == nil {
			var n int
			if n, err = p.conn.Read(buf); err == nil && n > 0 {
				err, byPeer = fmt.Errorf("%d-byte message on a lease: %w", n, ErrMalformed), false
			}
		}
		err = fmt.Errorf("control connection to %s: %w: %w", p.sock, ErrPeer, err)
	}
	select {
	case <-p.done:
		return // we closed it
	default:
	}
	p.t.peerFailed(p, err, byPeer)
}

// close tears p down: parked and queued calls fail with err, the
// connection closes, the goroutines end, the shared memory is unmapped.
// It waits for copies in flight over cross-memory attach (microseconds).
func (p *peer) close(err error) {
	p.closeOnce.Do(func() {
		p.cancel()
		p.mu.Lock()
		p.closed = true
		p.closeErr = err
		parked := p.parked
		p.parked = nil
		p.mu.Unlock()
		for _, c := range parked {
			for _, task := range c.tasks {
				task.Fail(p.taskError(task, err))
			}
		}
		<-p.ready // the setup ends promptly: its context was cancelled
		close(p.done)
		if p.conn != nil {
			p.conn.Close()
		}
		p.wg.Wait()
		if p.ring != nil {
			p.ring.failAll(err)
			p.ring.unmap()
		}
		if p.tbl != nil {
			p.tbl.close()
		}
		closeFD(p.pidfd)
	})
}

// descInfo is what the transport needs of a peer's descriptor, computed
// once per descriptor: its buffers of GPU memory.
type descInfo struct {
	desc   *metadata.SegmentDesc
	device []span // sorted by start
}

type span struct{ start, end uint64 }

func (p *peer) describe(desc *metadata.SegmentDesc) *descInfo {
	if ix := p.info.Load(); ix != nil && ix.desc == desc {
		return ix
	}
	ix := &descInfo{desc: desc}
	var locs []string
	if raw, ok := desc.Extra[LocationsKey]; ok && json.Unmarshal(raw, &locs) == nil {
		for i, b := range desc.Buffers {
			if i < len(locs) && isDevice(locs[i]) && b.Addr+b.Length >= b.Addr {
				ix.device = append(ix.device, span{b.Addr, b.Addr + b.Length})
			}
		}
		slices.SortFunc(ix.device, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	}
	p.info.Store(ix)
	return ix
}

// isDevice reports whether a location names device memory ("cuda:0"), not
// host memory ("cpu:0", "*").
func isDevice(loc string) bool {
	kind, _, ok := strings.Cut(loc, ":")
	return ok && kind != "cpu"
}

// onDevice reports whether [addr, addr+n) overlaps a GPU buffer of the
// peer.
func (ix *descInfo) onDevice(addr, n uint64) bool {
	for _, s := range ix.device {
		if addr < s.end && addr+n > s.start {
			return true
		}
	}
	return false
}
