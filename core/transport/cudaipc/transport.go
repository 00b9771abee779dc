package cudaipc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/gpucopy"
	"github.com/pymooncake/pymooncake/core/transport/internal/hostid"
	"github.com/pymooncake/pymooncake/core/transport/internal/lifetime"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

// Name is the transport's name in logs.
const Name = "cudaipc"

// The sentinels this transport reports.
var (
	ErrRejected    = transport.ErrRejected
	ErrClosed      = transport.ErrClosed
	ErrPeer        = transport.ErrPeer
	ErrUnavailable = transport.ErrUnavailable
	// ErrNoFallback fails what CUDA IPC cannot carry to a peer that no
	// fallback transport reaches.
	ErrNoFallback = errors.New("cudaipc: no fallback transport reaches the peer")
)

// batchBytes and batchTasks bound a group of copies waited for together, so
// that a long batch completes task by task.
const (
	batchBytes = 256 << 20
	batchTasks = 64
)

// Transport moves GPU memory between the processes of one host through
// CUDA IPC, and the rest through a fallback. See the package doc.
type Transport struct {
	cfg     Config
	deps    Deps
	log     *zap.Logger
	lt      *lifetime.Lifetime
	ipc     gpu.IPC
	mem     *memory.Table
	me      hostid.Identity
	alive   func(int) bool
	uuids   map[gpu.UUID]int // this process's devices
	gpus    []string         // their UUIDs by ordinal, as published
	socket  string
	srv     *server
	copiers *gpucopy.Pool

	mu    sync.Mutex
	peers map[string]*peerState // guarded by mu, by peer name
}

var (
	_ transport.Transport       = (*Transport)(nil)
	_ transport.Describer       = (*Transport)(nil)
	_ transport.Registrar       = (*Transport)(nil)
	_ transport.StreamSubmitter = (*Transport)(nil)
	_ transport.CloseCounter    = (*Transport)(nil)
	_ transport.HealthReporter  = (*Transport)(nil)
)

// New starts the transport: it reads this process's identity and devices
// and listens on the engine's abstract socket. No GPU driver with IPC, or
// no way to tell the identity, is an error matching ErrUnavailable.
func New(cfg Config, deps Deps) (*Transport, error) {
	if deps.Memory == nil || deps.Instance == "" {
		return nil, fmt.Errorf("cudaipc: memory table %v, instance %q: missing", deps.Memory != nil, deps.Instance)
	}
	ipc, ok := deps.GPU.(gpu.IPC)
	if deps.GPU == nil || !ok {
		return nil, fmt.Errorf("cudaipc: no GPU driver with CUDA IPC: %w", ErrUnavailable)
	}
	log := deps.Logger
	if log == nil {
		log = zap.NewNop()
	}
	t := &Transport{cfg: cfg, deps: deps, log: log.Named(Name), lt: lifetime.New(), ipc: ipc, mem: deps.Memory,
		alive: cfg.Alive, uuids: map[gpu.UUID]int{}, copiers: gpucopy.New(deps.GPU), peers: map[string]*peerState{}}
	if cfg.Identity != nil {
		t.me = *cfg.Identity
	} else {
		me, err := hostid.Local()
		if err != nil {
			return nil, fmt.Errorf("cudaipc: %w: %w", ErrUnavailable, err)
		}
		t.me = me
	}
	if t.alive == nil {
		t.alive = hostid.Alive
	}
	for ord := range ipc.Devices() {
		u, err := ipc.DeviceUUID(ord)
		if err != nil {
			return nil, fmt.Errorf("cudaipc: %w: %w", ErrUnavailable, err)
		}
		t.uuids[u] = ord
		t.gpus = append(t.gpus, u.String())
	}
	if len(t.gpus) == 0 {
		return nil, fmt.Errorf("cudaipc: no device: %w", ErrUnavailable)
	}
	t.socket = socketPrefix + deps.Instance
	srv, err := listen(t, t.socket)
	if err != nil {
		return nil, err
	}
	t.srv = srv
	if !t.lt.Go(srv.serve) {
		srv.close()
		return nil, ErrClosed
	}
	return t, nil
}

// Name implements transport.Transport.
func (t *Transport) Name() string { return Name }

