package hostmem

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/hostid"
)

// Name is the transport's name in logs: "hostmem".
const Name = "hostmem"

// EndpointKey is the descriptor key under which the transport publishes its
// control socket: {"version": 1, "socket": "@pymooncake-hostmem-..."}.
const EndpointKey = "pymooncake_hostmem"

// LocationsKey is the descriptor key under which a pymooncake engine lists
// each buffer's location when any is GPU memory (the engine's
// LocationsKey): tasks into those buffers go to the fallback.
const LocationsKey = "pymooncake_buffer_locations"

// socketPrefix starts every control socket's (abstract) name.
const socketPrefix = "@pymooncake-hostmem-"

// Memory is the local registered memory (the engine's memory.Table): the
// server pins every range it serves from the ring, and the transport
// exports the host-memory regions to initiators that copy by themselves.
type Memory interface {
	// Pin checks that [addr, addr+size) lies inside one registered region
	// and holds that region until Unpin.
	Pin(addr, size uint64) (memory.Pin, bool)
	// Find returns the region holding [addr, addr+size).
	Find(addr, size uint64) (memory.Region, bool)
	// Device is the GPU ordinal of the region holding the range, or
	// memory.Host.
	Device(addr, size uint64) int
}

// Transport moves host memory between the processes of one host: over
// cross-memory attach where the kernel allows it, else over a shared-memory
// ring. See the package documentation.
type Transport struct {
	cfg  Config
	log  *zap.Logger
	hot  *zap.Logger // sampled, for data-path failures
	mem  Memory
	id   hostid.Identity
	sock string // the control socket's abstract name, "@..."
	srv  *server
	tbl  *exportTable
	roFD int // the table, read-only, as initiators get it

	ctx    context.Context // ends at Close; parent of every peer's
	cancel context.CancelFunc
	wg     sync.WaitGroup // workers and peers' goroutines
	work   workQueue

	// life is held shared by the entry points that touch the table
	// (RegisterMemory, UnregisterMemory); Close takes it to unmap.
	life sync.RWMutex

	mu     sync.Mutex
	closed bool                               // guarded by mu
	peers  atomic.Pointer[map[string][]*peer] // by name; replaced under mu, read lock-free
	failed map[string]error                   // guarded by mu: peers whose connection failed
	closes map[string]uint64                  // guarded by mu: control connections peers closed
	full   atomic.Bool                        // the table ran out of slots (logged once)

	closeOnce sync.Once
	closeErr  error
}

var (
	_ transport.Transport      = (*Transport)(nil)
	_ transport.Describer      = (*Transport)(nil)
	_ transport.Registrar      = (*Transport)(nil)
	_ transport.HealthReporter = (*Transport)(nil)
	_ transport.CloseCounter   = (*Transport)(nil)
)

