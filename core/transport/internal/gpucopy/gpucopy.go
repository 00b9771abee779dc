// Package gpucopy keeps the copy queues (gpu.Copier) that the same-host
// transports (inproc, cudaipc) move GPU memory with: non-blocking streams of
// the driver's own, never the legacy default stream, which a
// stream-ordered transfer may be holding. Idle queues are kept per device
// for reuse; a queue whose copy failed is destroyed, never reused (a CUDA
// error may be sticky). The owner closes the Pool after its last use.
package gpucopy

import (
	"errors"
	"fmt"
	"sync"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// ErrClosed is a Get on a closed Pool.
var ErrClosed = errors.New("gpucopy: pool closed")

// idleKept is how many idle queues a device keeps.
const idleKept = 8

// Slots is the number of completion marks of a lent queue: a caller can
// wait for one group of copies while the next is queued behind it.
const Slots = 2

// Pool lends copy queues of one driver.
type Pool struct {
	drv    gpu.Driver
	mu     sync.Mutex
	idle   map[int][]gpu.Copier // guarded by mu
	closed bool                 // guarded by mu
}

// New returns a pool over drv (nil: every Get fails with
// gpu.ErrNotSupported, as there is no GPU memory to copy).
func New(drv gpu.Driver) *Pool { return &Pool{drv: drv, idle: map[int][]gpu.Copier{}} }

// Get lends a queue of device ord with Slots slots.
func (p *Pool) Get(ord int) (gpu.Copier, error) {
	if p.drv == nil {
		return nil, fmt.Errorf("gpucopy: GPU memory without a GPU driver: %w", gpu.ErrNotSupported)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if cs := p.idle[ord]; len(cs) > 0 {
		c := cs[len(cs)-1]
		p.idle[ord] = cs[:len(cs)-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	return p.drv.NewCopier(ord, Slots)
}

// Put returns a queue whose copies all succeeded.
func (p *Pool) Put(ord int, c gpu.Copier) {
	p.mu.Lock()
	if !p.closed && len(p.idle[ord]) < idleKept {
		p.idle[ord] = append(p.idle[ord], c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	_ = c.Close()
}

// Copy copies n bytes from src to dst (any two addresses the device
// reaches) on a queue of device ord and waits for it.
func (p *Pool) Copy(ord int, dst, src uintptr, n int) error {
	c, err := p.Get(ord)
	if err != nil {
		return err
	}
	err = c.Copy(0, dst, src, n)
	if err == nil {
		err = c.Wait(0)
	}
	if err != nil {
		return errors.Join(err, c.Close())
	}
	p.Put(ord, c)
	return nil
}

// Close destroys the idle queues; queues lent out are closed when they
// come back. It is idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = map[int][]gpu.Copier{}
	p.mu.Unlock()
	var errs []error
	for _, cs := range idle {
		for _, c := range cs {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
