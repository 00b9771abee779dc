package gpucopy

import (
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
)

func TestPool(t *testing.T) {
	d := fake.New(1)
	defer func() { require.NoError(t, d.Close(), "fake GPU resources leaked") }()
	p := New(d)
	dev, err := d.Alloc(0, 4096)
	require.NoError(t, err)
	host, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer syscall.Munmap(host)
	h := uintptr(unsafe.Pointer(&host[0]))
	host[10] = 42
	require.NoError(t, p.Copy(0, dev, h, 4096))
	host[10] = 0
	require.NoError(t, p.Copy(0, h, dev, 4096))
	require.Equal(t, byte(42), host[10])
	copiers, _, _ := d.Live()
	require.Equal(t, 1, copiers, "one queue, reused")

	d.FailCopiesAfter(0)
	require.ErrorIs(t, p.Copy(0, dev, h, 4096), fake.ErrInjected)
	d.FailCopiesAfter(-1)
	copiers, _, _ = d.Live()
	require.Zero(t, copiers, "the failed queue was destroyed")

	require.NoError(t, p.Copy(0, dev, h, 4096))
	require.NoError(t, p.Close())
	copiers, _, _ = d.Live()
	require.Zero(t, copiers)
	_, err = p.Get(0)
	require.ErrorIs(t, err, ErrClosed)
	_, err = New(nil).Get(0)
	require.ErrorIs(t, err, gpu.ErrNotSupported)
}
