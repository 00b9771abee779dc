package rdma

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/pymooncake/pymooncake/core/internal/slicing"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/memreg"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

const (
	opRead  = transport.Read
	opWrite = transport.Write
)

// slice is one work request's worth of a task.
type slice struct {
	call   *submit.Call
	task   *transport.Task
	route  *route
	op     transport.Opcode
	local  uint64
	remote uint64
	length uint32
	retry  int

	// Chosen for the current try.
	lchunk     *chunk
	rbuf       *metadata.BufferDesc // in route.bufs
	lkey, rkey uint32
	localNIC   string
	peerNIC    string

	// Set while posted.
	ep *endpoint
	qp *qpState
}

// finish reports the slice's outcome to its task, exactly once.
func (s *slice) finish(err error) {
	if err != nil {
		if _, ok := err.(*SliceError); !ok {
			err = s.error(err, false)
		}
		s.task.PartDone(0, err)
	} else {
		s.task.PartDone(uint64(s.length), nil)
	}
	s.call.PartDone()
}

func (s *slice) error(err error, exhausted bool) *SliceError {
	return &SliceError{Peer: s.route.name, Op: s.op.String(), Remote: s.remote, Length: uint64(s.length),
		LocalNIC: s.localNIC, PeerNIC: s.peerNIC, Retries: s.retry, Exhausted: exhausted, Err: err}
}

// route is a peer descriptor prepared for slicing: its buffers sorted by
// address and its matrix resolved through its devices[].
type route struct {
	name     string
	desc     *metadata.SegmentDesc
	bufs     *memreg.Published
	resolved *topology.Resolved
	devIndex map[string]int
}

// routeFor returns the prepared form of desc, reusing the last one made for
// that peer when the descriptor is the same object.
func (t *Transport) routeFor(name string, desc *metadata.SegmentDesc) (*route, error) {
	p := t.peer(name)
	if r := p.route.Load(); r != nil && r.desc == desc {
		return r, nil
	}
	if desc.Protocol != Protocol {
		return nil, fmt.Errorf("peer %q publishes protocol %q, not %q: %w", name, desc.Protocol, Protocol, ErrNoPath)
	}
	if len(desc.Devices) == 0 {
		return nil, fmt.Errorf("peer %q publishes no rdma device: %w", name, ErrNoPath)
	}
	r := &route{name: name, desc: desc, devIndex: map[string]int{}}
	names := make([]string, len(desc.Devices))
	for i, d := range desc.Devices {
		names[i] = d.Name
		if _, ok := r.devIndex[d.Name]; !ok {
			r.devIndex[d.Name] = i
		}
	}
	r.resolved = topology.Resolve(names, desc.PriorityMatrix)
	// A buffer without one key per device cannot be addressed.
	r.bufs = memreg.Publish(desc.Buffers, func(b *metadata.BufferDesc) bool { return len(b.RKey) == len(desc.Devices) })
	p.route.Store(r)
	return r, nil
}

// Submit starts tasks against the peer whose descriptor is desc (the
// target segment's). Every task ends through Task.PartDone: a task is cut
// into slices of at most SliceSize bytes (the last may take up to
// FragmentLimit more; no slice crosses a local or remote buffer boundary)
// and started with that count before any slice is posted. Submit never
// blocks on the network. When ctx ends, slices not yet posted fail with its
// error; posted ones complete as the NIC completes them, so a task never
// finishes while the NIC may still write its memory.
func (t *Transport) Submit(ctx context.Context, peer transport.Peer, tasks []*transport.Task, _ transport.SubmitOptions) {
	desc, name := peer.Desc, submit.Target(peer)
	if !t.life.Enter() {
		submit.FailAll(tasks, fmt.Errorf("rdma submit to %q: %w", name, ErrClosed))
		return
	}
	defer t.life.Exit()
	if desc == nil {
		submit.FailAll(tasks, fmt.Errorf("rdma submit to %q: no descriptor: %w", name, ErrNoPath))
		return
	}
	rt, err := t.routeFor(name, desc)
	if err != nil {
		submit.FailAll(tasks, fmt.Errorf("rdma submit: %w", err))
		return
	}
	call := submit.NewCall(ctx)
	all := submit.Parts("rdma", name, tasks, func(task *transport.Task) ([]*slice, error) { return t.cut(task, rt, call) })
	if len(all) == 0 {
		return
	}
	call.Expect(len(all))
	groups := t.place(all)
	if ctx.Done() != nil {
		eps := make([]*endpoint, 0, len(groups))
		for ep := range groups {
			eps = append(eps, ep)
		}
		call.Watch(func() {
			for _, ep := range eps {
				ep.purgeCanceled()
			}
		})
	}
	for ep, ss := range groups {
		ep.enqueue(ss)
	}
}

