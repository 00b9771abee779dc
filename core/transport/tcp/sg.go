package tcp

import (
	"context"

	"github.com/pymooncake/pymooncake/core/transport"
)

// Scatter-gather requests: how the client groups tasks into them.
const (
	// sgMaxRanges bounds the ranges a client puts in one request: the
	// table stays at 16 KiB and a readv or writev takes the ranges in one
	// call.
	sgMaxRanges = maxIOV
	// sgMaxBytes bounds the bytes of one request: big enough that a
	// header and a reply per request cost nothing, small enough that a
	// batch still spreads over the lanes.
	sgMaxBytes = 4 << 20
	// sgMinBytes is the size below which a batch is not spread over the
	// lanes: one request (and one round trip) serves it.
	sgMinBytes = 256 << 10
	// sgMaxRange is the largest task that travels in a scatter-gather
	// request; larger ones go alone, split over the lanes.
	sgMaxRange = 1 << 20
)

// builder turns one Submit's tasks into wire requests.
type builder struct {
	t   *Transport
	p   *peer
	ctx context.Context
	v1  bool
	sg  bool // the peer serves scatter-gather requests

	reqs []wreq
	// The open group: tasks[first:] of the tasks being added, of opcode
	// op, bytes in all.
	tasks   []*transport.Task
	first   int
	open    bool
	op      transport.Opcode
	bytes   uint64
	target  uint64 // bytes a group aims at: the batch spread over the lanes
	grouped int
}

// start prepares the builder for tasks.
func (b *builder) start(tasks []*transport.Task) {
	b.tasks = tasks
	if !b.sg {
		return
	}
	var total uint64
	for _, t := range tasks {
		total += t.Length
	}
	b.target = min(max(total/uint64(b.t.cfg.Lanes), sgMinBytes), sgMaxBytes)
}

// groupable reports whether task may travel in a scatter-gather request:
// the peer serves them, it is small, and its local memory is host memory
// (GPU memory goes through staging buffers, one request at a time).
func (b *builder) groupable(task *transport.Task) bool {
	if !b.sg || task.Length > sgMaxRange {
		return false
	}
	g := b.t.cfg.GPU
	return g == nil || g.Device(uint64(task.Local), task.Length) < 0
}

// add puts tasks[i] in the open group, closing the group first when it
// would grow past its bounds or change opcode. Groups are runs of
// consecutive tasks, so a group is a subslice of the Submit's tasks: no
// allocation per group.
func (b *builder) add(tasks []*transport.Task, i int) {
	t := tasks[i]
	if b.open && (t.Opcode != b.op || i-b.first >= sgMaxRanges || b.bytes+t.Length > b.target) {
		b.flush(i)
	}
	if !b.open {
		b.open, b.first, b.op, b.bytes = true, i, t.Opcode, 0
	}
	b.bytes += t.Length
	t.Start(1)
}

// flush closes the open group, whose last task is tasks[end-1].
func (b *builder) flush(end int) {
	if !b.open {
		return
	}
	b.open = false
	group := b.tasks[b.first:end]
	if len(group) == 1 {
		// One task: the plain framing says the same with less.
		t := group[0]
		b.reqs = append(b.reqs, wreq{ctx: b.ctx, write: t.Opcode == transport.Write, n: t.Length, task: t, local: t.Local, remote: t.Remote})
		return
	}
	b.reqs = append(b.reqs, wreq{ctx: b.ctx, write: b.op == transport.Write, n: b.bytes, sg: group})
}

// plain adds task as plain requests, split over the lanes when large.
func (b *builder) plain(task *transport.Task) {
	n := task.Length
	size := n
	if n >= b.t.cfg.SplitThreshold {
		parts := max(1, min(uint64(b.t.cfg.Lanes), n/minPart))
		size = (n + parts - 1) / parts
	}
	task.Start(int((n + size - 1) / size))
	for off := uint64(0); off < n; off += size {
		b.reqs = append(b.reqs, wreq{
			ctx:    b.ctx,
			task:   task,
			local:  task.Local + uintptr(off),
			remote: task.Remote + off,
			n:      min(size, n-off),
			write:  task.Opcode == transport.Write,
			v1:     b.v1,
		})
	}
}
