package bindings

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu/cuda"
)

// The GPU paths are tested on an NVIDIA host by python/tests/gpu; here,
// what a host without a GPU (CI) sees.
func skipIfGPU(t *testing.T) {
	t.Helper()
	if d, err := cuda.Open(cuda.Options{}); err == nil {
		d.Close()
		t.Skip("a GPU is present: python/tests/gpu covers this host")
	}
}

func TestCudaWithoutGPU(t *testing.T) {
	skipIfGPU(t)
	leakCheck(t)
	e := newEngine(t)
	m := newMem(4096)
	defer runtime.KeepAlive(m)
	_, err := e.RegisterMemory(m.addr(), m.size(), "cuda:0")
	require.NoError(t, err, "without a driver no GPU memory exists: the location is taken as given")

	l, r, n := []uint64{uint64(m.addr())}, []uint64{1}, []uint64{16}
	_, err = e.TransferOnCuda(e.eng.Name(), 1, list(l...), list(r...), list(n...), 1, 0, -1)
	code, kind, msg := parse(t, err)
	require.Equal(t, -303, code)
	require.Equal(t, kindNotSupported, kind)
	require.Contains(t, msg, "libcuda")
	runtime.KeepAlive(keep(l, r, n))

	_, err = e.CudaTransferStatus(0)
	_, kind, _ = parse(t, err)
	require.Equal(t, kindUnknownBatch, kind)
	_, err = e.CudaTransferStatus(7)
	_, kind, _ = parse(t, err)
	require.Equal(t, kindUnknownBatch, kind)

	_, err = AllocatorBind()
	code, kind, _ = parse(t, err)
	require.Equal(t, -303, code)
	require.Equal(t, kindNotSupported, kind)
	_, err = AllocatorTrim(0)
	require.Error(t, err)
	msg, err = AllocatorLastError()
	require.NoError(t, err)
	require.Empty(t, msg)
}

func TestCudaOnClosedEngine(t *testing.T) {
	leakCheck(t)
	e := newEngine(t)
	_, err := e.Close()
	require.NoError(t, err)
	_, err = e.TransferOnCuda("x", 1, 0, 0, 0, 0, 0, 0)
	_, kind, _ := parse(t, err)
	require.Equal(t, kindClosed, kind)
	_, err = e.CudaTransferStatus(1)
	_, kind, _ = parse(t, err)
	require.Equal(t, kindClosed, kind)
}
