package allocator_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/allocator"
	"github.com/pymooncake/pymooncake/core/gpu/cuda"
)

// requireGPU binds the allocator, or skips when there is conclusively no
// GPU unless PYMOONCAKE_GPU_TESTS=1.
func requireGPU(tb testing.TB) *cuda.Driver {
	tb.Helper()
	err := allocator.Bind()
	if errors.Is(err, cuda.ErrUnavailable) {
		if os.Getenv("PYMOONCAKE_GPU_TESTS") == "1" {
			tb.Fatalf("PYMOONCAKE_GPU_TESTS=1 but no GPU: %v", err)
		}
		tb.Skipf("no CUDA driver or device: %v", err)
	}
	require.NoError(tb, err)
	d, err := cuda.Open(cuda.Options{})
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, d.Close()) })
	return d
}

func TestSymbolsAreThere(t *testing.T) {
	syms := allocator.Symbols()
	for _, name := range []string{"mc_stream_alloc", "mc_stream_free", "mc_nvlink_malloc", "mc_nvlink_free", "mc_allocator_malloc", "mc_allocator_free", "mc_allocator_probe"} {
		require.NotZero(t, syms[name], name)
	}
}

func TestUnboundAllocatorFailsCleanly(t *testing.T) {
	if allocator.Bind() == nil {
		t.Skip("a GPU is present: the allocator is bound")
	}
	// Called first, an allocator binds itself (torch may be handed the
	// extension by path alone); without a driver that fails cleanly.
	require.Zero(t, allocator.StreamAlloc(4096, 0, 0))
	require.Contains(t, allocator.LastError(), "mc_stream_alloc: bind the allocator to the CUDA driver")
	allocator.StreamFree(0, 0, 0, 0)    // nothing to free
	allocator.StreamFree(1234, 1, 0, 0) // unbound: ignored, never touched
	require.Zero(t, allocator.NVLinkAlloc(4096, 0, 0))
	require.Equal(t, -1, allocator.Probe(0))
}

func TestStreamAllocatorOnGPU(t *testing.T) {
	d := requireGPU(t)
	s, err := d.NewStream(0)
	require.NoError(t, err)
	defer d.DestroyStream(0, s)

	p := allocator.StreamAlloc(3<<20, 0, s)
	require.NotZero(t, p, allocator.LastError())
	ord, err := d.Locate(p, 3<<20)
	require.NoError(t, err)
	require.Zero(t, ord, "device memory of device 0")
	require.NoError(t, d.Memset(0, s, p, 0x42, 3<<20))
	require.NoError(t, d.Synchronize(0, s))
	got := make([]byte, 3<<20)
	require.NoError(t, d.CopyFromDevice(0, got, p))
	require.Equal(t, bytes.Repeat([]byte{0x42}, 3<<20), got)
	stats, err := allocator.Stats(0)
	require.NoError(t, err)
	require.GreaterOrEqual(t, stats.Used, uint64(3<<20))
	capable, dmabuf, err := allocator.RDMAInfo(p)
	require.NoError(t, err)
	t.Logf("stream pool: rdma property accepted %v; pointer GPUDirect RDMA capable %d; dma-buf export %d", stats.RDMA, capable, dmabuf)

	// Freed on another stream: the free is ordered after that stream's work.
	other, err := d.NewStream(0)
	require.NoError(t, err)
	defer d.DestroyStream(0, other)
	require.NoError(t, d.Memset(0, other, p, 0x43, 3<<20))
	allocator.ClearError()
	allocator.StreamFree(p, 3<<20, 0, other)
	require.Empty(t, allocator.LastError())
	require.NoError(t, d.Synchronize(0, other))
	require.NoError(t, allocator.Trim(0))
	stats, err = allocator.Stats(0)
	require.NoError(t, err)
	require.Zero(t, stats.Used)
	require.Zero(t, stats.Reserved, "trim gave the cached memory back")
	require.Zero(t, allocator.StreamAlloc(-1, 0, s))
	require.Zero(t, allocator.StreamAlloc(16, 999, s))
}

func TestNVLinkAllocatorOnGPU(t *testing.T) {
	d := requireGPU(t)
	require.Equal(t, 1, allocator.Probe(0), "H100s support the VMM allocator")
	before, err := allocator.Stats(0)
	require.NoError(t, err)
	p := allocator.NVLinkAlloc(5<<20+1, 0, 0)
	require.NotZero(t, p, allocator.LastError())
	during, err := allocator.Stats(0)
	require.NoError(t, err)
	require.Equal(t, before.NVLinkAllocs+1, during.NVLinkAllocs)
	require.GreaterOrEqual(t, during.NVLinkBytes-before.NVLinkBytes, uint64(5<<20+1), "the live bytes count the rounded-up mapping")
	ord, err := d.Locate(p, 5<<20+1)
	require.NoError(t, err)
	require.Zero(t, ord)
	want := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, (5<<20)/7)
	require.NoError(t, d.CopyToDevice(0, p, want))
	got := make([]byte, len(want))
	require.NoError(t, d.CopyFromDevice(0, got, p))
	require.Equal(t, want, got)
	capable, dmabuf, err := allocator.RDMAInfo(p)
	require.NoError(t, err)
	t.Logf("nvlink allocation: FABRIC handle %d (1 yes, 0 not offered, 2 refused by the driver); pointer GPUDirect RDMA capable %d; dma-buf export %d", allocator.Fabric(0), capable, dmabuf)
	allocator.ClearError()
	allocator.NVLinkFree(p, 5<<20+1, 0, 0)
	require.Empty(t, allocator.LastError())
	after, err := allocator.Stats(0)
	require.NoError(t, err)
	require.Equal(t, before.NVLinkAllocs, after.NVLinkAllocs)
	require.Equal(t, before.NVLinkBytes, after.NVLinkBytes)
}

