package hostmem

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/transport"
)

// Cross-memory attach: the initiator copies between its memory and the
// target's with process_vm_writev/readv, one system call for up to maxIOV
// ranges on each side, after checking every remote range against the
// target's registration table and pinning its region there.

// seg is one part of a task: at most Config.Chunk bytes.
type seg struct {
	task   *transport.Task
	local  uintptr
	remote uint64
	n      uint64
	ent    tableEnt // the target's region holding the remote range
}

// chunk is what one system call moves: segments of one direction, at most
// maxIOV of them and about Config.Chunk bytes.
type chunk struct {
	write bool
	segs  []seg
}

// cmaJob is the chunks of one Submit. Workers (and a synchronous caller)
// take chunks by index until none is left.
type cmaJob struct {
	ctx    context.Context
	p      *peer
	chunks []chunk
	next   atomic.Int64
}

// take returns the next chunk to copy, or nil.
func (j *cmaJob) take() *chunk {
	i := j.next.Add(1) - 1
	if i >= int64(len(j.chunks)) {
		return nil
	}
	return &j.chunks[i]
}

// runCMA checks the tasks' remote ranges against the peer's table, cuts
// them into chunks, starts every task with its count of parts, and then
// copies: a synchronous call of one chunk on the calling goroutine, larger
// ones on it and the workers, asynchronous ones on the workers.
func (t *Transport) runCMA(ctx context.Context, p *peer, pe transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	p.mu.RLock()
	if p.closed {
		err := p.closeErr
		p.mu.RUnlock()
		for _, task := range tasks {
			task.Fail(p.taskError(task, err))
		}
		return
	}
	snap, err := p.tbl.current()
	p.mu.RUnlock()
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrPeer, err)
		t.peerFailed(p, err, false)
		for _, task := range tasks {
			task.Fail(p.taskError(task, err))
		}
		return
	}
	limit := t.cfg.Chunk
	var chunks []chunk
	var fwd []*transport.Task
	var cur *chunk
	var curBytes uint64
	for _, task := range tasks {
		ent, ok := snap.find(task.Remote, task.Length)
		if !ok {
			if snap.unexported > 0 && t.cfg.Fallback != nil {
				// The target has regions the table could not hold: this
				// may be one; the fallback's server decides.
				fwd = append(fwd, task)
			} else {
				task.Fail(p.taskError(task, fmt.Errorf("range not inside one registered host-memory region of the peer: %w", ErrRejected)))
			}
			continue
		}
		write := task.Opcode == transport.Write
		parts := int((task.Length + limit - 1) / limit)
		task.Start(parts)
		for off := uint64(0); off < task.Length; off += limit {
			n := min(limit, task.Length-off)
			if cur == nil || cur.write != write || len(cur.segs) == maxIOV || curBytes+n > limit && len(cur.segs) > 0 {
				chunks = append(chunks, chunk{write: write})
				cur, curBytes = &chunks[len(chunks)-1], 0
			}
			cur.segs = append(cur.segs, seg{task: task, local: task.Local + uintptr(off), remote: task.Remote + off, n: n, ent: ent})
			curBytes += n
		}
	}
	if len(fwd) > 0 {
		t.forward(ctx, p, pe, fwd, opts)
	}
	if len(chunks) == 0 {
		return
	}
	job := &cmaJob{ctx: ctx, p: p, chunks: chunks}
	if opts.Sync && len(chunks) == 1 {
		b := iovPool.Get().(*iovBuf)
		t.copyChunk(job, &chunks[0], b)
		iovPool.Put(b)
		return
	}
	t.work.push(job, min(len(chunks), t.cfg.Workers))
	if opts.Sync {
		// The caller waits anyway: it copies too.
		b := iovPool.Get().(*iovBuf)
		for c := job.take(); c != nil; c = job.take() {
			t.copyChunk(job, c, b)
		}
		iovPool.Put(b)
	}
}

