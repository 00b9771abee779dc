package submit

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/transport"
)

// Target is the name of the segment a Submit goes to: its descriptor's
// name when it has one (the engine may have opened it by another), else
// the peer's.
func Target(peer transport.Peer) string {
	if peer.Desc != nil && peer.Desc.Name != "" {
		return peer.Desc.Name
	}
	return peer.Name
}

// FailAll fails every task with err.
func FailAll(tasks []*transport.Task, err error) {
	for _, task := range tasks {
		task.Fail(err)
	}
}

// Parts cuts each task with cut and starts it with its number of parts,
// before any part can be posted, and returns every part in task order. A
// task of zero length completes at once; a task that cut refuses fails
// with its error, prefixed with the request and the peer (proto names the
// transport in the message).
func Parts[P any](proto, peer string, tasks []*transport.Task, cut func(*transport.Task) ([]P, error)) []P {
	var all []P
	for _, task := range tasks {
		if task.Length == 0 {
			task.Start(1)
			task.PartDone(0, nil)
			continue
		}
		ps, err := cut(task)
		if err != nil {
			task.Fail(fmt.Errorf("%s %s of %d bytes at %#x on peer %q: %w", proto, task.Opcode, task.Length, task.Remote, peer, err))
			continue
		}
		task.Start(len(ps))
		all = append(all, ps...)
	}
	return all
}

// Call is one Submit call: its context, and its parts not yet finished.
type Call struct {
	ctx       context.Context
	remaining atomic.Int64
	stop      atomic.Pointer[func() bool]
}

// NewCall returns the Call of a Submit under ctx.
func NewCall(ctx context.Context) *Call { return &Call{ctx: ctx} }

// Err is the context's error: non-nil once it ended.
func (c *Call) Err() error { return c.ctx.Err() }

// Expect declares n more unfinished parts. Call it before any of them can
// finish.
func (c *Call) Expect(n int) { c.remaining.Add(int64(n)) }

// Watch runs f once the context ends, unless every part has finished
// first. A context that never ends is not watched.
func (c *Call) Watch(f func()) {
	if c.ctx.Done() == nil {
		return
	}
	stop := context.AfterFunc(c.ctx, f)
	c.stop.Store(&stop)
	if c.remaining.Load() <= 0 {
		stop() // every part finished before the watch was in place
	}
}

// PartDone records that one part finished; the last releases the watch.
func (c *Call) PartDone() {
	if c.remaining.Add(-1) == 0 {
		if stop := c.stop.Load(); stop != nil {
			(*stop)()
		}
	}
}
