package handshake

import (
	"context"
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/stretchr/testify/require"
)

// saturatedListener returns the address of a loopback socket that listens
// with backlog 0 and never accepts, after filling its accept queue: Linux
// then drops further SYNs, so a connect to it hangs until its timeout, as a
// connect to a dead host does.
func saturatedListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, syscall.Listen(fd, 0))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))

	for range 8 {
		c, err := net.DialTimeout("tcp4", addr, 100*time.Millisecond)
		if err != nil {
			var ne net.Error
			require.True(t, errors.As(err, &ne) && ne.Timeout(), "filling the backlog: %v", err)
			return addr
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	t.Fatalf("accept queue of %s never filled", addr)
	return ""
}

func TestClientConnectTimeout(t *testing.T) {
	testutil.ResourceCheck(t)
	addr := saturatedListener(t)

	c := Client{ConnectTimeout: 100 * time.Millisecond}
	start := time.Now()
	err := c.Probe(testCtx(t), addr)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, addr)
	require.Less(t, time.Since(start), testTimeout/2)

	// The context bounds the connect too.
	var def Client // ConnectTimeout 5 s
	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	require.ErrorIs(t, def.Probe(ctx, addr), context.DeadlineExceeded)
	require.Less(t, time.Since(start), 4*time.Second)
}
