package lifetime

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Lifetime is one transport's lifetime. Make it with New.
type Lifetime struct {
	ctx    context.Context
	cancel context.CancelFunc

	// mu is held shared by entry points; End takes it exclusively once,
	// after down is set: a barrier.
	mu   sync.RWMutex
	down atomic.Bool

	goMu   sync.Mutex
	closed bool // +checklocks:goMu
	wg     sync.WaitGroup

	inflight atomic.Int64
	drained  chan struct{}
}

// New returns a live lifetime.
func New() *Lifetime {
	l := &Lifetime{drained: make(chan struct{}, 1)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// Context ends when End starts. Work started for the transport (connection
// setups) takes its deadlines from it.
func (l *Lifetime) Context() context.Context { return l.ctx }

// Enter starts an entry point: it reports false, holding nothing, once End
// has started; otherwise the caller calls Exit when it returns.
func (l *Lifetime) Enter() bool {
	l.mu.RLock()
	if l.down.Load() {
		l.mu.RUnlock()
		return false
	}
	return true
}

// Exit ends an entry point that Enter let in.
func (l *Lifetime) Exit() { l.mu.RUnlock() }

// Ended reports whether End has started.
func (l *Lifetime) Ended() bool { return l.down.Load() }

// Go runs f in a goroutine that Wait waits for, unless End has started (it
// then reports false and does not run f).
func (l *Lifetime) Go(f func()) bool {
	l.goMu.Lock()
	defer l.goMu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
	return true
}

// End ends the lifetime: Go and Enter refuse from now on, the context is
// cancelled, and End returns once every entry point that was inside has
// exited. Call it once, from Close.
func (l *Lifetime) End() {
	l.goMu.Lock()
	l.closed = true
	l.goMu.Unlock()
	l.down.Store(true)
	l.cancel()
	l.mu.Lock()
	l.mu.Unlock() // a barrier: entry points that started before down have exited
}

// Wait waits for the goroutines started by Go.
func (l *Lifetime) Wait() { l.wg.Wait() }

// Posted counts n units of work handed to the hardware.
func (l *Lifetime) Posted(n int64) { l.inflight.Add(n) }

// Completed counts n units of work the hardware is done with (completed,
// or never accepted).
func (l *Lifetime) Completed(n int64) {
	if l.inflight.Add(-n) <= 0 && l.down.Load() {
		select {
		case l.drained <- struct{}{}:
		default:
		}
	}
}

// InFlight is the work posted and not yet completed.
func (l *Lifetime) InFlight() int64 { return l.inflight.Load() }

// Drain waits, after End, until no work is in flight or the deadline
// passes, and reports whether it drained.
func (l *Lifetime) Drain(deadline time.Time) bool {
	if l.inflight.Load() <= 0 {
		return true
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for l.inflight.Load() > 0 {
		select {
		case <-l.drained:
		case <-timer.C:
			return l.inflight.Load() <= 0
		}
	}
	return true
}
