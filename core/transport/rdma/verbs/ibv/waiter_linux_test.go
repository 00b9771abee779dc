package ibv

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// pipeWaiter is a waiter over the read end of a non-blocking pipe, standing
// in for a completion channel fd.
func pipeWaiter(t *testing.T) (*waiter, int, int) {
	var p [2]int
	require.NoError(t, syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC))
	w, err := newWaiter(p[0], "test-pipe")
	require.NoError(t, err)
	t.Cleanup(func() {
		syscall.Close(p[0])
		syscall.Close(p[1])
	})
	return w, p[0], p[1]
}

func readOne(fd int) func() (bool, error) {
	return func() (bool, error) {
		var b [1]byte
		_, err := syscall.Read(fd, b[:])
		if errors.Is(err, syscall.EAGAIN) {
			return false, nil
		}
		return err == nil, err
	}
}

func TestWaiter(t *testing.T) {
	testutil.ResourceCheck(t)
	w, r, wr := pipeWaiter(t)
	defer w.close()

	// Data written later wakes the wait.
	go func() {
		time.Sleep(10 * time.Millisecond)
		syscall.Write(wr, []byte{1})
	}()
	require.NoError(t, w.wait(context.Background(), readOne(r)))

	// A cancelled context ends the wait with its error, and the next wait
	// works again.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, w.wait(ctx, readOne(r)), context.DeadlineExceeded)
	syscall.Write(wr, []byte{2})
	require.NoError(t, w.wait(context.Background(), readOne(r)))

	// An error from try is returned as is.
	boom := errors.New("boom")
	require.ErrorIs(t, w.wait(context.Background(), func() (bool, error) { return false, boom }), boom)

	// Close wakes a wait in progress.
	done := make(chan error, 1)
	go func() { done <- w.wait(context.Background(), readOne(r)) }()
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, w.close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, verbs.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("close did not wake the wait")
	}
}
