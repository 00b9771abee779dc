package ibv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// waiter waits for a non-blocking fd owned by libibverbs to become
// readable, through the netpoller on a dup of it: the library keeps (and
// closes) its fd, the waiter closes only its dup.
type waiter struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool

	mu sync.Mutex // serialises waits: one deadline per file
}

// aLongTimeAgo is a read deadline in the past, used to wake a wait.
var aLongTimeAgo = time.Unix(1, 0)

// newWaiter dups fd, which must already be non-blocking.
func newWaiter(fd int, name string) (*waiter, error) {
	dup, err := syscall.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("dup %s fd: %w", name, err)
	}
	syscall.CloseOnExec(dup)
	f := os.NewFile(uintptr(dup), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s fd: %w", name, err)
	}
	return &waiter{f: f, rc: rc}, nil
}

// wait calls try until it reports done (or an error), sleeping in the
// netpoller while try returns EAGAIN. It returns ctx's error when ctx ends
// and verbs.ErrClosed when the waiter is closed.
func (w *waiter) wait(ctx context.Context, try func() (done bool, err error)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := w.f.SetReadDeadline(time.Time{}); err != nil {
		return w.mapErr(ctx, err)
	}
	stop := context.AfterFunc(ctx, func() { w.f.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	var res error
	err := w.rc.Read(func(uintptr) bool {
		done, err := try()
		if err != nil {
			res = err
			return true
		}
		return done
	})
	if err != nil {
		return w.mapErr(ctx, err)
	}
	return res
}

func (w *waiter) mapErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case w.closed.Load() || errors.Is(err, os.ErrClosed):
		return verbs.ErrClosed
	}
	return err
}

// close closes the dup, waking a wait in progress.
func (w *waiter) close() error {
	w.closed.Store(true)
	return w.f.Close()
}