// iovBuf holds the vectors of one system call, reused.
type iovBuf struct {
	local, remote []iovec
	pinned        []tableEnt
	ok            []bool
	order         []int32 // the segments to copy, in copy order
	keys          []sortKey
}

type sortKey struct {
	remote uint64
	i      int32
}

var iovPool = sync.Pool{New: func() any { return &iovBuf{} }}

// copyChunk copies one chunk and finishes its segments.
func (t *Transport) copyChunk(job *cmaJob, c *chunk, b *iovBuf) {
	p := job.p
	p.mu.RLock()
	defer p.mu.RUnlock()
	fail := func(segs []seg, err error) {
		for _, s := range segs {
			s.task.PartDone(0, p.segError(s, err))
		}
	}
	switch {
	case p.closed:
		fail(c.segs, p.closeErr)
		return
	case p.failure() != nil:
		fail(c.segs, p.failure())
		return
	case job.ctx.Err() != nil:
		fail(c.segs, job.ctx.Err())
		return
	case p.pidfd >= 0 && exited(p.pidfd):
		// Checked before every call: a pid is never written to once its
		// process has exited, whoever reuses the number.
		err := fmt.Errorf("the peer's process (pid %d) exited: %w", p.pid, ErrPeer)
		t.peerFailed(p, err, true)
		fail(c.segs, err)
		return
	}
	// Pin each region once; refuse the segments whose region is going.
	b.pinned = b.pinned[:0]
	ok := append(b.ok[:0], make([]bool, len(c.segs))...)
	b.ok = ok
	last := -1
	for i, s := range c.segs {
		if last >= 0 && b.pinned[last].slot == s.ent.slot && b.pinned[last].state == s.ent.state {
			ok[i] = true
			continue
		}
		found := false
		for k, e := range b.pinned {
			if e.slot == s.ent.slot && e.state == s.ent.state {
				last, found, ok[i] = k, true, true
				break
			}
		}
		if found {
			continue
		}
		if p.tbl.pin(s.ent) {
			b.pinned = append(b.pinned, s.ent)
			last, ok[i] = len(b.pinned)-1, true
		} else {
			s.task.PartDone(0, p.segError(s, fmt.Errorf("the peer is unregistering the region: %w", ErrRejected)))
		}
	}
	defer func() {
		for _, e := range b.pinned {
			p.tbl.unpin(e.slot)
		}
	}()
	// Copy in the order of the remote addresses: ranges that touch there
	// merge into one iovec, and the kernel pins each run of pages once
	// (scattered pages of a KV cache are often neighbours). The two sides
	// of the call are separate streams of bytes, so the local ranges follow
	// in the same order.
	b.order = b.order[:0]
	sorted := true
	var total uint64
	for i, s := range c.segs {
		if !ok[i] {
			continue
		}
		if n := len(b.order); n > 0 && c.segs[b.order[n-1]].remote > s.remote {
			sorted = false
		}
		b.order = append(b.order, int32(i))
		total += s.n
	}
	if total == 0 {
		return
	}
	if !sorted {
		// Sort compact (address, index) pairs, not indices into the
		// segments: half the time.
		b.keys = b.keys[:0]
		for _, i := range b.order {
			b.keys = append(b.keys, sortKey{c.segs[i].remote, i})
		}
		slices.SortFunc(b.keys, func(x, y sortKey) int { return cmp.Compare(x.remote, y.remote) })
		for k, key := range b.keys {
			b.order[k] = key.i
		}
	}
	b.local, b.remote = b.local[:0], b.remote[:0]
	for _, i := range b.order {
		s := &c.segs[i]
		b.local = appendIOV(b.local, s.local, s.n)
		b.remote = appendIOV(b.remote, uintptr(s.remote), s.n)
	}
	n, err := cma(c.write, p.pid, b.local, b.remote)
	if err == nil && uint64(n) == total {
		for _, i := range b.order {
			s := &c.segs[i]
			s.task.PartDone(s.n, nil)
		}
		return
	}
	// Part of the chunk moved: finish what did, then retry the rest one
	// segment at a time, so that a fault fails only its own task.
	done := uint64(max(n, 0))
	for _, i := range b.order {
		s := &c.segs[i]
		if done >= s.n {
			done -= s.n
			s.task.PartDone(s.n, nil)
			continue
		}
		done = 0
		if err := p.failure(); err != nil {
			s.task.PartDone(0, p.segError(*s, err))
			continue
		}
		one, err := cma(c.write, p.pid, []iovec{{base: s.local, len: s.n}}, []iovec{{base: uintptr(s.remote), len: s.n}})
		switch {
		case err == nil && uint64(one) == s.n:
			s.task.PartDone(s.n, nil)
		case errnoIs(err, errESRCH, errEPERM, errEACCES):
			// The process is gone, or no longer lets us in (it exec'd
			// something else, or the number is another's).
			perr := fmt.Errorf("cross-memory attach to pid %d: %w: %w", p.pid, ErrPeer, err)
			t.peerFailed(p, perr, errnoIs(err, errESRCH))
			s.task.PartDone(0, p.segError(*s, perr))
		case err != nil:
			s.task.PartDone(0, p.segError(*s, fmt.Errorf("%w: %w", ErrCopy, err)))
		default:
			s.task.PartDone(0, p.segError(*s, fmt.Errorf("%w: %d of %d bytes", ErrCopy, one, s.n)))
		}
	}
}