// Accept implements transport.Transport: a pymooncake peer that publishes
// an endpoint, runs on this host in our namespaces in another live
// process, and has a GPU buffer on a device this process sees.
func (t *Transport) Accept(desc *metadata.SegmentDesc) error {
	if desc.Instance() == t.deps.Instance {
		return fmt.Errorf("%s: the engine's own segment", Name)
	}
	pi, err := decodeEndpoint(desc, t.uuids)
	if err != nil {
		return fmt.Errorf("%s: peer %q %w", Name, desc.Name, err)
	}
	if err := t.me.Sibling(pi.pub.Identity, t.alive); err != nil {
		return fmt.Errorf("%s: peer %q: %w", Name, desc.Name, err)
	}
	if !pi.visible() {
		return fmt.Errorf("%s: peer %q has no GPU buffer on a device this process sees", Name, desc.Name)
	}
	return nil
}

// Describe implements transport.Describer: the endpoint, this process's
// identity, its devices and its registered GPU buffers.
func (t *Transport) Describe(d *metadata.SegmentDesc) {
	pub := published{Version: 1, Socket: t.socket, Identity: t.me, GPUs: t.gpus, Buffers: [][3]uint64{}}
	for _, r := range t.mem.Regions() {
		if r.Device == memory.Host || r.Device >= len(t.gpus) {
			continue
		}
		pub.Buffers = append(pub.Buffers, [3]uint64{r.Addr, r.Length, uint64(r.Device)})
	}
	b, err := json.Marshal(pub)
	if err != nil {
		t.log.Error("encode the CUDA IPC endpoint", zap.Error(err)) // plain values always encode
		return
	}
	if d.Extra == nil {
		d.Extra = map[string]json.RawMessage{}
	}
	d.Extra[Key] = b
}

// RegisterMemory implements transport.Registrar: GPU buffers become
// mappable by peers. It never fails.
func (t *Transport) RegisterMemory(addr, length uint64, location string) error {
	if strings.HasPrefix(location, "cuda:") {
		t.srv.register(addr, length)
	}
	return nil
}

// UnregisterMemory implements transport.Registrar: every peer that mapped
// the buffer drops its mapping before this returns (DropTimeout).
func (t *Transport) UnregisterMemory(addr uint64) error { return t.srv.unregister(addr) }

// peer returns the state of the peer's incarnation, replacing (and tearing
// down in the background) that of an earlier incarnation.
func (t *Transport) peer(peer transport.Peer) (*peerState, error) {
	id := peer.Desc.Instance()
	t.mu.Lock()
	p := t.peers[peer.Name]
	if p != nil && p.instance == id {
		if pi := p.info.Load(); pi.desc != peer.Desc {
			t.mu.Unlock()
			npi, err := decodeEndpoint(peer.Desc, t.uuids)
			if err != nil {
				return nil, fmt.Errorf("%s: peer %q %w", Name, peer.Name, err)
			}
			p.info.Store(npi)
			return p, nil
		}
		t.mu.Unlock()
		return p, nil
	}
	pi, err := decodeEndpoint(peer.Desc, t.uuids)
	if err != nil {
		t.mu.Unlock()
		return nil, fmt.Errorf("%s: peer %q %w", Name, peer.Name, err)
	}
	old := p
	p = newPeerState(t, peer.Name, id, pi)
	t.peers[peer.Name] = p
	t.mu.Unlock()
	if old != nil {
		t.log.Info("same-host peer restarted; the old incarnation's mappings are dropped",
			zap.String("peer", peer.Name), zap.String("instance", id))
		t.closePeerState(old)
	}
	return p, nil
}

func (t *Transport) closePeerState(p *peerState) {
	run := func() {
		if err := p.close(); err != nil {
			t.log.Warn("closing a same-host peer", zap.String("peer", p.name), zap.Error(err))
		}
	}
	if !t.lt.Go(run) {
		run()
	}
}

// Submit implements transport.Transport: the tasks whose remote range is
// GPU memory this process can map are copied here; the others, and all of
// them while a stream is held, go to the fallback.
func (t *Transport) Submit(ctx context.Context, peer transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if !t.lt.Enter() {
		submit.FailAll(tasks, ErrClosed)
		return
	}
	defer t.lt.Exit()
	p, err := t.peer(peer)
	if err != nil {
		submit.FailAll(tasks, err)
		return
	}
	var direct, other []*transport.Task
	for _, task := range tasks {
		switch {
		case task.Length == 0:
			task.Start(1)
			task.PartDone(0, nil)
		case !opts.Held && p.direct(task.Request):
			direct = append(direct, task)
		default:
			other = append(other, task)
		}
	}
	p.toFallback(ctx, peer, other, opts)
	if len(direct) == 0 {
		return
	}
	if opts.Sync {
		t.copyTasks(ctx, p, peer, direct, opts)
		return
	}
	if !t.lt.Go(func() { t.copyTasks(ctx, p, peer, direct, opts) }) {
		submit.FailAll(direct, ErrClosed)
	}
}