// cut slices a task (see Submit) with the shared slicer: a slice ends at
// SliceSize (the rest stays whole up to FragmentLimit more), at the end of
// the local chunk and at the end of the remote buffer that hold its start.
func (t *Transport) cut(task *transport.Task, rt *route, call *submit.Call) ([]*slice, error) {
	if task.Opcode != opRead && task.Opcode != opWrite {
		return nil, fmt.Errorf("opcode %d: %w", task.Opcode, ErrInvalidConfig)
	}
	local, remote, length := uint64(task.Local), task.Remote, task.Length
	slice64 := uint64(t.cfg.SliceSize)
	if n := length/slice64 + 1; n > math.MaxInt32 {
		return nil, fmt.Errorf("%d bytes make too many slices: %w", length, ErrInvalidConfig)
	}
	pieces, err := slicing.Cut(t.mem.Find, rt.bufs.Find, local, remote, length,
		slicing.Limits{Max: slice64, Fragment: uint64(t.cfg.FragmentLimit)})
	if err != nil {
		var re *slicing.RangeError
		if errors.As(err, &re) && re.Side == slicing.Remote && !re.Wraps {
			return nil, fmt.Errorf("remote [%#x, +%d) is not in a buffer peer %q published: %w", re.Addr, re.Length, rt.name, ErrAddressNotRegistered)
		}
		return nil, fmt.Errorf("%w: %w", err, ErrAddressNotRegistered)
	}
	out := make([]*slice, len(pieces))
	for i, p := range pieces {
		out[i] = &slice{call: call, task: task, route: rt, op: task.Opcode,
			local: local + p.Offset, remote: remote + p.Offset, length: uint32(p.Length), lchunk: p.Local, rbuf: p.Remote}
	}
	return out, nil
}

// place chooses NICs and endpoints for slices and groups them by endpoint.
// Slices that cannot be placed finish with the error.
func (t *Transport) place(ss []*slice) map[*endpoint][]*slice {
	groups := map[*endpoint][]*slice{}
	type key struct {
		ctx  int
		path string
	}
	eps := map[key]*endpoint{}
	for _, s := range ss {
		c, path, err := t.choose(s)
		if err != nil {
			s.finish(err)
			continue
		}
		k := key{c.id, path}
		ep, ok := eps[k]
		if !ok {
			ep, err = c.store.getOrCreate(path, func() (*endpoint, error) { return newEndpoint(c, path) })
			if err != nil {
				// Creating QPs failed: try the slice elsewhere.
				t.retry([]*slice{s}, err)
				continue
			}
			dev := s.route.desc.Devices[s.route.devIndex[s.peerNIC]]
			ep.mu.Lock()
			ep.peerGID, ep.peerLID = dev.GID, dev.LID
			ep.mu.Unlock()
			eps[k] = ep
		}
		groups[ep] = append(groups[ep], s)
	}
	return groups
}

// choose picks the local HCA and the peer NIC for a slice's current try.
// Try 0 picks at random (or round robin) among the preferred NICs of the
// memory's location. Retry r rotates deterministically: the peer NIC
// through every candidate of the remote location, and the local HCA one
// step each time the peer NICs have all been tried, so every pair is used
// before any repeats. Out-of-service local HCAs are skipped.
func (t *Transport) choose(s *slice) (*hcaContext, string, error) {
	rt := s.route
	loc := s.lchunk.Location
	rloc := s.rbuf.Name
	nRemote := max(rt.resolved.Candidates(rloc), 1)
	localRetry := 0
	if s.retry > 0 {
		localRetry = 1 + (s.retry-1)/nRemote
	}
	var c *hcaContext
	nLocal := t.local.Candidates(loc)
	// Try 0 is the pick; tries 1..n rotate through every candidate.
	for try := 0; try <= nLocal; try++ {
		r := localRetry + try
		d, err := t.local.Select(loc, r, t.pick(&t.rrLocal), -1)
		if err != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrNoPath, err)
		}
		if t.ctxs[d].active() {
			c = t.ctxs[d]
			break
		}
	}
	if c == nil {
		return nil, "", fmt.Errorf("no local hca in service for %q: %w", loc, ErrNoPath)
	}
	hint := -1
	if t.cfg.DestDeviceAffinity {
		if i, ok := rt.devIndex[c.name]; ok {
			hint = i
		}
	}
	rd, err := rt.resolved.Select(rloc, s.retry, t.pick(&t.rrRemote), hint)
	if err != nil {
		return nil, "", fmt.Errorf("peer %q: %w: %w", rt.name, ErrNoPath, err)
	}
	b := s.rbuf
	if rd >= len(b.RKey) || c.id >= len(s.lchunk.LKeys) {
		return nil, "", fmt.Errorf("peer %q device %d has no key: %w", rt.name, rd, ErrNoPath)
	}
	s.lkey = s.lchunk.LKeys[c.id]
	s.rkey = b.RKey[rd]
	s.localNIC = nicPath(t.name, c.name)
	s.peerNIC = rt.desc.Devices[rd].Name
	return c, nicPath(rt.name, s.peerNIC), nil
}

// retry gives failed slices another try on a rotated path, or fails them
// when their retries are used up or the transport is closed.
func (t *Transport) retry(ss []*slice, cause error) {
	var again []*slice
	for _, s := range ss {
		switch {
		case t.life.Ended():
			s.finish(ErrClosed)
		case s.call.Err() != nil:
			s.finish(s.call.Err())
		case s.retry >= t.cfg.RetryCnt:
			se := s.error(cause, true)
			t.peerFailed(s.route.name, se)
			s.finish(se)
		default:
			s.retry++
			again = append(again, s)
		}
	}
	t.requeue(again)
}

// requeue places slices again without charging a retry (their endpoint was
// evicted or left service before they were posted).
func (t *Transport) requeue(ss []*slice) {
	if len(ss) == 0 {
		return
	}
	if t.life.Ended() {
		finishAll(ss, ErrClosed)
		return
	}
	for ep, group := range t.place(ss) {
		ep.enqueue(group)
	}
}