// appendIOV appends a range, merged into the last one when they touch: the
// kernel treats each side as one stream of bytes, so the two sides need not
// pair up.
func appendIOV(v []iovec, base uintptr, n uint64) []iovec {
	if k := len(v) - 1; k >= 0 && v[k].base+uintptr(v[k].len) == base {
		v[k].len += n
		return v
	}
	return append(v, iovec{base: base, len: n})
}

// segError wraps err for one part of a task.
func (p *peer) segError(s seg, err error) error {
	return &PeerError{Peer: p.name, Path: pathName(p.path), Op: s.task.Opcode.String(), Remote: s.remote, Size: s.n, Err: err}
}

// workQueue holds the jobs the workers copy, first in first out. A job is
// queued once per worker that may help with it.
type workQueue struct {
	mu     sync.Mutex
	jobs   []*cmaJob // guarded by mu
	closed bool      // guarded by mu
	err    error     // guarded by mu: why closed
	wake   chan struct{}
}

func (q *workQueue) init(workers int) { q.wake = make(chan struct{}, workers) }

func (q *workQueue) push(j *cmaJob, copies int) {
	q.mu.Lock()
	if q.closed {
		err := q.err
		q.mu.Unlock()
		failJob(j, err)
		return
	}
	for range copies {
		q.jobs = append(q.jobs, j)
	}
	q.mu.Unlock()
	for range copies {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

func (q *workQueue) pop() *cmaJob {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.jobs) == 0 {
		return nil
	}
	j := q.jobs[0]
	q.jobs[0] = nil
	q.jobs = q.jobs[1:]
	return j
}

// close fails every queued job's remaining chunks with err.
func (q *workQueue) close(err error) {
	q.mu.Lock()
	q.closed, q.err = true, err
	jobs := q.jobs
	q.jobs = nil
	q.mu.Unlock()
	for _, j := range jobs {
		failJob(j, err)
	}
}

// failJob finishes the chunks of j nobody has taken.
func failJob(j *cmaJob, err error) {
	for c := j.take(); c != nil; c = j.take() {
		for _, s := range c.segs {
			s.task.PartDone(0, j.p.segError(s, err))
		}
	}
}

// worker copies queued jobs until the transport closes.
func (t *Transport) worker() {
	defer t.wg.Done()
	b := &iovBuf{}
	for {
		j := t.work.pop()
		if j == nil {
			select {
			case <-t.work.wake:
				continue
			case <-t.ctx.Done():
				return
			}
		}
		for c := j.take(); c != nil; c = j.take() {
			t.copyChunk(j, c, b)
		}
	}
}