// toFallback hands tasks to the peer's fallback transport.
func (p *peerState) toFallback(ctx context.Context, peer transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if len(tasks) == 0 {
		return
	}
	if p.fallback == nil {
		submit.FailAll(tasks, fmt.Errorf("%w %q", ErrNoFallback, peer.Name))
		return
	}
	p.fallback.Submit(ctx, peer, tasks, opts)
}

// inflight is a task whose copies are queued.
type inflight struct {
	task   *transport.Task
	pieces []piece
}

// group is a run of tasks whose copies are waited for together: each queue
// it used marked the group's slot after its copies.
type group struct {
	slot   int
	tasks  []inflight
	bytes  int
	used   map[int]gpu.Copier // by device
	failed error
}

// copyTasks copies the tasks through their mappings on the driver's own
// copy queues, in groups: while one group is copied the next is queued
// behind it, so the copy engines never wait for this goroutine. A task
// whose range the peer cannot export goes to the fallback.
func (t *Transport) copyTasks(ctx context.Context, p *peerState, peer transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	var later []*transport.Task
	queues := map[int]gpu.Copier{}
	var prev *group
	cur := &group{used: map[int]gpu.Copier{}}
	// finish waits for a group's copies and finishes its tasks; a queue
	// that failed is destroyed.
	finish := func(g *group) {
		for ord, c := range g.used {
			if err := c.Wait(g.slot); err != nil {
				g.failed = errors.Join(g.failed, fmt.Errorf("%s: copy on device %d: %w", Name, ord, err))
				if queues[ord] == c {
					delete(queues, ord)
					_ = c.Close()
				}
			}
		}
		for _, f := range g.tasks {
			p.release(f.pieces)
			if g.failed != nil {
				f.task.PartDone(0, g.failed)
			} else {
				f.task.PartDone(f.task.Length, nil)
			}
		}
	}
	// next finishes the group before the current one and starts a new one.
	next := func() {
		if prev != nil {
			finish(prev)
		}
		prev, cur = cur, &group{slot: 1 - cur.slot, used: map[int]gpu.Copier{}}
	}
	defer func() {
		next()
		next()
		for ord, c := range queues {
			t.copiers.Put(ord, c)
		}
		p.toFallback(ctx, peer, later, opts)
	}()
	for i, task := range tasks {
		if err := ctx.Err(); err != nil {
			submit.FailAll(tasks[i:], err)
			return
		}
		if t.lt.Ended() {
			submit.FailAll(tasks[i:], ErrClosed)
			return
		}
		octx, cancel := context.WithTimeout(ctx, t.cfg.openTimeout())
		pieces, err := p.acquire(octx, task.Request)
		cancel()
		if errors.Is(err, errNotMapped) {
			later = append(later, task)
			continue
		}
		if err != nil {
			task.Fail(fmt.Errorf("%s %s of %d bytes at %#x on peer %q: %w", Name, task.Opcode, task.Length, task.Remote, peer.Name, err))
			continue
		}
		task.Start(1)
		cur.tasks = append(cur.tasks, inflight{task, pieces})
		cur.bytes += int(task.Length)
		if err := t.queue(queues, cur, pieces); err != nil {
			cur.failed = err
			next() // the failed group is finished with the next one
			next()
			continue
		}
		if len(cur.tasks) >= batchTasks || cur.bytes >= batchBytes {
			next()
		}
	}
}

// queue queues the pieces' copies, each on a queue of the device holding
// the peer's bytes, marked with the group's slot.
func (t *Transport) queue(queues map[int]gpu.Copier, g *group, pieces []piece) error {
	for _, pc := range pieces {
		c, ok := queues[pc.rm.ord]
		if !ok {
			var err error
			if c, err = t.copiers.Get(pc.rm.ord); err != nil {
				return err
			}
			queues[pc.rm.ord] = c
		}
		g.used[pc.rm.ord] = c
		dst, src := pc.ends()
		if err := c.Copy(g.slot, dst, src, pc.n); err != nil {
			return fmt.Errorf("%s: copy on device %d: %w", Name, pc.rm.ord, err)
		}
	}
	return nil
}

