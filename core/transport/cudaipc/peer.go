package cudaipc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/transport"
)

// errNotMapped means that a range cannot be mapped here (the peer cannot
// export it, or no device here reaches it): it goes to the fallback.
var errNotMapped = errors.New("cudaipc: not mapped through CUDA IPC")

// remoteMap is one allocation of a peer mapped into this process.
type remoteMap struct {
	kind       gpu.IPCKind
	base, size uint64 // the allocation in the peer
	ord        int    // the device holding it, as numbered here
	m          gpu.IPCMapping
	grants     []span // the parts this engine may touch (registered buffers)
	users      int    // copies being queued or run (guarded by peerState.mu)
}

type span struct{ start, end uint64 }

// covering returns the grant holding addr.
func (rm *remoteMap) covering(addr uint64) (span, bool) {
	for _, g := range rm.grants {
		if addr >= g.start && addr < g.end {
			return g, true
		}
	}
	return span{}, false
}

// piece is one contiguous part of a request, within one mapping.
type piece struct {
	rm     *remoteMap
	local  uintptr // in this process
	mapped uintptr // the peer's bytes, as mapped here
	n      int
	write  bool // local → peer
}

func (pc piece) ends() (dst, src uintptr) {
	if pc.write {
		return pc.mapped, pc.local
	}
	return pc.local, pc.mapped
}

// peerState is what this engine knows of one incarnation of a peer.
type peerState struct {
	t        *Transport
	name     string
	instance string
	info     atomic.Pointer[peerInfo]
	fallback transport.Transport // nil: nothing else reaches the peer
	closes   atomic.Uint64       // connections the peer closed

	mu       sync.Mutex
	conn     *clientConn          // guarded by mu
	connErr  error                // guarded by mu: the last connection failure
	maps     []*remoteMap         // guarded by mu, sorted by base
	stale    []*remoteMap         // guarded by mu: dropped, still in use when the drop gave up
	noExport map[uint64]bool      // guarded by mu: buffers the peer cannot export
	foreign  bool                 // guarded by mu: its socket is another user's: never dialled again
	pending  []gpu.Event          // guarded by mu: stream copies not known done
	logged   map[gpu.IPCKind]bool // guarded by mu: mechanisms logged
	closing  bool                 // guarded by mu: torn down, maps nothing new
	onIdle   chan struct{}        // guarded by mu: closed and replaced when users drop
	dropSeq  uint64               // guarded by mu: drop requests received
	drops    []dropped            // guarded by mu: the last maxDrops of them
}

// dropped is a buffer the peer unregistered: drop request seq of the
// connection's life.
type dropped struct {
	seq        uint64
	start, end uint64
}

// maxDrops is how many drop requests a peer remembers for the opens in
// flight; an open older than all of them is taken as raced (it retries).
const maxDrops = 64

// noteDrop records, on the reader's goroutine and before it reads the next
// message, that the peer unregistered [start, end). An open whose reply
// came before it (the target sends a reply before any drop of its buffer)
// and whose mapping was not yet in p.maps, where the drop looks, sees it
// there instead and does not keep the mapping.
func (p *peerState) noteDrop(start, end uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.noteDropLocked(start, end)
}

func (p *peerState) noteDropLocked(start, end uint64) {
	if end < start {
		end = math.MaxUint64 // peer input that wraps: the rest of the space
	}
	p.dropSeq++
	if len(p.drops) == maxDrops {
		p.drops = append(p.drops[:0], p.drops[1:]...)
	}
	p.drops = append(p.drops, dropped{seq: p.dropSeq, start: start, end: end})
}

// dropCount is the number of drop requests received so far.
func (p *peerState) dropCount() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropSeq
}

// droppedSinceLocked reports whether a drop request received after the
// first seen of them overlaps the allocation [base, base+size).
func (p *peerState) droppedSinceLocked(seen, base, size uint64) bool {
	if seen == p.dropSeq {
		return false
	}
	if len(p.drops) == 0 || p.drops[0].seq > seen+1 {
		return true // forgotten: assume the worst
	}
	for _, d := range p.drops {
		if d.seq > seen && d.start < base+size && base < d.end {
			return true
		}
	}
	return false
}

// errDropRaced is an open whose buffer the peer unregistered before the
// mapping was in place: the open is asked again.
var errDropRaced = errors.New("cudaipc: the peer unregistered the buffer while it was being opened")