// New starts the transport: its registration table and its control socket
// (an abstract Unix socket, reachable from this network namespace only).
// mem decides which ranges peers may touch. An error matching
// ErrUnavailable means the transport cannot run on this host.
func New(cfg Config, mem Memory) (*Transport, error) {
	if mem == nil {
		return nil, fmt.Errorf("hostmem: nil memory: %w", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("hostmem: %w", err)
	}
	if err := available(); err != nil {
		return nil, fmt.Errorf("hostmem: %w", err)
	}
	id, err := hostid.Local()
	if err != nil {
		return nil, fmt.Errorf("hostmem: %w: %w", ErrUnavailable, err)
	}
	tbl, err := newExportTable(cfg.Regions)
	if err != nil {
		return nil, fmt.Errorf("hostmem: registration table: %w", err)
	}
	roFD, err := reopenReadOnly(tbl.fd)
	if err != nil {
		tbl.close()
		return nil, fmt.Errorf("hostmem: %w", err)
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		closeFD(roFD)
		tbl.close()
		return nil, fmt.Errorf("hostmem: socket name: %w", err)
	}
	sock := fmt.Sprintf("%s%d-%s", socketPrefix, os.Getpid(), hex.EncodeToString(nonce[:]))
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		closeFD(roFD)
		tbl.close()
		return nil, fmt.Errorf("hostmem: control socket %s: %w", sock, err)
	}
	log := cfg.Logger.Named(Name)
	hot := log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 5, 100)
	}))
	t := &Transport{
		cfg: cfg, log: log, hot: hot, mem: mem, id: id, sock: sock, tbl: tbl, roFD: roFD,
		failed: map[string]error{}, closes: map[string]uint64{},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.peers.Store(&map[string][]*peer{})
	t.srv = &server{t: t, ln: ln, log: hot, conns: map[*net.UnixConn]struct{}{}}
	t.srv.wg.Add(1)
	go t.srv.acceptLoop()
	t.work.init(cfg.Workers)
	t.wg.Add(cfg.Workers)
	for range cfg.Workers {
		go t.worker()
	}
	fallback := "none"
	if cfg.Fallback != nil {
		fallback = cfg.Fallback.Name()
	}
	log.Info("hostmem transport started", zap.String("socket", sock), zap.Stringer("mode", cfg.Mode),
		zap.String("fallback", fallback), zap.Int("workers", cfg.Workers), zap.Uint64("chunk", cfg.Chunk),
		zap.Uint64("ring_bytes", cfg.RingBytes), zap.Int("ring_slots", cfg.RingSlots), zap.Int("regions", cfg.Regions),
		zap.String("yama_ptrace_scope", ptraceScope()), zap.Uint32("uid", id.UID), zap.Int("pid", id.PID))
	return t, nil
}

// Name is "hostmem".
func (t *Transport) Name() string { return Name }

// Socket is the control socket's abstract name ("@...").
func (t *Transport) Socket() string { return t.sock }

// endpoint is what EndpointKey holds.
type endpoint struct {
	Version int    `json:"version"`
	Socket  string `json:"socket"`
}

func parseEndpoint(desc *metadata.SegmentDesc) (endpoint, error) {
	raw, ok := desc.Extra[EndpointKey]
	if !ok {
		return endpoint{}, fmt.Errorf("hostmem: the peer publishes no %s", EndpointKey)
	}
	var ep endpoint
	if err := json.Unmarshal(raw, &ep); err != nil {
		return endpoint{}, fmt.Errorf("hostmem: %s: %w", EndpointKey, err)
	}
	// Abstract names are at most 107 bytes after the leading NUL.
	if ep.Version != wireVersion || !strings.HasPrefix(ep.Socket, socketPrefix) || len(ep.Socket) > 107 {
		return endpoint{}, fmt.Errorf("hostmem: %s %s: version %d or socket not served here", EndpointKey, raw, ep.Version)
	}
	return ep, nil
}

// Accept takes the peers that run on this host in this network namespace
// (their descriptor's hostid matches ours) and publish a control socket of
// this version, provided the fallback takes them too: Mooncake peers,
// peers elsewhere and pymooncake peers with PYMOONCAKE_SAME_HOST=0 are
// refused (TCP serves them). Whether cross-memory attach or the ring
// serves an accepted peer is decided at its first use.
func (t *Transport) Accept(desc *metadata.SegmentDesc) error {
	id, err := hostid.Parse(desc)
	if err != nil {
		return fmt.Errorf("hostmem: %w", err)
	}
	if err := t.id.Reachable(id); err != nil {
		return fmt.Errorf("hostmem: %w", err)
	}
	if _, err := parseEndpoint(desc); err != nil {
		return err
	}
	if t.cfg.Fallback != nil {
		if err := t.cfg.Fallback.Accept(desc); err != nil {
			return fmt.Errorf("hostmem: its fallback %s does not take the peer: %w", t.cfg.Fallback.Name(), err)
		}
	}
	return nil
}

