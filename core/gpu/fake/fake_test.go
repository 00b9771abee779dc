//go:build unix

package fake

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

func TestLocate(t *testing.T) {
	d := New(2)
	defer func() { require.NoError(t, d.Close()) }()
	a0, err := d.Alloc(0, 8192)
	require.NoError(t, err)
	a1, err := d.Alloc(1, 4096)
	require.NoError(t, err)
	host := make([]byte, 64)

	tests := []struct {
		name string
		addr uintptr
		n    uint64
		want int
		err  error
	}{
		{name: "device 0 start", addr: a0, n: 8192, want: 0},
		{name: "device 0 inside", addr: a0 + 100, n: 10, want: 0},
		{name: "device 1", addr: a1, n: 1, want: 1},
		{name: "zero length", addr: a1, n: 0, want: 1},
		{name: "host", addr: addrOf(host), n: 64, want: gpu.Host},
		{name: "past the allocation", addr: a0 + 8000, n: 400, err: gpu.ErrInvalidRange},
		{name: "host running into device", addr: a0 - 16, n: 32, err: gpu.ErrInvalidRange},
		{name: "wrapping", addr: ^uintptr(0) - 2, n: 16, err: gpu.ErrInvalidRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := d.Locate(tc.addr, tc.n)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	require.NoError(t, d.Free(a1))
	got, err := d.Locate(a1, 1)
	require.NoError(t, err)
	require.Equal(t, gpu.Host, got, "freed memory is no longer device memory")
	require.ErrorIs(t, d.Free(a1), ErrInvalidValue)
}

func TestCopierIsStrict(t *testing.T) {
	d := New(2)
	defer func() { require.NoError(t, d.Close()) }()
	dev0, err := d.Alloc(0, 4096)
	require.NoError(t, err)
	dev1, err := d.Alloc(1, 4096)
	require.NoError(t, err)
	pinned, err := d.AllocHost(0, 4096)
	require.NoError(t, err)
	defer d.FreeHost(pinned)
	pageable := make([]byte, 4096)

	c, err := d.NewCopier(0, 2)
	require.NoError(t, err)
	defer c.Close()
	require.ErrorIs(t, c.ToHost(0, addrOf(pageable), dev0, 16), ErrInvalidValue, "pageable host memory")
	require.ErrorIs(t, c.ToHost(0, pinned, dev1, 16), ErrInvalidValue, "another device's memory")
	require.ErrorIs(t, c.ToDevice(0, dev0, pinned, 8192), ErrInvalidValue, "past the allocation")
	require.ErrorIs(t, c.ToDevice(5, dev0, pinned, 16), gpu.ErrBadSlot)
	require.ErrorIs(t, c.Wait(5), gpu.ErrBadSlot)

	require.NoError(t, d.Write(dev0, []byte("hello")))
	require.NoError(t, c.ToHost(1, pinned, dev0, 5))
	require.Equal(t, make([]byte, 5), unsafeBytes(pinned, 5), "not run before Wait")
	require.NoError(t, c.Wait(1))
	require.Equal(t, []byte("hello"), unsafeBytes(pinned, 5))
	require.EqualValues(t, 5, d.Copied())

	d.FailCopiesAfter(1)
	require.NoError(t, c.ToHost(0, pinned, dev0, 5))
	require.NoError(t, c.ToHost(1, pinned, dev0, 5))
	require.NoError(t, c.Wait(0), "the first copy still succeeds")
	require.ErrorIs(t, c.Wait(1), ErrInjected)
	require.ErrorIs(t, c.Wait(0), ErrInjected, "failures are sticky")
	require.ErrorIs(t, c.ToHost(0, pinned, dev0, 5), ErrInjected)
}

func unsafeBytes(addr uintptr, n int) []byte {
	b := make([]byte, n)
	copy(b, (*[1 << 20]byte)(ptr(addr))[:n:n])
	return b
}

func TestGateOrdersAStream(t *testing.T) {
	d := New(1)
	defer func() { require.NoError(t, d.Close()) }()
	s, err := d.NewStream(0)
	require.NoError(t, err)
	var order []string
	before := make(chan struct{})
	require.NoError(t, d.Launch(s, func() { <-before; order = append(order, "before") }))
	g, err := d.Gate(s, 0)
	require.NoError(t, err)
	require.NoError(t, d.Launch(s, func() { order = append(order, "after") }))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	require.ErrorIs(t, g.Reached(ctx), context.DeadlineExceeded, "kernel before the gate still running")
	cancel()
	close(before)
	require.NoError(t, g.Reached(context.Background()))
	order = append(order, "gate")
	g.Open()
	g.Open()
	require.NoError(t, d.Synchronize(context.Background(), s))
	require.Equal(t, []string{"before", "gate", "after"}, order)

	// The default stream of a device.
	g0, err := d.Gate(0, 0)
	require.NoError(t, err)
	require.NoError(t, g0.Reached(context.Background()))
	g0.Open()
	_, err = d.Gate(0, 3)
	require.ErrorIs(t, err, ErrInvalidValue)
}

func TestCloseReportsLeaks(t *testing.T) {
	d := New(1)
	_, err := d.NewCopier(0, 1)
	require.NoError(t, err)
	_, err = d.AllocHost(0, 4096)
	require.NoError(t, err)
	s, err := d.NewStream(0)
	require.NoError(t, err)
	_, err = d.Gate(s, 0)
	require.NoError(t, err)
	require.ErrorIs(t, d.Close(), ErrLeak)
	require.NoError(t, d.Close(), "idempotent")
	_, err = d.NewCopier(0, 1)
	require.ErrorIs(t, err, ErrClosed)
}

// TestExportDmaBuf: the fake's dma-buf reads as the device memory it was
// exported for, from Offset on.
func TestExportDmaBuf(t *testing.T) {
	testutil.ResourceCheck(t)
	d := New(1)
	defer func() { require.NoError(t, d.Close()) }()
	dev, err := d.Alloc(0, 3*4096)
	require.NoError(t, err)
	want := []byte("device bytes behind a dma-buf")
	require.NoError(t, d.Write(dev+5000, want))

	buf, err := d.ExportDmaBuf(dev+5000, uint64(len(want)))
	require.NoError(t, err)
	got := make([]byte, len(want))
	_, err = syscall.Pread(buf.FD, got, int64(buf.Offset))
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.NoError(t, buf.Close())

	host := make([]byte, 64)
	_, err = d.ExportDmaBuf(addrOf(host), 64)
	require.ErrorIs(t, err, gpu.ErrInvalidRange)
	_, err = d.ExportDmaBuf(dev+3*4096-10, 20)
	require.ErrorIs(t, err, gpu.ErrInvalidRange, "past the allocation")
	d.SetDmaBuf(false)
	_, err = d.ExportDmaBuf(dev, 10)
	require.ErrorIs(t, err, gpu.ErrNotSupported)
}
