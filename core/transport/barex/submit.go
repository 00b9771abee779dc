package barex

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/internal/slicing"
	"github.com/pymooncake/pymooncake/core/internal/slots"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/memreg"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

// pollBatch is how many completions one mcbx_poll asks for.
const pollBatch = 64

// maxPieces bounds the pieces of one task (a task counts its parts in 32
// bits).
const maxPieces = 1 << 30

// maxBatch bounds the elements of one barex batch; a longer share of a
// channel is posted as several batches.
const maxBatch = 256

// route is a peer descriptor prepared for slicing: its buffers sorted by
// address.
type route struct {
	desc *metadata.SegmentDesc
	bufs *memreg.Published
}

// routeFor returns the prepared form of desc, reusing the last one made
// for the peer when the descriptor is the same object.
func (p *peer) routeFor(desc *metadata.SegmentDesc) (*route, error) {
	if r := p.route.Load(); r != nil && r.desc == desc {
		return r, nil
	}
	if desc.Protocol != Protocol {
		return nil, fmt.Errorf("peer %q publishes protocol %q, not %q: %w", p.name, desc.Protocol, Protocol, ErrAddressNotRegistered)
	}
	// A buffer without keys cannot be addressed. Overlapping buffers (a
	// malformed descriptor) would make a piece's key ambiguous: the first
	// of each overlap is kept.
	var end uint64
	r := &route{desc: desc, bufs: memreg.Publish(desc.Buffers, func(b *metadata.BufferDesc) bool {
		if len(b.RKey) == 0 || b.Addr < end {
			return false
		}
		end = b.Addr + b.Length
		return true
	})}
	p.route.Store(r)
	return r, nil
}

// piece is one barex element of a task: inside one local chunk and one
// remote buffer.
type piece struct {
	call          *submit.Call
	task          *transport.Task
	peer          string
	op            transport.Opcode
	local, remote uint64
	length        uint32
	lchunk        *chunk
	rbuf          *metadata.BufferDesc
	dev           device
}

// finish reports the piece's outcome to its task, exactly once; ch is the
// channel it was posted on (nil if none).
func (p *piece) finish(ch *channel, err error) {
	if err != nil {
		var se *SliceError
		if !errors.As(err, &se) {
			nic := -1
			if ch != nil {
				nic = ch.peerNIC
			}
			err = &SliceError{Peer: p.peer, Op: p.op.String(), Remote: p.remote, Length: uint64(p.length),
				Device: p.dev.name, PeerNIC: nic, Err: err}
		}
		p.task.PartDone(0, err)
	} else {
		p.task.PartDone(uint64(p.length), nil)
	}
	p.call.PartDone()
}

func finishAll(ps []*piece, err error) {
	for _, p := range ps {
		p.finish(nil, err)
	}
}