// Describe publishes this engine's host identity (hostid.Key) and control
// socket (EndpointKey). It leaves the protocol to the other transports.
func (t *Transport) Describe(d *metadata.SegmentDesc) {
	hostid.Publish(d, t.id)
	b, err := json.Marshal(endpoint{Version: wireVersion, Socket: t.sock})
	if err != nil {
		return // a struct of an int and a string always marshals
	}
	d.Extra[EndpointKey] = b
}

// RegisterMemory exports a region of host memory that the engine
// registered to the initiators that copy by themselves. Other ranges (GPU
// memory, served by the fallback; the engine's own bounce buffers, which no
// peer may reach) are not exported.
func (t *Transport) RegisterMemory(addr, length uint64, _ string) error {
	t.life.RLock()
	defer t.life.RUnlock()
	if t.tbl == nil {
		return ErrClosed
	}
	r, ok := t.mem.Find(addr, length)
	if !ok || r.Addr != addr || r.Length != length || r.Device != memory.Host {
		return nil
	}
	if !t.tbl.add(addr, length) && !t.full.Swap(true) {
		t.log.Warn("the registration table is full: peers reach the regions registered from now on through the fallback",
			zap.Int("regions", t.tbl.capacity))
	}
	return nil
}

// UnregisterMemory withdraws a region from the table and waits until no
// initiator copies into or out of it (Config.UnregisterTimeout at most):
// when it returns nil, no peer touches the region any more.
func (t *Transport) UnregisterMemory(addr uint64) error {
	t.life.RLock()
	defer t.life.RUnlock()
	if t.tbl == nil {
		return ErrClosed
	}
	if err := t.tbl.remove(t.ctx, t.cfg.UnregisterTimeout, addr); err != nil {
		return fmt.Errorf("hostmem: unregister: %w", err)
	}
	return nil
}

// peer returns the state of pe's current incarnation, starting its setup on
// first use. A descriptor naming another control socket (the peer
// restarted) gets a new one.
func (t *Transport) peer(pe transport.Peer) (*peer, error) {
	if pe.Desc == nil {
		return nil, fmt.Errorf("hostmem: peer %q without a descriptor: %w", pe.Name, ErrInvalidConfig)
	}
	for _, p := range (*t.peers.Load())[pe.Name] {
		if p.desc.Load() == pe.Desc && !p.stale() {
			return p, nil
		}
	}
	ep, err := parseEndpoint(pe.Desc)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	old := *t.peers.Load()
	for _, p := range old[pe.Name] {
		if p.sock != ep.Socket {
			continue
		}
		if p.stale() {
			// Its path was refused for a while: ask again.
			t.forgetLocked(p)
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				p.close(fmt.Errorf("connection to peer %q renewed: %w", p.name, ErrClosed))
			}()
			break
		}
		p.desc.Store(pe.Desc)
		return p, nil
	}
	old = *t.peers.Load()
	p := newPeer(t, pe.Name, ep.Socket)
	p.desc.Store(pe.Desc)
	next := make(map[string][]*peer, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[pe.Name] = append(append([]*peer(nil), old[pe.Name]...), p)
	t.peers.Store(&next)
	t.wg.Add(1)
	go p.setup()
	return p, nil
}

// forget takes p out of the peer table (under t.mu).
func (t *Transport) forgetLocked(p *peer) {
	old := *t.peers.Load()
	list := old[p.name]
	keep := make([]*peer, 0, len(list))
	for _, q := range list {
		if q != p {
			keep = append(keep, q)
		}
	}
	if len(keep) == len(list) {
		return
	}
	next := make(map[string][]*peer, len(old))
	for k, v := range old {
		next[k] = v
	}
	if len(keep) == 0 {
		delete(next, p.name)
	} else {
		next[p.name] = keep
	}
	t.peers.Store(&next)
}

