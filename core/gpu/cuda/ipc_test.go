package cuda_test

import (
	"bytes"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// CopyAsync copies between any two addresses in the stream's order, host
// to host too (through a host function), and an event marks the stream.
func TestCopyAsyncOnGPU(t *testing.T) {
	d := requireGPU(t)
	const n = 8 << 20
	a, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, a)
	b, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, b)
	s, err := d.NewStream(0)
	require.NoError(t, err)
	defer d.DestroyStream(0, s)
	src := bytes.Repeat([]byte("0123456789abcdef"), n/16)
	mid, dst := make([]byte, n), make([]byte, n)

	require.NoError(t, d.Memset(0, s, a, 7, n))
	require.NoError(t, d.CopyAsync(s, 0, b, a, n)) // device → device, after the fill
	require.NoError(t, d.CopyAsync(s, 0, a, uintptr(unsafePointer(src)), n))
	require.NoError(t, d.CopyAsync(s, 0, uintptr(unsafePointer(mid)), a, n))
	require.NoError(t, d.CopyAsync(s, 0, uintptr(unsafePointer(dst)), uintptr(unsafePointer(mid)), n)) // host → host, in order
	ev, err := d.RecordEvent(s, 0)
	require.NoError(t, err)
	require.NoError(t, d.Synchronize(0, s))
	done, err := ev.Done()
	require.NoError(t, err)
	require.True(t, done)
	require.NoError(t, ev.Close())
	runtime.KeepAlive(mid)
	require.Equal(t, src, dst)
	got := make([]byte, 4096)
	require.NoError(t, d.CopyFromDevice(0, got, b))
	require.Equal(t, bytes.Repeat([]byte{7}, 4096), got)

	// A copier copies any direction too.
	c, err := d.NewCopier(0, 1)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Copy(0, b, a, n))
	require.NoError(t, c.Wait(0))
	require.NoError(t, d.CopyFromDevice(0, got, b))
	require.Equal(t, src[:4096], got)
}

// cuMemAlloc memory exports a legacy handle for its whole allocation; host
// memory is refused; the device has a UUID and reaches itself.
func TestExportIPCOnGPU(t *testing.T) {
	d := requireGPU(t)
	const n = 4 << 20
	a, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, a)
	h, err := d.ExportIPC(a + 4096)
	require.NoError(t, err)
	require.Equal(t, gpu.IPCLegacy, h.Kind)
	require.Equal(t, a, h.Base)
	require.GreaterOrEqual(t, h.Size, uint64(n))
	require.Equal(t, -1, h.FD)
	u, err := d.DeviceUUID(0)
	require.NoError(t, err)
	require.Equal(t, u, h.Device)
	require.NotEqual(t, gpu.UUID{}, u)
	t.Logf("device 0 is %v", u)
	ok, err := d.CanAccessPeer(0, 0)
	require.NoError(t, err)
	require.True(t, ok)

	host := make([]byte, 4096)
	_, err = d.ExportIPC(uintptr(unsafePointer(host)))
	require.ErrorIs(t, err, gpu.ErrInvalidRange)
}