// SubmitOnStream implements transport.StreamSubmitter: when every request's
// remote range is mapped (asking the peer for what is not yet), the copies
// are queued on the caller's stream, followed by an event that keeps their
// mappings from being dropped before the stream has run them. Otherwise
// nothing is queued and the error matches transport.ErrNotOnStream.
func (t *Transport) SubmitOnStream(peer transport.Peer, reqs []transport.Request, stream uintptr, device int) error {
	if !t.lt.Enter() {
		return ErrClosed
	}
	defer t.lt.Exit()
	p, err := t.peer(peer)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(t.lt.Context(), t.cfg.openTimeout())
	defer cancel()
	var all []piece
	defer func() { p.release(all) }()
	for i, r := range reqs {
		if r.Length == 0 {
			continue
		}
		if !p.direct(r) {
			return fmt.Errorf("%s: request %d: [%#x, +%d) of peer %q is not GPU memory mapped here: %w", Name, i, r.Remote, r.Length, peer.Name, transport.ErrNotOnStream)
		}
		ps, err := p.acquire(ctx, r)
		if errors.Is(err, errNotMapped) {
			return fmt.Errorf("%s: request %d: %w: %w", Name, i, transport.ErrNotOnStream, err)
		}
		if err != nil {
			return fmt.Errorf("%s: request %d of peer %q: %w", Name, i, peer.Name, err)
		}
		all = append(all, ps...)
	}
	if len(all) == 0 {
		return nil
	}
	queued := 0
	var qerr error
	for _, pc := range all {
		dst, src := pc.ends()
		if qerr = t.deps.GPU.CopyAsync(stream, device, dst, src, pc.n); qerr != nil {
			break
		}
		queued++
	}
	if queued > 0 {
		ev, err := t.ipc.RecordEvent(stream, device)
		if err != nil {
			// The mappings are then not held for these copies: a drop
			// meanwhile would unmap memory they use.
			t.log.Error("record an event after CUDA IPC copies on a stream", zap.String("peer", peer.Name), zap.Error(err))
			qerr = errors.Join(qerr, err)
		} else {
			p.addPending(ev)
		}
	}
	if qerr != nil {
		return fmt.Errorf("%s: %d of %d copies queued on stream %#x: %w", Name, queued, len(all), stream, qerr)
	}
	return nil
}

// ClosePeer implements transport.Transport: the peer's mappings are dropped
// once their copies are done, and its connection closed.
func (t *Transport) ClosePeer(name string) {
	t.mu.Lock()
	p := t.peers[name]
	delete(t.peers, name)
	t.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.close(); err != nil {
		t.log.Warn("closing a same-host peer", zap.String("peer", name), zap.Error(err))
	}
}

// PeerCloses implements transport.CloseCounter: the fallback's count plus
// the endpoint connections the peer closed.
func (t *Transport) PeerCloses(peer transport.Peer) uint64 {
	var n uint64
	t.mu.Lock()
	p := t.peers[peer.Name]
	t.mu.Unlock()
	if p != nil {
		n = p.closes.Load()
	}
	for _, f := range t.deps.Fallback {
		if f.Accept(peer.Desc) == nil {
			if cc, ok := f.(transport.CloseCounter); ok {
				n += cc.PeerCloses(peer)
			}
			break
		}
	}
	return n
}

// PeerHealth implements transport.HealthReporter: the endpoint connection's
// and the fallback's.
func (t *Transport) PeerHealth(name string) error {
	t.mu.Lock()
	p := t.peers[name]
	t.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.health(); err != nil {
		return err
	}
	if hr, ok := p.fallback.(transport.HealthReporter); ok {
		return hr.PeerHealth(name)
	}
	return nil
}

// Close implements transport.Transport: the endpoint stops, every peer's
// mappings are dropped once their copies are done, goroutines end.
func (t *Transport) Close() error {
	if t.lt.Ended() {
		return nil
	}
	t.lt.End()
	t.srv.close()
	t.mu.Lock()
	peers := t.peers
	t.peers = map[string]*peerState{}
	t.mu.Unlock()
	var errs []error
	for _, p := range peers {
		errs = append(errs, p.close())
	}
	t.lt.Wait()
	errs = append(errs, t.copiers.Close())
	return errors.Join(errs...)
}