// peerFailed records that p's connection failed (byPeer: the peer closed
// it), forgets p so that the next Submit starts afresh, and tears it down
// in the background. The peer's health is its newest incarnation's: the
// end of one that was closed here or superseded is not recorded.
func (t *Transport) peerFailed(p *peer, err error, byPeer bool) {
	if !p.fail(err) {
		return
	}
	t.mu.Lock()
	if t.newestLocked(p) && p.ctx.Err() == nil {
		t.failed[p.name] = err
		if byPeer {
			t.closes[p.name]++
		}
	}
	t.forgetLocked(p)
	closed := t.closed
	if !closed {
		t.wg.Add(1)
	}
	t.mu.Unlock()
	if !closed {
		go func() {
			defer t.wg.Done()
			p.close(err)
		}()
	}
}

// peerReady records that p, the newest incarnation of its peer, works.
func (t *Transport) peerReady(p *peer) {
	t.mu.Lock()
	if t.newestLocked(p) && p.ctx.Err() == nil {
		delete(t.failed, p.name)
	}
	t.mu.Unlock()
}

// newestLocked reports whether p is the newest incarnation of its peer in
// the table (under t.mu).
func (t *Transport) newestLocked(p *peer) bool {
	list := (*t.peers.Load())[p.name]
	return len(list) > 0 && list[len(list)-1] == p
}

// Submit starts the tasks against pe. Tasks whose local or remote range is
// GPU memory, and every task to a peer that no same-host path serves, go
// to the fallback. Over cross-memory attach, a synchronous call of one
// chunk runs on the calling goroutine, a larger one on it and the workers
// together, an asynchronous one on the workers; over the ring, the peer's
// sender goroutine runs them. Every task is finished through PartDone.
func (t *Transport) Submit(ctx context.Context, pe transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if len(tasks) == 0 {
		return
	}
	p, err := t.peer(pe)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		for _, task := range tasks {
			task.Fail(p.taskError(task, err))
		}
		return
	}
	select {
	case <-p.ready:
	default:
		if !opts.Sync && p.park(ctx, pe, tasks, opts) {
			return // dispatched once the setup is done
		}
		select {
		case <-p.ready:
		case <-ctx.Done():
			for _, task := range tasks {
				task.Fail(p.taskError(task, ctx.Err()))
			}
			return
		}
	}
	t.dispatch(ctx, p, pe, tasks, opts)
}

// dispatch routes tasks once p's path is known.
func (t *Transport) dispatch(ctx context.Context, p *peer, pe transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if err := p.setupErr; err != nil {
		for _, task := range tasks {
			task.Fail(p.taskError(task, err))
		}
		return
	}
	if p.path == pathNone {
		t.forward(ctx, p, pe, tasks, opts)
		return
	}
	info := p.describe(pe.Desc)
	// host aliases tasks until a task leaves the run (most calls: none).
	host, copied := tasks, false
	var fwd []*transport.Task
	for i, task := range tasks {
		keep := false
		switch {
		case task.Length == 0:
			task.Start(1)
			task.PartDone(0, nil)
		case task.Opcode != transport.Read && task.Opcode != transport.Write:
			task.Fail(p.taskError(task, fmt.Errorf("hostmem: invalid opcode %d", task.Opcode)))
		case t.mem.Device(uint64(task.Local), task.Length) != memory.Host || info.onDevice(task.Remote, task.Length):
			fwd = append(fwd, task)
		default:
			keep = true
		}
		switch {
		case !copied && !keep:
			host, copied = append(make([]*transport.Task, 0, len(tasks)), tasks[:i]...), true
		case copied && keep:
			host = append(host, task)
		}
	}
	if len(fwd) > 0 {
		t.forward(ctx, p, pe, fwd, opts)
	}
	if len(host) == 0 {
		return
	}
	switch p.path {
	case pathCMA:
		t.runCMA(ctx, p, pe, host, opts)
	case pathRing:
		if opts.Sync && t.cfg.Fallback != nil && totalBytes(host) < ringMinSync {
			t.cfg.Fallback.Submit(ctx, pe, host, opts)
			return
		}
		p.ring.enqueue(ctx, host)
	}
}

