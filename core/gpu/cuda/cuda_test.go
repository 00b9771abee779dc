package cuda_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core"
	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/cuda"
	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// optIn names the environment variable that turns a missing GPU into a
// failure instead of a skip (set on the NVIDIA host).
const optIn = "PYMOONCAKE_GPU_TESTS"

// requireGPU opens the real driver, or skips when there is conclusively
// none (no libcuda, no device) unless PYMOONCAKE_GPU_TESTS=1.
func requireGPU(t *testing.T) *cuda.Driver {
	t.Helper()
	d, err := cuda.Open(cuda.Options{})
	if errors.Is(err, cuda.ErrUnavailable) {
		if os.Getenv(optIn) == "1" {
			t.Fatalf("%s=1 but no GPU: %v", optIn, err)
		}
		t.Skipf("no CUDA driver or device: %v", err)
	}
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, d.Close()) })
	return d
}

func TestAbsentLibraryIsUnavailable(t *testing.T) {
	_, err := cuda.Open(cuda.Options{Library: "libpymooncake-no-such-cuda.so.1"})
	require.Error(t, err)
	if errors.Is(err, cuda.ErrUnavailable) {
		var de *dl.Error
		require.ErrorAs(t, err, &de, "dlerror's text is kept")
		require.Contains(t, err.Error(), "libpymooncake-no-such-cuda.so.1")
		return
	}
	// The real driver was loaded first (a GPU host): another name is refused.
	require.Contains(t, err.Error(), "loaded already")
}

func TestResultNamesErrors(t *testing.T) {
	require.Contains(t, cuda.Result(2).Error(), "CUDA_ERROR_OUT_OF_MEMORY")
	require.Contains(t, cuda.Result(12345).Error(), "12345")
	require.ErrorIs(t, cuda.Result(100), cuda.ErrUnavailable, "no device")
	require.ErrorIs(t, cuda.Result(34), cuda.ErrUnavailable, "stub library")
	require.NotErrorIs(t, cuda.Result(2), cuda.ErrUnavailable)
}

func TestDriverOnGPU(t *testing.T) {
	d := requireGPU(t)
	name, err := d.DeviceName(0)
	require.NoError(t, err)
	t.Logf("%s; device 0: %s", d.Name(), name)
	require.Positive(t, d.DeviceCount())
	_, err = d.NewCopier(d.DeviceCount(), 2)
	require.Error(t, err, "no such device")
}

func TestLocateOnGPU(t *testing.T) {
	d := requireGPU(t)
	const n = 1 << 20
	dev, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, dev)
	pinned, err := d.AllocHost(0, 4096)
	require.NoError(t, err)
	defer d.FreeHost(pinned)
	host := make([]byte, 4096)

	tests := []struct {
		name string
		addr uintptr
		n    uint64
		want int
		err  error
	}{
		{name: "device", addr: dev, n: n, want: 0},
		{name: "device interior", addr: dev + 4096, n: 100, want: 0},
		{name: "pinned host", addr: pinned, n: 4096, want: gpu.Host},
		{name: "pageable host", addr: uintptr(unsafePointer(host)), n: 4096, want: gpu.Host},
		{name: "past the allocation", addr: dev + n - 10, n: 1 << 30, err: gpu.ErrInvalidRange},
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
}

func TestCopierOnGPU(t *testing.T) {
	d := requireGPU(t)
	const n = 3 << 20
	dev, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, dev)
	st, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 1 << 20, Slots: 3})
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()

	want := bytes.Repeat([]byte("pymooncake!"), n/11+1)[:n]
	stage, err := st.Get(0)
	require.NoError(t, err)
	for slot := range 3 {
		copy(stage.Buffer(slot), want[slot<<20:(slot+1)<<20])
		require.NoError(t, stage.ToDevice(slot, dev+uintptr(slot<<20), 1<<20))
	}
	stage.Release()
	got := make([]byte, n)
	require.NoError(t, d.CopyFromDevice(0, got, dev))
	require.Equal(t, want, got)

	stage, err = st.Get(0)
	require.NoError(t, err)
	require.NoError(t, d.CopyToDevice(0, dev, bytes.Repeat([]byte{0x5a}, n)))
	require.NoError(t, stage.ToHost(1, dev+12345, 1<<20))
	require.NoError(t, stage.Wait(1))
	require.Equal(t, bytes.Repeat([]byte{0x5a}, 1<<20), stage.Buffer(1))
	stage.Release()
}

func TestGateHoldsTheStreamOnGPU(t *testing.T) {
	d := requireGPU(t)
	const n = 64 << 20
	dev, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, dev)
	s, err := d.NewStream(0)
	require.NoError(t, err)
	defer d.DestroyStream(0, s)

	require.NoError(t, d.Memset(0, s, dev, 1, n))
	g, err := d.Gate(s, 0)
	require.NoError(t, err)
	require.NoError(t, d.Memset(0, s, dev, 2, n))
	require.NoError(t, g.Reached(context.Background()))
	// The fill queued after the gate has not run: read through another
	// stream (a staging copier), which the gate does not hold.
	st, err := gpu.NewStaging(d, gpu.StagingConfig{Chunk: 4096})
	require.NoError(t, err)
	defer st.Close()
	stage, err := st.Get(0)
	require.NoError(t, err)
	require.NoError(t, stage.ToHost(0, dev+n-4096, 4096))
	require.NoError(t, stage.Wait(0))
	require.Equal(t, bytes.Repeat([]byte{1}, 4096), stage.Buffer(0), "work after the gate waits")
	g.Open()
	g.Open()
	require.NoError(t, d.Synchronize(0, s))
	require.NoError(t, stage.ToHost(0, dev+n-4096, 4096))
	require.NoError(t, stage.Wait(0))
	require.Equal(t, bytes.Repeat([]byte{2}, 4096), stage.Buffer(0))
	stage.Release()

	// A gate that is never reached in time, then opened: the stream goes on.
	g, err = d.Gate(0, 0)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	require.NoError(t, g.Reached(ctx), "the default stream is idle")
	cancel()
	g.Open()
	require.NoError(t, d.Synchronize(0, 0))
}

