//go:build cgo && linux

package barex

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
)

// TestRegistration: memory is registered in RegChunkSize chunks, each a
// descriptor buffer with one key per NIC, "*" is resolved per chunk to the
// real kind, unregistration is symmetric (every chunk, as the kind it was
// registered as), and a failure part way leaves nothing registered.
func TestRegistration(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	const k = 1024
	locate := func(addr, length uint64) (string, error) { return "cpu:1", nil }
	h := c.addHost("h", hostSpec{noReg: true, mem: 1 << 20, cfg: Config{RegChunkSize: 64 * k},
		locate: func(addr, length uint64) (string, error) { return locate(addr, length) }})
	mrs := func() int64 { return counter(t, h.t, "mrs") }
	describe := func(addrs ...uint64) []metadata.BufferDesc {
		d := &metadata.SegmentDesc{Name: "h"}
		for _, a := range addrs {
			d.Buffers = append(d.Buffers, metadata.BufferDesc{Addr: a})
		}
		h.t.Describe(d)
		return d.Buffers
	}

	// 200 KiB as cpu:0: chunks of 64, 64, 64 and 8 KiB.
	require.NoError(t, h.t.RegisterMemory(h.addr(0), 200*k, "cpu:0"))
	require.EqualValues(t, 4, mrs())
	bufs := describe(h.addr(0))
	require.Len(t, bufs, 4)
	seen := map[uint32]bool{}
	for i, b := range bufs {
		require.Equal(t, "cpu:0", b.Name)
		require.Equal(t, h.addr(i*64*k), b.Addr)
		require.Equal(t, uint64(min(64*k, 200*k-i*64*k)), b.Length)
		require.Len(t, b.RKey, 2, "one key per barex nic")
		require.Len(t, b.LKey, 2)
		for _, key := range append(b.RKey, b.LKey...) {
			require.False(t, seen[key], "keys are distinct")
			seen[key] = true
		}
	}

	// "*": each chunk is located on its own first byte.
	locate = func(addr, _ uint64) (string, error) {
		if addr >= h.addr(576*k) {
			return "cuda:0", nil
		}
		return "cpu:1", nil
	}
	require.NoError(t, h.t.RegisterMemory(h.addr(512*k), 128*k+1, "*"))
	require.EqualValues(t, 7, mrs())
	var names []string
	for _, b := range describe(h.addr(512 * k)) {
		names = append(names, b.Name)
	}
	require.Equal(t, []string{"cpu:1", "cuda:0", "cuda:0"}, names)
	// A locator that says "host memory" ("") leaves the node to the page.
	locate = func(uint64, uint64) (string, error) { return "", nil }
	require.NoError(t, h.t.RegisterMemory(h.addr(768*k), 4*k, "*"))
	host := describe(h.addr(768 * k))
	require.Len(t, host, 1)
	require.True(t, strings.HasPrefix(host[0].Name, "cpu:"), host[0].Name)
	require.NoError(t, h.t.UnregisterMemory(h.addr(768*k)))
	r, ok := h.t.mem.Region(h.addr(512 * k))
	require.True(t, ok)
	require.Equal(t, []bool{false, true, true}, []bool{r.Chunks[0].Native.gpu, r.Chunks[1].Native.gpu, r.Chunks[2].Native.gpu})
	// The fake refuses a deregistration of the wrong kind: symmetry holds.
	require.NoError(t, h.t.UnregisterMemory(h.addr(512*k)))
	require.EqualValues(t, 4, mrs())

	bad := []struct {
		name    string
		addr    uint64
		length  uint64
		loc     string
		wantErr error
	}{
		{name: "overlap", addr: h.addr(100 * k), length: 1, loc: "cpu:0", wantErr: ErrRegistered},
		{name: "zero length", addr: h.addr(300 * k), length: 0, loc: "cpu:0", wantErr: ErrInvalidConfig},
		{name: "zero address", addr: 0, length: 10, loc: "cpu:0", wantErr: ErrInvalidConfig},
		{name: "wraps", addr: ^uint64(0) - 4, length: 10, loc: "cpu:0", wantErr: ErrInvalidConfig},
		{name: "neither cpu nor cuda", addr: h.addr(300 * k), length: 10, loc: "npu:0", wantErr: ErrInvalidConfig},
		{name: "no ordinal", addr: h.addr(300 * k), length: 10, loc: "cuda", wantErr: ErrInvalidConfig},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, h.t.RegisterMemory(tc.addr, tc.length, tc.loc), tc.wantErr)
			require.EqualValues(t, 4, mrs())
		})
	}

	t.Run("shim fails on the third chunk", func(t *testing.T) {
		knob(t, h.t, "fail_reg_skip", 2)
		knob(t, h.t, "fail_reg", 1)
		err := h.t.RegisterMemory(h.addr(300*k), 200*k, "cpu:0")
		require.ErrorIs(t, err, CodeIO)
		require.Contains(t, err.Error(), "injected registration failure", "the shim's text is kept")
		require.EqualValues(t, 4, mrs(), "the first two chunks were rolled back")
	})
	t.Run("locating fails on the second chunk", func(t *testing.T) {
		locate = func(addr, _ uint64) (string, error) {
			if addr > h.addr(300*k) {
				return "", fmt.Errorf("no such memory")
			}
			return "cpu:0", nil
		}
		require.Error(t, h.t.RegisterMemory(h.addr(300*k), 100*k, "*"))
		require.EqualValues(t, 4, mrs())
	})

	require.ErrorIs(t, h.t.UnregisterMemory(h.addr(1)), ErrAddressNotRegistered)
	require.NoError(t, h.t.UnregisterMemory(h.addr(0)))
	require.Zero(t, mrs())
	require.Empty(t, describe(h.addr(0)), "an unregistered buffer is not published")
}