// maxOpenTries bounds how often one mapping is asked for after such races.
const maxOpenTries = 3

func newPeerState(t *Transport, name, instance string, pi *peerInfo) *peerState {
	p := &peerState{t: t, name: name, instance: instance, noExport: map[uint64]bool{},
		logged: map[gpu.IPCKind]bool{}, onIdle: make(chan struct{})}
	p.info.Store(pi)
	for _, f := range t.deps.Fallback {
		if f.Accept(pi.desc) == nil {
			p.fallback = f
			break
		}
	}
	return p
}

// direct reports whether r can go through CUDA IPC as far as the
// descriptor tells: its remote range is in GPU buffers of a device seen
// here, the peer exported it before or was never asked.
func (p *peerState) direct(r transport.Request) bool {
	pi := p.info.Load()
	first, ok := pi.reachable(r.Remote, r.Length)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.foreign && !p.noExport[first]
}

// localOrd is the ordinal here of the GPU with this UUID, or -1.
func (p *peerState) localOrd(u gpu.UUID) int {
	if o, ok := p.t.uuids[u]; ok {
		return o
	}
	return -1
}

// acquire maps the pieces of r, each counted as in use until release.
func (p *peerState) acquire(ctx context.Context, r transport.Request) ([]piece, error) {
	var out []piece
	pos, end := r.Remote, r.Remote+r.Length
	for pos < end {
		rm, n, err := p.mapping(ctx, pos, end-pos)
		if err != nil {
			p.release(out)
			return nil, err
		}
		out = append(out, piece{
			rm: rm, local: r.Local + uintptr(pos-r.Remote), mapped: rm.m.Addr() + uintptr(pos-rm.base),
			n: int(n), write: r.Opcode == transport.Write,
		})
		pos += n
	}
	return out, nil
}

// release ends the use of pieces.
func (p *peerState) release(ps []piece) {
	if len(ps) == 0 {
		return
	}
	p.mu.Lock()
	for _, pc := range ps {
		pc.rm.users--
	}
	close(p.onIdle)
	p.onIdle = make(chan struct{})
	p.mu.Unlock()
}

// mapping returns the mapping holding pos, in use, and how many bytes from
// pos (at most limit) it and its grant cover; it asks the peer for it the
// first time.
func (p *peerState) mapping(ctx context.Context, pos, limit uint64) (*remoteMap, uint64, error) {
	for try := 1; ; try++ {
		rm, n, err := p.mapOnce(ctx, pos, limit)
		if !errors.Is(err, errDropRaced) {
			return rm, n, err
		}
		if try == maxOpenTries {
			return nil, 0, fmt.Errorf("%w: %w", errNotMapped, err)
		}
	}
}

// mapOnce is one try of mapping.
func (p *peerState) mapOnce(ctx context.Context, pos, limit uint64) (*remoteMap, uint64, error) {
	if rm, n, err := p.lookup(pos, limit); rm != nil || err != nil {
		return rm, n, err
	}
	reply, fd, seen, err := p.open(ctx, pos)
	if err != nil {
		return nil, 0, err
	}
	h := gpu.IPCHandle{Kind: reply.kind, Base: uintptr(reply.base), Size: reply.size, Device: reply.device, Legacy: reply.legacy, FD: fd}
	defer h.Close()
	grant := span{reply.grant, reply.grant + reply.grantLen}
	ord := p.localOrd(reply.device)
	if ord < 0 {
		return nil, 0, fmt.Errorf("GPU %v of the peer's allocation is not visible here: %w", reply.device, errNotMapped)
	}
	if rm, n, err := p.addGrant(reply.base, reply.size, grant, pos, limit, seen); rm != nil || err != nil {
		return rm, n, err
	}
	m, err := p.t.ipc.OpenIPC(h, ord)
	if err != nil {
		p.t.log.Warn("mapping a same-host peer's GPU memory failed; it goes over the fallback",
			zap.String("peer", p.name), zap.Stringer("mechanism", h.Kind), zap.Int("device", ord), zap.Error(err))
		return nil, 0, fmt.Errorf("%w: %w", errNotMapped, err)
	}
	rm := &remoteMap{kind: h.Kind, base: reply.base, size: reply.size, ord: ord, m: m, grants: []span{grant}}
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		_ = m.Close()
		return nil, 0, fmt.Errorf("cudaipc: peer %q: %w", p.name, transport.ErrClosed)
	}
	if p.droppedSinceLocked(seen, reply.base, reply.size) {
		p.mu.Unlock()
		_ = m.Close()
		return nil, 0, errDropRaced
	}
	if old := p.findLocked(reply.base); old != nil && old.base == reply.base && old.size == reply.size {
		// Mapped by another call meanwhile.
		p.mu.Unlock()
		_ = m.Close()
		return p.addGrant(reply.base, reply.size, grant, pos, limit, seen)
	}
	first := !p.logged[h.Kind]
	p.logged[h.Kind] = true
	rm.users++
	i, _ := slices.BinarySearchFunc(p.maps, rm.base, func(x *remoteMap, b uint64) int { return cmp.Compare(x.base, b) })
	p.maps = slices.Insert(p.maps, i, rm)
	n := min(limit, grant.end-pos)
	p.mu.Unlock()
	if first {
		p.t.log.Info("same-host peer's GPU memory mapped through CUDA IPC", zap.String("peer", p.name),
			zap.Stringer("mechanism", h.Kind), zap.Int("device", ord), zap.Uint64("allocation_bytes", reply.size))
	} else {
		p.t.log.Debug("mapped a peer allocation", zap.String("peer", p.name), zap.Stringer("mechanism", h.Kind),
			zap.Uint64("base", reply.base), zap.Uint64("bytes", reply.size))
	}
	return rm, n, nil
}