// TestNoLeakOnGPU runs 10,000 alloc/free cycles of mixed sizes through each
// allocator and checks that the device's free memory is back where it
// started.
func TestNoLeakOnGPU(t *testing.T) {
	d := requireGPU(t)
	s, err := d.NewStream(0)
	require.NoError(t, err)
	defer d.DestroyStream(0, s)
	sizes := []int{4 << 10, 64<<10 + 3, 1 << 20, 3<<20 + 77, 16 << 20, 32 << 20}
	for _, kind := range []string{"stream", "nvlink"} {
		t.Run(kind, func(t *testing.T) {
			require.NoError(t, d.Synchronize(0, 0))
			before, _, err := d.MemInfo(0)
			require.NoError(t, err)
			r := rand.New(rand.NewPCG(1, 2))
			live := map[uintptr]int{}
			for i := range 10000 {
				n := sizes[r.IntN(len(sizes))]
				var p uintptr
				if kind == "stream" {
					p = allocator.StreamAlloc(n, 0, s)
				} else {
					p = allocator.NVLinkAlloc(n, 0, s)
				}
				require.NotZero(t, p, "cycle %d: %s", i, allocator.LastError())
				live[p] = n
				// Keep up to 8 allocations alive; free a random one.
				if len(live) > 8 || i == 9999 {
					for q, m := range live {
						if kind == "stream" {
							allocator.StreamFree(q, m, 0, s)
						} else {
							allocator.NVLinkFree(q, m, 0, s)
						}
						delete(live, q)
						if len(live) <= 4 && i != 9999 {
							break
						}
					}
				}
			}
			for q, m := range live {
				if kind == "stream" {
					allocator.StreamFree(q, m, 0, s)
				} else {
					allocator.NVLinkFree(q, m, 0, s)
				}
			}
			require.NoError(t, d.Synchronize(0, s))
			if kind == "stream" {
				require.NoError(t, allocator.Trim(0))
			}
			if kind == "stream" {
				stats, err := allocator.Stats(0)
				require.NoError(t, err)
				require.Zero(t, stats.Used, "every allocation was freed")
				require.Zero(t, stats.Reserved, "the pool gave everything back")
			}
			// The driver may return trimmed pool memory a little later.
			var after uint64
			require.Eventually(t, func() bool {
				after, _, err = d.MemInfo(0)
				return err == nil && after >= before
			}, 5*time.Second, 10*time.Millisecond, "%s allocator leaked %d bytes", kind, int64(before)-int64(after))
			t.Logf("%s: free memory %d before, %d after 10,000 cycles", kind, before, after)
		})
	}
}

// BenchmarkAllocFree measures one allocation and its free, by size, for
// the stream pool (stream ordered, no synchronisation), cuMemCreate per
// call (the NVLink allocator) and plain cuMemAlloc/cuMemFree.
func BenchmarkAllocFree(b *testing.B) {
	d := requireGPU(b)
	s, err := d.NewStream(0)
	require.NoError(b, err)
	defer d.DestroyStream(0, s)
	for _, n := range []int{4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20} {
		b.Run(fmt.Sprintf("stream/%s", human(n)), func(b *testing.B) {
			for b.Loop() {
				p := allocator.StreamAlloc(n, 0, s)
				if p == 0 {
					b.Fatal(allocator.LastError())
				}
				allocator.StreamFree(p, n, 0, s)
			}
			require.NoError(b, d.Synchronize(0, s))
		})
		b.Run(fmt.Sprintf("cuMemCreate/%s", human(n)), func(b *testing.B) {
			for b.Loop() {
				p := allocator.NVLinkAlloc(n, 0, s)
				if p == 0 {
					b.Fatal(allocator.LastError())
				}
				allocator.NVLinkFree(p, n, 0, s)
			}
		})
		b.Run(fmt.Sprintf("cuMemAlloc/%s", human(n)), func(b *testing.B) {
			for b.Loop() {
				p, err := d.AllocDevice(0, n)
				if err != nil {
					b.Fatal(err)
				}
				if err := d.FreeDevice(0, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	require.NoError(b, allocator.Trim(0))
}

func human(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	default:
		return fmt.Sprintf("%dKiB", n>>10)
	}
}
