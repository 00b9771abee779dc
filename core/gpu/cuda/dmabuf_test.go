//go:build cgo && linux

package cuda

import (
	"errors"
	"os"
	"strconv"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// TestExportDmaBufOnGPU exports device memory as a dma-buf on a real GPU.
// It skips where there is no CUDA driver or device (unless
// PYMOONCAKE_GPU_TESTS=1) and where the driver or device cannot export
// dma-bufs, which it says.
func TestExportDmaBufOnGPU(t *testing.T) {
	d, err := Open(Options{})
	if errors.Is(err, ErrUnavailable) {
		if os.Getenv("PYMOONCAKE_GPU_TESTS") == "1" {
			t.Fatalf("PYMOONCAKE_GPU_TESTS=1 but no GPU: %v", err)
		}
		t.Skipf("no CUDA driver or device: %v", err)
	}
	require.NoError(t, err)
	defer func() { require.NoError(t, d.Close()) }()
	const n = 4 << 20
	dev, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer func() { require.NoError(t, d.FreeDevice(0, dev)) }()

	buf, err := d.ExportDmaBuf(dev+4096+100, 1<<20)
	if errors.Is(err, gpu.ErrNotSupported) {
		t.Skipf("this driver or GPU exports no dma-buf: %v", err)
	}
	require.NoError(t, err)
	require.GreaterOrEqual(t, buf.FD, 0)
	require.EqualValues(t, 100, buf.Offset%uint64(os.Getpagesize()), "the export starts at the page holding the address")
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(buf.FD))
	require.NoError(t, err, "the fd is open")
	t.Logf("dma-buf fd %d (%s), offset %d", buf.FD, target, buf.Offset)
	require.NoError(t, buf.Close())

	host := make([]byte, 64)
	_, err = d.ExportDmaBuf(uintptr(unsafe.Pointer(unsafe.SliceData(host))), 64)
	require.ErrorIs(t, err, gpu.ErrInvalidRange)
}