// ringMinSync is the smallest synchronous call the ring serves when there
// is a fallback. The ring wakes a goroutine on each side per request (a
// 4 KiB write: p50 121 µs), while TCP's inline path runs a small call on
// the caller's goroutine with both ends polling (21 µs); they break even
// at about 256 KiB, above which the ring's single copy on each side wins
// (1 MiB: 1.9x, 64 MiB: 2.4x; docs/benchmarks.md, "Same-host transports").
const ringMinSync = 256 << 10

func totalBytes(tasks []*transport.Task) uint64 {
	var n uint64
	for _, task := range tasks {
		n += task.Length
	}
	return n
}

// forward hands tasks to the fallback.
func (t *Transport) forward(ctx context.Context, p *peer, pe transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if t.cfg.Fallback == nil {
		for _, task := range tasks {
			task.Fail(p.taskError(task, fmt.Errorf("%w (GPU memory, or a peer no same-host path reaches, and no fallback)", ErrNoPath)))
		}
		return
	}
	t.cfg.Fallback.Submit(ctx, pe, tasks, opts)
}

// ClosePeer drops every connection to the peer called name: its queued and
// in-flight tasks fail with ErrClosed; its health record is forgotten. The
// next Submit to it connects afresh. The fallback's own connections are
// the engine's to close (it calls ClosePeer on every transport).
func (t *Transport) ClosePeer(name string) {
	t.mu.Lock()
	gone := (*t.peers.Load())[name]
	for _, p := range gone {
		t.forgetLocked(p)
	}
	delete(t.failed, name)
	delete(t.closes, name)
	t.mu.Unlock()
	for _, p := range gone {
		p.close(fmt.Errorf("connection to peer %q closed: %w", name, ErrClosed))
	}
}

// PeerHealth is an error matching ErrPeer once the control connection to
// the peer called name failed (the peer exited, or stopped answering the
// ring) with no later success, or when the fallback reports one.
func (t *Transport) PeerHealth(name string) error {
	t.mu.Lock()
	err := t.failed[name]
	t.mu.Unlock()
	if err != nil {
		if !errors.Is(err, ErrPeer) {
			err = fmt.Errorf("%w: %w", ErrPeer, err)
		}
		return fmt.Errorf("hostmem: peer %q: %w", name, err)
	}
	if hr, ok := t.cfg.Fallback.(transport.HealthReporter); ok {
		return hr.PeerHealth(name)
	}
	return nil
}

// PeerCloses counts the control connections the peer called pe.Name
// closed (it exited or restarted), plus the fallback's count: a caller that
// remembers it from when it learnt pe's descriptor can tell that the
// process there may not be the one it knew.
func (t *Transport) PeerCloses(pe transport.Peer) uint64 {
	t.mu.Lock()
	n := t.closes[pe.Name]
	t.mu.Unlock()
	if cc, ok := t.cfg.Fallback.(transport.CloseCounter); ok {
		n += cc.PeerCloses(pe)
	}
	return n
}

// Close stops the server, the workers and every peer's connection, fails
// queued and in-flight tasks with ErrClosed, waits for every goroutine and
// unmaps the shared memory. The fallback is not closed: the engine closes
// it. Close is idempotent.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.closed = true
		peers := *t.peers.Load()
		t.peers.Store(&map[string][]*peer{})
		t.mu.Unlock()
		t.cancel()
		err := t.srv.close()
		for _, list := range peers {
			for _, p := range list {
				p.close(ErrClosed)
			}
		}
		t.work.close(ErrClosed)
		t.wg.Wait()
		t.life.Lock()
		closeFD(t.roFD)
		if terr := t.tbl.close(); err == nil {
			err = terr
		}
		t.tbl = nil
		t.life.Unlock()
		t.closeErr = err
		t.log.Info("hostmem transport closed", zap.String("socket", t.sock))
	})
	return t.closeErr
}