// lookup finds a live mapping and grant holding pos; in use on success.
func (p *peerState) lookup(pos, limit uint64) (*remoteMap, uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil, 0, fmt.Errorf("cudaipc: peer %q: %w", p.name, transport.ErrClosed)
	}
	rm := p.findLocked(pos)
	if rm == nil {
		return nil, 0, nil
	}
	g, ok := rm.covering(pos)
	if !ok {
		return nil, 0, nil
	}
	rm.users++
	return rm, min(limit, g.end-pos), nil
}

// addGrant adds a grant to the live mapping of the allocation at base, if
// there is one, and returns it in use; seen is the drop count when the
// grant's reply came.
func (p *peerState) addGrant(base, size uint64, g span, pos, limit, seen uint64) (*remoteMap, uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil, 0, fmt.Errorf("cudaipc: peer %q: %w", p.name, transport.ErrClosed)
	}
	if p.droppedSinceLocked(seen, base, size) {
		return nil, 0, errDropRaced
	}
	rm := p.findLocked(base)
	if rm == nil || rm.base != base || rm.size != size {
		return nil, 0, nil
	}
	if _, ok := rm.covering(g.start); !ok {
		rm.grants = append(rm.grants, g)
	}
	rm.users++
	return rm, min(limit, g.end-pos), nil
}

// findLocked returns the live mapping whose allocation holds addr.
func (p *peerState) findLocked(addr uint64) *remoteMap {
	i, found := slices.BinarySearchFunc(p.maps, addr, func(x *remoteMap, a uint64) int { return cmp.Compare(x.base, a) })
	if !found {
		i--
	}
	if i >= 0 && addr < p.maps[i].base+p.maps[i].size {
		return p.maps[i]
	}
	return nil
}

// open asks the peer for the allocation holding addr and checks the
// answer (peer input). It returns the reply and the descriptor that came
// with it (-1: none), which the caller owns, and the drop count when the
// reply came.
func (p *peerState) open(ctx context.Context, addr uint64) (openReply, int, uint64, error) {
	c, err := p.connect(ctx)
	if err != nil {
		return openReply{}, -1, 0, err
	}
	res, err := c.open(ctx, addr)
	if err != nil {
		return openReply{}, -1, 0, err
	}
	reply, fd := res.reply, res.fd
	refuse := func(fd int, err error) (openReply, int, uint64, error) {
		if fd >= 0 {
			_ = syscall.Close(fd)
		}
		return openReply{}, -1, 0, err
	}
	bad := func(why string) (openReply, int, uint64, error) {
		return refuse(fd, fmt.Errorf("%w: open reply for %#x: %s", errProtocol, addr, why))
	}
	switch reply.status {
	case statusOK:
	case statusRejected:
		return refuse(fd, fmt.Errorf("cudaipc: peer %q refused %#x (%s): %w", p.name, addr, reply.text, transport.ErrRejected))
	case statusNotExportable:
		pi := p.info.Load()
		if first, ok := pi.reachable(addr, 1); ok {
			p.mu.Lock()
			p.noExport[first] = true
			p.mu.Unlock()
		}
		p.t.log.Info("a same-host peer's GPU buffer cannot be shared through CUDA IPC; it goes over the fallback",
			zap.String("peer", p.name), zap.Uint64("addr", addr), zap.String("why", reply.text))
		return refuse(fd, fmt.Errorf("peer %q cannot export %#x (%s): %w", p.name, addr, reply.text, errNotMapped))
	default:
		return refuse(fd, fmt.Errorf("peer %q failed to export %#x (%s): %w", p.name, addr, reply.text, errNotMapped))
	}
	switch {
	case reply.size == 0 || reply.base+reply.size < reply.base:
		return bad("empty or wrapping allocation")
	case reply.grantLen == 0 || reply.grant < reply.base || reply.grant+reply.grantLen > reply.base+reply.size ||
		addr < reply.grant || addr >= reply.grant+reply.grantLen:
		return bad("the grant is not inside the allocation around the address")
	case reply.kind == gpu.IPCVMM && fd < 0:
		return bad("a VMM allocation without its descriptor")
	case reply.kind != gpu.IPCVMM && fd >= 0:
		return bad("a descriptor without a VMM allocation")
	case reply.kind != gpu.IPCVMM && reply.kind != gpu.IPCLegacy:
		return bad(fmt.Sprintf("unknown kind %d", reply.kind))
	}
	return reply, fd, res.drops, nil
}