func newEngine(t *testing.T, d *cuda.Driver) *engine.Engine {
	t.Helper()
	e, err := core.New(context.Background(), core.Config{
		LocalName: "127.0.0.1", Metadata: "P2PHANDSHAKE", Env: config.Defaults(),
		Logger: zaptest.NewLogger(t), GPU: d,
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, e.Close()) })
	return e
}

func TestEnginesMoveGPUMemory(t *testing.T) {
	testutil.ResourceCheck(t)
	d := requireGPU(t)
	const n = 96<<20 + 12345
	iniDev, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, iniDev)
	tgtDev, err := d.AllocDevice(0, n)
	require.NoError(t, err)
	defer d.FreeDevice(0, tgtDev)
	host := make([]byte, n) // pageable host memory on the target

	tgt, ini := newEngine(t, d), newEngine(t, d)
	require.NoError(t, ini.RegisterMemory(iniDev, n, "*"))
	require.NoError(t, tgt.RegisterMemoryBatch([]uintptr{tgtDev, uintptr(unsafePointer(host))}, []uint64{n, n}, "cpu:0"))
	seg, err := ini.OpenSegment(context.Background(), tgt.Name())
	require.NoError(t, err)

	want := make([]byte, n)
	for i := range want {
		want[i] = byte(i * 7)
	}
	require.NoError(t, d.CopyToDevice(0, iniDev, want))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// GPU to GPU and GPU to host in one batch.
	half := uint64(n / 2)
	require.NoError(t, ini.Transfer(ctx, []engine.Request{
		{Opcode: transport.Write, Local: iniDev, Segment: seg, Remote: uint64(tgtDev), Length: half},
		{Opcode: transport.Write, Local: iniDev + uintptr(half), Segment: seg, Remote: uint64(uintptr(unsafePointer(host))), Length: n - half},
	}, nil))
	got := make([]byte, n)
	require.NoError(t, d.CopyFromDevice(0, got[:half], tgtDev))
	require.True(t, bytes.Equal(want[:half], got[:half]), "gpu to gpu")
	require.True(t, bytes.Equal(want[half:], host[:n-half]), "gpu to host")

	// Read it all back into the initiator's GPU memory, cleared first.
	require.NoError(t, d.CopyToDevice(0, iniDev, make([]byte, n)))
	require.NoError(t, ini.Transfer(ctx, []engine.Request{
		{Opcode: transport.Read, Local: iniDev, Segment: seg, Remote: uint64(tgtDev), Length: half},
		{Opcode: transport.Read, Local: iniDev + uintptr(half), Segment: seg, Remote: uint64(uintptr(unsafePointer(host))), Length: n - half},
	}, nil))
	require.NoError(t, d.CopyFromDevice(0, got, iniDev))
	require.True(t, bytes.Equal(want, got), "read back")

	// Ordered on a stream: a fill before, the transfer, a fill after.
	s, err := d.NewStream(0)
	require.NoError(t, err)
	defer d.DestroyStream(0, s)
	require.NoError(t, d.Memset(0, s, iniDev, 0xab, n))
	ticket, err := ini.TransferOnStream(tgt.Name(), []engine.Request{{Opcode: transport.Write, Local: iniDev, Remote: uint64(tgtDev), Length: half}}, s, -1, 30*time.Second)
	require.NoError(t, err)
	require.NoError(t, d.Memset(0, s, iniDev, 0xcd, n))
	require.NoError(t, d.Synchronize(0, s))
	done, err := ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done, "the stream went on only after the transfer")
	require.NoError(t, d.CopyFromDevice(0, got[:half], tgtDev))
	require.Equal(t, bytes.Repeat([]byte{0xab}, int(half)), got[:half], "the peer got the bytes of the fill before")
	require.NoError(t, d.CopyFromDevice(0, got[:16], iniDev))
	require.Equal(t, bytes.Repeat([]byte{0xcd}, 16), got[:16])

	// A read ordered on the stream: a fill before it is overwritten, a
	// fill after it overwrites what it read (of the first half only), and
	// the host half of the batch is untouched by the stream.
	require.NoError(t, d.CopyToDevice(0, tgtDev, bytes.Repeat([]byte{0x11}, int(half))))
	require.NoError(t, d.Memset(0, s, iniDev, 0x22, n))
	ticket, err = ini.TransferOnStream(tgt.Name(), []engine.Request{
		{Opcode: transport.Read, Local: iniDev, Remote: uint64(tgtDev), Length: half},
		{Opcode: transport.Read, Local: iniDev + uintptr(half), Remote: uint64(uintptr(unsafePointer(host))), Length: n - half},
	}, s, -1, 30*time.Second)
	require.NoError(t, err)
	require.NoError(t, d.Memset(0, s, iniDev, 0x33, 16))
	require.NoError(t, d.Synchronize(0, s))
	done, err = ini.StreamTransferStatus(ticket)
	require.NoError(t, err)
	require.True(t, done)
	require.NoError(t, d.CopyFromDevice(0, got, iniDev))
	require.Equal(t, bytes.Repeat([]byte{0x33}, 16), got[:16])
	require.Equal(t, bytes.Repeat([]byte{0x11}, int(half)-16), got[16:half])
	require.True(t, bytes.Equal(host[:n-half], got[half:]), "gpu from host, on the stream")
}