// TestWildcardWithoutLocate: without Deps.Locate, "*" is host memory named
// by the NUMA node of its first page.
func TestWildcardWithoutLocate(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	h := c.addHost("h", hostSpec{noReg: true})
	h.mem[0] = 1 // resident
	require.NoError(t, h.t.RegisterMemory(h.addr(0), 4096, "*"))
	r, ok := h.t.mem.Region(h.addr(0))
	require.True(t, ok)
	require.True(t, strings.HasPrefix(r.Chunks[0].Location, "cpu:"), r.Chunks[0].Location)
	require.False(t, r.Chunks[0].Native.gpu)
}

// TestGPUMemory: memory located on a GPU is registered as GPU memory and
// every element posted from it says so, with its ordinal (the fake rejects
// an element whose memory type differs from the registration's); with
// ACCL_USE_CPU everything is host memory; ACCL_LOCAL_DEVICE overrides the
// ordinal.
func TestGPUMemory(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	gpu := func(uint64, uint64) (string, error) { return "cuda:1", nil }
	tests := []struct {
		name    string
		cfg     Config
		wantGPU bool
		wantID  int
	}{
		{name: "gpu", wantGPU: true, wantID: 1},
		{name: "ACCL_USE_CPU", cfg: Config{UseCPU: true}},
		{name: "ACCL_LOCAL_DEVICE", cfg: Config{LocalDevice: 5, LocalDeviceSet: true}, wantGPU: true, wantID: 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			a := c.addHost("a", hostSpec{noReg: true, cfg: tc.cfg, locate: gpu})
			b := c.addHost("b", hostSpec{})
			require.NoError(t, a.t.RegisterMemory(a.addr(0), 1<<20, "*"))
			a.regs = append(a.regs, a.addr(0))
			r, _ := a.t.mem.Region(a.addr(0))
			require.Equal(t, tc.wantGPU, r.Chunks[0].Native.gpu)
			if tc.wantGPU {
				require.Equal(t, tc.wantID, r.Chunks[0].Native.gpuID)
			}
			fill(a.mem, 3)
			requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1<<20)))
			requireEqualBytes(t, a.mem, b.mem)
			fill(b.mem, 4)
			requireDone(t, a.transfer(t, context.Background(), b, read(a.addr(0), b.addr(0), 1<<20)))
			requireEqualBytes(t, b.mem, a.mem)
		})
	}
}