// connect returns the connection to the peer's endpoint, dialling it on
// first use (ctx bounds the dial).
func (p *peerState) connect(ctx context.Context) (*clientConn, error) {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil, fmt.Errorf("cudaipc: peer %q: %w", p.name, transport.ErrClosed)
	}
	if c := p.conn; c != nil {
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	socket := p.info.Load().pub.Socket
	var d net.Dialer
	raw, err := d.DialContext(ctx, "unixpacket", socket)
	if err != nil {
		err = fmt.Errorf("cudaipc: connect to peer %q at %s: %w: %w", p.name, socket, transport.ErrPeer, err)
		p.mu.Lock()
		p.connErr = err
		p.mu.Unlock()
		return nil, err
	}
	uc := raw.(*net.UnixConn)
	// The socket's name comes from the descriptor, and any process may
	// bind an abstract name first: map no memory of, nor write ours into,
	// a process of another user (the target refuses such initiators too).
	if err := sameUser(uc); err != nil {
		uc.Close()
		p.mu.Lock()
		p.foreign = true
		p.mu.Unlock()
		p.t.log.Warn("a same-host peer's CUDA IPC socket is held by a process of another user; its GPU memory goes over the fallback",
			zap.String("peer", p.name), zap.String("socket", socket), zap.Error(err))
		return nil, fmt.Errorf("cudaipc: peer %q at %s: %w: %w", p.name, socket, errNotMapped, err)
	}
	c := &clientConn{p: p, c: uc, waiting: map[uint64]chan openResult{}, done: make(chan struct{})}
	p.mu.Lock()
	if p.closing || p.conn != nil {
		other := p.conn
		p.mu.Unlock()
		c.c.Close()
		if other == nil {
			return nil, fmt.Errorf("cudaipc: peer %q: %w", p.name, transport.ErrClosed)
		}
		return other, nil
	}
	p.conn, p.connErr = c, nil
	p.mu.Unlock()
	if !p.t.lt.Go(c.read) {
		c.c.Close()
		p.mu.Lock()
		p.conn = nil
		p.mu.Unlock()
		return nil, fmt.Errorf("cudaipc: %w", transport.ErrClosed)
	}
	return c, nil
}

// lost is called when the connection to the peer ended. The peer can no
// longer revoke what it granted (its unregistrations would not reach us),
// so every mapping of it is dropped.
func (p *peerState) lost(c *clientConn, err error) {
	p.mu.Lock()
	if p.conn != c {
		p.mu.Unlock()
		return
	}
	p.conn = nil
	closing := p.closing
	if !closing {
		p.connErr = fmt.Errorf("cudaipc: connection to peer %q lost: %w: %w", p.name, transport.ErrPeer, err)
		// Everything is dropped: an open whose reply came on this
		// connection must not keep its mapping either.
		p.noteDropLocked(0, math.MaxUint64)
	}
	p.mu.Unlock()
	if closing {
		return
	}
	p.closes.Add(1)
	p.t.log.Info("connection to a same-host peer's CUDA IPC endpoint lost; its mappings are dropped",
		zap.String("peer", p.name), zap.Error(err))
	if derr := p.drop(func(*remoteMap) bool { return true }); derr != nil {
		p.t.log.Warn("dropping a lost peer's mappings", zap.String("peer", p.name), zap.Error(derr))
	}
}