// Submit starts tasks against the peer whose descriptor is desc (the
// target segment's). Every task ends through Task.PartDone. A task is cut
// by the shared slicer at RegChunkSize and at every local and remote chunk
// boundary, and started with that count before any piece is posted; each
// piece gets a local device from the priority matrix of its memory's
// location (or at random, BAREX_USE_RANDOM_DEV); the pieces of one device
// go round robin over its channels to the peer, which are set up on first
// use. Submit never blocks on the network. When ctx ends, pieces not yet
// posted fail with its error; posted ones complete as barex reports them,
// so a task never finishes while barex may still write its memory.
func (t *Transport) Submit(ctx context.Context, peer transport.Peer, tasks []*transport.Task, _ transport.SubmitOptions) {
	desc, name := peer.Desc, submit.Target(peer)
	if !t.life.Enter() {
		submit.FailAll(tasks, fmt.Errorf("barex submit to %q: %w", name, ErrClosed))
		return
	}
	defer t.life.Exit()
	if desc == nil {
		submit.FailAll(tasks, fmt.Errorf("barex submit to %q: no descriptor: %w", name, ErrAddressNotRegistered))
		return
	}
	p := t.peerFor(name, peer.Host)
	rt, err := p.routeFor(desc)
	if err != nil {
		submit.FailAll(tasks, fmt.Errorf("barex submit: %w", err))
		return
	}
	call := submit.NewCall(ctx)
	all := submit.Parts("barex", name, tasks, func(task *transport.Task) ([]*piece, error) { return t.cut(task, rt, call, name) })
	if len(all) == 0 {
		return
	}
	call.Expect(len(all))
	byDev := map[int][]*piece{}
	for _, pc := range all {
		byDev[pc.dev.index] = append(byDev[pc.dev.index], pc)
	}
	sets := make(map[*chanSet][]*piece, len(byDev))
	var orphans []*piece
	var setErr error
	for idx, ps := range byDev {
		s, err := p.set(t.devs[idx])
		if err != nil {
			orphans, setErr = append(orphans, ps...), err
			continue
		}
		sets[s] = ps
	}
	if ctx.Done() != nil && len(sets) > 0 {
		watched := make([]*chanSet, 0, len(sets))
		for s := range sets {
			watched = append(watched, s)
		}
		call.Watch(func() {
			for _, s := range watched {
				s.purgeCanceled()
			}
		})
	}
	finishAll(orphans, setErr)
	for s, ps := range sets {
		s.submit(ps)
	}
}

// cut slices a task and picks each piece's local device.
func (t *Transport) cut(task *transport.Task, rt *route, call *submit.Call, name string) ([]*piece, error) {
	if task.Opcode != transport.Read && task.Opcode != transport.Write {
		return nil, fmt.Errorf("opcode %d: %w", task.Opcode, ErrInvalidConfig)
	}
	if task.Length/t.cfg.RegChunkSize >= maxPieces/2 {
		return nil, fmt.Errorf("%d bytes make too many pieces of %d: %w", task.Length, t.cfg.RegChunkSize, ErrInvalidConfig)
	}
	pieces, err := slicing.Cut(t.mem.Find, rt.bufs.Find, uint64(task.Local), task.Remote, task.Length,
		slicing.Limits{Max: t.cfg.RegChunkSize})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, ErrAddressNotRegistered)
	}
	if len(pieces) > maxPieces {
		return nil, fmt.Errorf("%d pieces: %w", len(pieces), ErrInvalidConfig)
	}
	out := make([]*piece, len(pieces))
	for i, pc := range pieces {
		dev, err := t.chooseDevice(pc.Local)
		if err != nil {
			return nil, err
		}
		out[i] = &piece{call: call, task: task, peer: name, op: task.Opcode,
			local: uint64(task.Local) + pc.Offset, remote: task.Remote + pc.Offset, length: uint32(pc.Length),
			lchunk: pc.Local, rbuf: pc.Remote, dev: dev}
	}
	return out, nil
}

// chooseDevice picks the local device for memory in ch: by the priority
// matrix of its location, at random among the preferred devices (barex
// stripes pieces over NICs), or uniformly at random with
// BAREX_USE_RANDOM_DEV.
func (t *Transport) chooseDevice(ch *chunk) (device, error) {
	if t.cfg.RandomDevice {
		return t.devs[rand.IntN(len(t.devs))], nil
	}
	i, err := t.local.Select(ch.Location, 0, rand.Uint64(), -1)
	if err != nil || i < 0 || i >= len(t.devs) {
		return device{}, fmt.Errorf("no local device for %q memory: %w", ch.Location, errors.Join(err, ErrChannel))
	}
	return t.devs[i], nil
}

// batch is one mcbx_post: the pieces whose completion it carries.
type batch struct {
	ch     *channel
	pieces []*piece
}

func (b *batch) finish(err error) {
	for _, p := range b.pieces {
		p.finish(b.ch, err)
	}
}