// TestDescriptor: what Describe publishes is a valid Mooncake barex
// descriptor that decodes back to the same devices and buffers, with lid 0
// and gid "ignore", and key arrays indexed by barex NIC id even when the
// ids are not dense (B3).
func TestDescriptor(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	h := c.addHost("h", hostSpec{devices: "fake_a:3,fake_b:7", cfg: Config{RegChunkSize: 256 << 10}})
	d := h.desc()
	require.Equal(t, Protocol, d.Protocol)
	require.Equal(t, []metadata.DeviceDesc{{Name: "fake_a", GID: "ignore"}, {Name: "fake_b", GID: "ignore"}}, d.Devices)
	require.Len(t, d.Buffers, 4)
	for _, b := range d.Buffers {
		require.Len(t, b.RKey, 8, "keys by nic id: ids 3 and 7")
		for i, key := range b.RKey {
			require.Equal(t, i == 3 || i == 7, key != 0, "key %d", i)
		}
	}
	raw, err := d.Marshal(false)
	require.NoError(t, err)
	back, err := metadata.DecodeSegmentDesc(raw)
	require.NoError(t, err)
	require.Equal(t, d.Devices, back.Devices)
	require.Equal(t, d.Buffers, back.Buffers)
	want, err := topology.MatrixJSON(d.PriorityMatrix)
	require.NoError(t, err)
	got, err := topology.MatrixJSON(back.PriorityMatrix)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))

	// Sparse NIC ids carry data too.
	o := c.addHost("o", hostSpec{devices: "fake_c:2"})
	fill(h.mem, 9)
	requireDone(t, h.transfer(t, context.Background(), o, write(h.addr(0), o.addr(0), 1<<20)))
	requireEqualBytes(t, h.mem, o.mem)
}

// TestSubmitErrors: requests outside registered memory fail alone and
// name why, and zero-length tasks complete at once; a target that cannot be
// addressed at all fails the whole submission.
func TestSubmitErrors(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{})
	b := c.addHost("b", hostSpec{})
	other := &metadata.SegmentDesc{Name: "b", Protocol: metadata.ProtocolRDMA}
	tests := []struct {
		name    string
		desc    *metadata.SegmentDesc
		req     transport.Request
		wantErr error
		whole   bool
	}{
		{name: "local not registered", req: write(a.addr(0)-4096, b.addr(0), 10), wantErr: ErrAddressNotRegistered},
		{name: "local runs past its registration", req: write(a.addr(1<<20-5), b.addr(0), 10), wantErr: ErrAddressNotRegistered},
		{name: "remote not published", req: write(a.addr(0), b.addr(1<<20), 10), wantErr: ErrAddressNotRegistered},
		{name: "remote wraps", req: write(a.addr(0), ^uint64(0)-3, 10), wantErr: ErrAddressNotRegistered},
		{name: "bad opcode", req: transport.Request{Opcode: 7, Local: uintptr(a.addr(0)), Remote: b.addr(0), Length: 1}, wantErr: ErrInvalidConfig},
		{name: "peer is not barex", desc: other, req: write(a.addr(0), b.addr(0), 10), wantErr: ErrAddressNotRegistered, whole: true},
		{name: "no descriptor", desc: &metadata.SegmentDesc{}, req: write(a.addr(0), b.addr(0), 10), wantErr: ErrAddressNotRegistered, whole: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			desc := tc.desc
			if desc == nil {
				desc = b.desc()
			} else if desc.Name == "" {
				desc = nil
			}
			tasks, g := a.submitDesc(context.Background(), b, desc, tc.req, write(a.addr(0), b.addr(0), 0))
			wait(t, g)
			require.Equal(t, transport.Failed, tasks[0].Status())
			require.ErrorIs(t, tasks[0].Err(), tc.wantErr)
			if tc.whole {
				require.ErrorIs(t, tasks[1].Err(), tc.wantErr)
				return
			}
			require.Equal(t, transport.Completed, tasks[1].Status(), "an empty task completes")
		})
	}
}