// health is nil unless the last connection to the peer failed.
func (p *peerState) health() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.connErr
}

// addPending keeps an event recorded after stream copies that use the
// peer's mappings; events found done are released.
func (p *peerState) addPending(ev gpu.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = append(p.pruneLocked(), ev)
}

// pruneLocked releases the pending events that are done and returns the
// others.
func (p *peerState) pruneLocked() []gpu.Event {
	keep := p.pending[:0]
	for _, ev := range p.pending {
		if done, err := ev.Done(); done || err != nil {
			if err != nil {
				p.t.log.Warn("a stream copy through CUDA IPC failed", zap.String("peer", p.name), zap.Error(err))
			}
			_ = ev.Close()
			continue
		}
		keep = append(keep, ev)
	}
	clear(p.pending[len(keep):])
	p.pending = keep
	return keep
}

// drop unmaps the mappings that match, once no copy uses them: neither a
// copy of this transport's own (users) nor one queued on a caller's
// stream (the pending events). New copies do not get them meanwhile. It
// waits at most DropTimeout; a mapping still in use then is left mapped
// (unmapping it would fault the copy) and the error says so.
func (p *peerState) drop(match func(*remoteMap) bool) error {
	p.mu.Lock()
	// Mappings an earlier drop left in use are tried again.
	gone := p.stale
	p.stale = nil
	keep := p.maps[:0]
	for _, rm := range p.maps {
		if match(rm) {
			gone = append(gone, rm)
			continue
		}
		keep = append(keep, rm)
	}
	clear(p.maps[len(keep):])
	p.maps = keep
	p.mu.Unlock()
	if len(gone) == 0 {
		return nil
	}
	deadline := time.Now().Add(p.t.cfg.dropTimeout())
	if !p.waitQuiet(gone, deadline) {
		p.mu.Lock()
		p.stale = append(p.stale, gone...)
		p.mu.Unlock()
		return fmt.Errorf("cudaipc: copies still used %d mappings of peer %q after %v; they stay mapped",
			len(gone), p.name, p.t.cfg.dropTimeout())
	}
	var errs []error
	for _, rm := range gone {
		errs = append(errs, rm.m.Close())
	}
	return errors.Join(errs...)
}