// post posts a channel's share, writes and reads as batches of at most
// maxBatch elements each. A
// piece the channel cannot address (no key for its peer NIC) and a piece
// whose context ended fail alone; a post the shim refuses fails exactly
// its batch's pieces (Mooncake B6 left them unmarked).
func (t *Transport) post(ch *channel, ps []*piece) {
	var writes, reads []*piece
	for _, p := range ps {
		if p.op == transport.Read {
			reads = append(reads, p)
		} else {
			writes = append(writes, p)
		}
	}
	for _, g := range []struct {
		op transport.Opcode
		ps []*piece
	}{{transport.Write, writes}, {transport.Read, reads}} {
		for len(g.ps) > 0 {
			n := min(len(g.ps), maxBatch)
			t.postBatch(ch, g.op, g.ps[:n])
			g.ps = g.ps[n:]
		}
	}
}

func (t *Transport) postBatch(ch *channel, op transport.Opcode, ps []*piece) {
	if len(ps) == 0 {
		return
	}
	v := make([]sge, 0, len(ps))
	good := make([]*piece, 0, len(ps))
	for _, p := range ps {
		if err := p.call.Err(); err != nil {
			p.finish(ch, err)
			continue
		}
		if ch.peerNIC < 0 || ch.peerNIC >= len(p.rbuf.RKey) || ch.localNIC < 0 || ch.localNIC >= len(p.lchunk.LKeys) {
			p.finish(ch, fmt.Errorf("%w: peer nic %d, local nic %d", ErrNoKey, ch.peerNIC, ch.localNIC))
			continue
		}
		e := sge{laddr: p.local, raddr: p.remote, length: p.length,
			lkey: p.lchunk.LKeys[ch.localNIC], rkey: p.rbuf.RKey[ch.peerNIC], memType: memCPU}
		if p.lchunk.Native.gpu {
			e.memType, e.deviceID = memGPU, int16(p.lchunk.Native.gpuID)
		}
		v = append(v, e)
		good = append(good, p)
	}
	if len(good) == 0 {
		return
	}
	b := &batch{ch: ch, pieces: good}
	cookie := t.batches.Put(b)
	t.life.Posted(1)
	if err := t.nat.Post(ch.handle, op, v, cookie); err != nil {
		if t.batches.Take(cookie) == nil {
			return // cannot happen: a refused post has no completion
		}
		t.life.Completed(1)
		t.dlog.Warn("barex post failed", zap.String("peer", good[0].peer), zap.String("device", good[0].dev.name), zap.Error(err))
		b.finish(channelError(ch, "post", err))
	}
}

// pollLoop waits in the netpoller for the shim's eventfd and drains its
// completion queue; Close ends it by closing the fd.
func (t *Transport) pollLoop() {
	defer t.pollWG.Done()
	var buf [8]byte
	dones := make([]done, pollBatch)
	for {
		t.drainCompletions(dones)
		if _, err := t.events.Read(buf[:]); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				t.log.Error("barex completion fd failed; completions now arrive only at close", zap.Error(err))
			}
			return
		}
	}
}

// drainCompletions finishes every queued completion.
func (t *Transport) drainCompletions(dones []done) {
	for {
		n := t.nat.Poll(dones)
		for _, d := range dones[:n] {
			t.complete(d)
		}
		if n < len(dones) {
			return
		}
	}
}

// complete finishes the batch of one completion. A cookie that names no
// batch in flight (stale, or corrupted) is never acted on.
func (t *Transport) complete(d done) {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error("barex completion handler panicked", zap.Uint64("cookie", d.cookie), zap.Any("panic", r), zap.Stack("stack"))
		}
	}()
	b := t.batches.Take(d.cookie)
	if b == nil {
		t.dlog.Warn("completion for an unknown barex batch", zap.Uint64("cookie", d.cookie))
		return
	}
	t.life.Completed(1)
	if d.status == 0 {
		b.finish(nil)
		return
	}
	b.finish(channelError(b.ch, "batch", Code(d.status)))
}

// slab maps cookies to batches in flight. A cookie is generation<<32 |
// slot: the shim only ever sees the integer, and a completion whose
// generation does not match its slot is ignored instead of touching a
// reused record (STYLE (b).5).
type slab = slots.Table[batch]