// waitQuiet waits until no copy uses the mappings and the peer's stream
// copies are done, or the deadline passes; it reports whether they are.
func (p *peerState) waitQuiet(ms []*remoteMap, deadline time.Time) bool {
	backoff := 100 * time.Microsecond
	for {
		p.mu.Lock()
		busy := slices.ContainsFunc(ms, func(rm *remoteMap) bool { return rm.users > 0 })
		pending := len(p.pruneLocked())
		idle := p.onIdle
		p.mu.Unlock()
		if !busy && pending == 0 {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		// Users wake us when they release; stream copies are polled.
		wait := left
		if pending > 0 {
			wait = min(left, backoff)
			backoff = min(2*backoff, 10*time.Millisecond)
		}
		timer := time.NewTimer(wait)
		select {
		case <-idle:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// close tears the peer down: mappings dropped (after their copies), then
// the connection closed, then the pending events released.
func (p *peerState) close() error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return nil
	}
	p.closing = true
	p.mu.Unlock()
	err := p.drop(func(*remoteMap) bool { return true })
	p.mu.Lock()
	c := p.conn
	p.conn = nil
	events := p.pending
	p.pending = nil
	p.mu.Unlock()
	if c != nil {
		c.c.Close()
	}
	for _, ev := range events {
		_ = ev.Close()
	}
	return err
}

// clientConn is the connection to one peer's endpoint: requests and their
// replies, and the peer's drop requests, read by one goroutine.
type clientConn struct {
	p       *peerState
	c       *net.UnixConn
	wmu     sync.Mutex // serialises writes
	mu      sync.Mutex
	next    uint64                     // guarded by mu
	waiting map[uint64]chan openResult // guarded by mu
	dead    error                      // guarded by mu
	done    chan struct{}              // closed when read returns
}

type openResult struct {
	reply openReply
	fd    int
	drops uint64 // the peer's drop count when the reply came
}

func (c *clientConn) send(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return send(c.c, b, -1)
}

// open sends an open request and waits for its reply (ctx bounds it).
func (c *clientConn) open(ctx context.Context, addr uint64) (openResult, error) {
	ch := make(chan openResult, 1)
	c.mu.Lock()
	if c.dead != nil {
		err := c.dead
		c.mu.Unlock()
		return openResult{fd: -1}, err
	}
	c.next++
	id := c.next
	c.waiting[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
		select { // a reply that came meanwhile
		case r := <-ch:
			if r.fd >= 0 {
				_ = syscall.Close(r.fd)
			}
		default:
		}
	}
	if err := c.send(openRequest{id: id, addr: addr}.encode()); err != nil {
		forget()
		c.c.Close()
		return openResult{fd: -1}, fmt.Errorf("cudaipc: send to peer %q: %w: %w", c.p.name, transport.ErrPeer, err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-c.done:
		forget()
		c.mu.Lock()
		err := c.dead
		c.mu.Unlock()
		return openResult{fd: -1}, err
	case <-ctx.Done():
		forget()
		return openResult{fd: -1}, fmt.Errorf("cudaipc: waiting for peer %q: %w", c.p.name, ctx.Err())
	}
}

// read takes the peer's messages until the connection ends. Peer input: a
// panic stops here and drops the connection.
func (c *clientConn) read() {
	var cause error
	defer func() {
		if r := recover(); r != nil {
			c.p.t.log.Error("panic reading a CUDA IPC peer; connection dropped", zap.String("peer", c.p.name),
				zap.Any("panic", r), zap.Stack("stack"))
			cause = fmt.Errorf("%w: panic", errProtocol)
		}
		c.c.Close()
		c.mu.Lock()
		c.dead = fmt.Errorf("cudaipc: connection to peer %q: %w: %w", c.p.name, transport.ErrPeer, cause)
		c.waiting = map[uint64]chan openResult{} // their callers see done
		c.mu.Unlock()
		close(c.done)
		c.p.lost(c, cause)
	}()
	buf, oob := make([]byte, maxMessage), make([]byte, syscall.CmsgSpace(4*4))
	for {
		b, fds, err := recv(c.c, buf, oob)
		if err != nil {
			cause = err
			return
		}
		m, err := decode(b)
		if err != nil {
			closeAll(fds)
			cause = err
			return
		}
		switch m := m.(type) {
		case openReply:
			fd := -1
			if len(fds) == 1 {
				fd = fds[0]
			} else if len(fds) > 1 {
				closeAll(fds)
				cause = fmt.Errorf("%w: %d descriptors with one reply", errProtocol, len(fds))
				return
			}
			// Stamped with the drops seen so far: only this goroutine
			// records drops (noteDrop), so those after the stamp came
			// after this reply.
			drops := c.p.dropCount()
			// Delivered under mu (the channel has room for it): a caller
			// that gives up takes mu before it looks in its channel, so
			// it either finds the reply there and closes its descriptor,
			// or its entry is gone and the descriptor is closed here.
			c.mu.Lock()
			ch, ok := c.waiting[m.id]
			delete(c.waiting, m.id)
			if ok {
				ch <- openResult{reply: m, fd: fd, drops: drops}
			}
			c.mu.Unlock()
			if !ok && fd >= 0 {
				_ = syscall.Close(fd) // its caller gave up
			}
		case dropRequest:
			closeAll(fds)
			c.p.noteDrop(m.addr, m.addr+m.length)
			c.onDrop(m)
		default:
			closeAll(fds)
			cause = fmt.Errorf("%w: unexpected %T", errProtocol, m)
			return
		}
	}
}

// onDrop drops the mappings of a buffer the peer unregisters, in the
// background (the reader keeps serving replies), and answers.
func (c *clientConn) onDrop(m dropRequest) {
	run := func() {
		end := m.addr + m.length
		err := c.p.drop(func(rm *remoteMap) bool { return rm.base < end && m.addr < rm.base+rm.size })
		if err != nil {
			// No answer: the peer's unregistration fails with its own
			// timeout, which tells the user.
			c.p.t.log.Error("a same-host peer unregisters memory that copies still use", zap.String("peer", c.p.name), zap.Error(err))
			return
		}
		if err := c.send(dropReply{seq: m.seq}.encode()); err != nil {
			c.c.Close()
		}
	}
	if !c.p.t.lt.Go(run) {
		run() // closing: the transport drops everything anyway
	}
}
