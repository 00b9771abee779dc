package rdma

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/gpu"
	gpufake "github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

func TestNewErrors(t *testing.T) {
	testutil.ResourceCheck(t)
	tests := []struct {
		name    string
		nics    []fake.NICSpec
		matrix  string
		cfg     Config
		deps    func(*Deps)
		wantErr []error
		wantMsg string
		wantHCA []string
	}{
		{name: "no devices on the host", matrix: `{"cpu:0":[["mlx5_0"],[]]}`,
			wantErr: []error{ErrNoDevices, ErrUnavailable}, wantMsg: "no RDMA devices"},
		{name: "topology without hca", nics: nicSpecs(1), matrix: `{"cpu:0":[[],[]]}`,
			wantErr: []error{ErrNoDevices, ErrUnavailable}, wantMsg: "no RDMA devices"},
		{name: "only port down", nics: []fake.NICSpec{{Name: "mlx5_0", Down: true}}, matrix: `{"cpu:0":[["mlx5_0"],[]]}`,
			wantErr: []error{ErrNoDevices}},
		{name: "topology names a missing device", nics: nicSpecs(1), matrix: `{"cpu:0":[["mlx5_7"],[]]}`,
			wantErr: []error{ErrNoDevices, verbs.ErrNoSuchDevice}},
		{name: "one of two down is left out", nics: []fake.NICSpec{{Name: "mlx5_0", Down: true}, {Name: "mlx5_1"}},
			matrix: `{"cpu:0":[["mlx5_0","mlx5_1"],[]]}`, wantHCA: []string{"mlx5_1"}},
		{name: "bad config", nics: nicSpecs(1), matrix: `{"cpu:0":[["mlx5_0"],[]]}`, cfg: Config{MTU: 300, RetryCnt: 500},
			wantErr: []error{ErrInvalidConfig}},
		{name: "no provider", matrix: `{}`, deps: func(d *Deps) { d.Provider = nil }, wantErr: []error{ErrInvalidConfig}},
		{name: "bad local name", nics: nicSpecs(1), matrix: `{"cpu:0":[["mlx5_0"],[]]}`, deps: func(d *Deps) { d.LocalName = "a@b" },
			wantErr: []error{ErrInvalidConfig}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := fake.NewFabric()
			defer f.Close()
			for _, n := range tc.nics {
				f.AddNIC("h", n)
			}
			deps := Deps{Provider: f.Provider("h"), LocalName: "h", Topology: mustTopo(t, tc.matrix), Logger: zaptest.NewLogger(t)}
			if tc.deps != nil {
				tc.deps(&deps)
			}
			tr, err := New(context.Background(), tc.cfg, deps)
			if tc.wantErr != nil {
				for _, w := range tc.wantErr {
					require.ErrorIs(t, err, w)
				}
				if tc.wantMsg != "" {
					require.Contains(t, err.Error(), tc.wantMsg)
				}
				require.Nil(t, tr)
				require.Empty(t, f.Leaks())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantHCA, tr.Topology().HCANames())
			d := &metadata.SegmentDesc{Name: "h"}
			tr.Describe(d)
			require.Len(t, d.Devices, len(tc.wantHCA))
			require.NoError(t, tr.Close())
			require.Empty(t, f.Leaks())
		})
	}
}

func TestSelection(t *testing.T) {
	some := &topology.Topology{HCAs: []topology.HCA{{Name: "mlx5_0"}}}
	none := &topology.Topology{}
	require.True(t, Wanted(false, false, some))
	require.False(t, Wanted(false, false, none))
	require.False(t, Wanted(true, false, some), "MC_FORCE_TCP wins")
	require.True(t, Wanted(false, true, none), "MC_FORCE_HCA wants rdma even without an hca")
	require.True(t, FallBackToTCP(ErrNoDevices, false))
	require.False(t, FallBackToTCP(ErrNoDevices, true))
	require.False(t, FallBackToTCP(errors.New("ibv_alloc_pd failed"), false))
	require.False(t, FallBackToTCP(nil, false))
}

func TestDescribe(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	matrix := `{"cpu:0":[["mlx5_0"],["mlx5_1"]],"cuda:0":[["mlx5_1"],["mlx5_0"]]}`
	h := c.addHost("10.0.0.1:15001", hostSpec{nics: []fake.NICSpec{{Name: "mlx5_0"}, {Name: "mlx5_1", InfiniBand: true}},
		matrix: matrix, cfg: Config{MaxMRSize: 1 << 20}, mem: 3<<20 + 4096, noReg: true})
	require.NoError(t, h.t.RegisterMemory(h.addr(0), 3<<20+4096, "cpu:0"))
	d := &metadata.SegmentDesc{Name: h.name, Protocol: "tcp", TCPDataPort: 15002, TCPProtoVersion: 2,
		Buffers: []metadata.BufferDesc{{Name: h.name, Addr: h.addr(0), Length: 3<<20 + 4096}, {Name: h.name, Addr: 42, Length: 1}}}
	h.t.Describe(d)
	require.Equal(t, "rdma", d.Protocol)
	require.Zero(t, d.TCPDataPort)
	require.Equal(t, 1, d.TCPProtoVersion)
	require.Equal(t, []metadata.DeviceDesc{
		{Name: "mlx5_0", LID: 0, GID: h.nics[0].GID(3).String()},
		{Name: "mlx5_1", LID: 2, GID: h.nics[1].GID(0).String()},
	}, d.Devices)
	require.Regexp(t, `^([0-9a-f]{2}:){15}[0-9a-f]{2}$`, d.Devices[0].GID)
	// 3 MiB + 4 KiB in chunks of at most 1 MiB: four buffers, each with a
	// key per device; the unregistered buffer is dropped.
	require.Len(t, d.Buffers, 4)
	for i, b := range d.Buffers {
		require.Equal(t, "cpu:0", b.Name)
		require.Equal(t, h.addr(i<<20), b.Addr)
		require.Len(t, b.RKey, 2)
		require.Len(t, b.LKey, 2)
	}
	require.Equal(t, uint64(4096), d.Buffers[3].Length)
	require.Equal(t, 4, h.nics[0].MRs(), "one MR per chunk on each nic")
	require.Equal(t, 4, h.nics[1].MRs())

	// The descriptor is Mooncake's: it encodes and decodes with the
	// jsoncpp-compatible codec, keys in device order.
	b, err := d.Marshal(true)
	require.NoError(t, err)
	require.Contains(t, string(b), `"priority_matrix":{"cpu:0":[["mlx5_0"],["mlx5_1"]],"cuda:0":[["mlx5_1"],["mlx5_0"]]}`)
	require.Contains(t, string(b), `{"gid":"`+d.Devices[0].GID+`","lid":0,"name":"mlx5_0"}`)
	require.Contains(t, string(b), `"tcp_data_port":0,"tcp_proto_version":1`)
	back, err := metadata.DecodeSegmentDesc(b)
	require.NoError(t, err)
	require.Equal(t, d.Devices, back.Devices)
	require.Equal(t, d.Buffers, back.Buffers)
	require.Equal(t, d.PriorityMatrix, back.PriorityMatrix)
}

func TestRegisterMemory(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	h := c.addHost("h", hostSpec{mem: 1 << 20, noReg: true})
	base := h.addr(0)
	require.NoError(t, h.t.RegisterMemory(base, 64<<10, "cpu:0"))
	tests := []struct {
		name    string
		addr    uint64
		length  uint64
		loc     string
		wantErr error
	}{
		{name: "overlap", addr: base + 4096, length: 4096, loc: "cpu:0", wantErr: ErrRegistered},
		{name: "zero length", addr: base + 128<<10, length: 0, loc: "cpu:0", wantErr: ErrInvalidConfig},
		{name: "null address", addr: 0, length: 10, loc: "cpu:0", wantErr: ErrInvalidConfig},
		{name: "wraps", addr: ^uint64(0) - 5, length: 10, loc: "cpu:0", wantErr: ErrInvalidConfig},
		{name: "gpu without peermem or dma-buf", addr: base + 256<<10, length: 4096, loc: "cuda:0", wantErr: ErrGPUMemory},
		{name: "adjacent is fine", addr: base + 64<<10, length: 4096, loc: "cpu:0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := h.t.RegisterMemory(tc.addr, tc.length, tc.loc)
			require.ErrorIs(t, err, tc.wantErr)
		})
	}
	require.Equal(t, 2, h.nics[0].MRs())
	require.NoError(t, h.t.UnregisterMemory(base+64<<10))
	require.ErrorIs(t, h.t.UnregisterMemory(base+64<<10), ErrAddressNotRegistered)
	require.Equal(t, 1, h.nics[0].MRs())

	// "*" is resolved from the first page's NUMA node (or stays "*" where
	// the kernel will not say).
	h.mem[512<<10] = 1 // fault the page in
	require.NoError(t, h.t.RegisterMemory(base+512<<10, 4096, "*"))
	ch, _, ok := h.t.mem.Find(base + 512<<10)
	require.True(t, ok)
	loc := ch.Location
	require.Regexp(t, `^(cpu:\d+|\*)$`, loc)
}

// TestRegisterGPUMemory registers GPU memory of the FAKE GPU driver
// (core/gpu/fake, standing in for a GPU this host lacks) through its
// dma-buf export where nvidia-peermem is not loaded, and moves bytes
// between it and a peer's host memory in both directions; the fake fabric
// reaches a dma-buf MR through the dma-buf's pages, so the bytes prove the
// offsets. Every dma-buf fd is closed after registration.
func TestRegisterGPUMemory(t *testing.T) {
	testutil.ResourceCheck(t)
	drv := gpufake.New(1)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	c := newCluster(t)
	const n = 1 << 20
	dev, err := drv.Alloc(0, n)
	require.NoError(t, err)
	exports := 0
	g := c.addHost("g", hostSpec{matrix: `{"cpu:0":[["mlx5_0"],[]],"cuda:0":[["mlx5_0"],[]]}`,
		cfg: Config{MaxMRSize: 256 << 10}, mem: n,
		dmaBuf: func(addr uintptr, length uint64) (gpu.DmaBuf, error) {
			exports++
			return drv.ExportDmaBuf(addr, length)
		}})
	b := c.addHost("b", hostSpec{})
	before := g.nics[0].MRs()
	require.NoError(t, g.t.RegisterMemory(uint64(dev), n, "cuda:0"))
	require.Equal(t, 1, exports)
	require.Equal(t, 4, g.nics[0].DmabufMRs(), "one dma-buf MR per chunk")
	require.Equal(t, before+4, g.nics[0].MRs())

	// GPU -> peer host memory, from g; then peer -> GPU.
	want := make([]byte, 300<<10)
	fill(want, 21)
	require.NoError(t, drv.Write(dev+100<<10, want))
	requireDone(t, g.transfer(t, context.Background(), b, transport.Request{Opcode: transport.Write,
		Local: dev + 100<<10, Remote: b.addr(4096), Length: uint64(len(want))}))
	requireEqualBytes(t, want, b.mem[4096:4096+len(want)])
	fill(b.mem[:len(want)], 22)
	requireDone(t, g.transfer(t, context.Background(), b, transport.Request{Opcode: transport.Read,
		Local: dev + 500<<10, Remote: b.addr(0), Length: uint64(len(want))}))
	got := make([]byte, len(want))
	require.NoError(t, drv.Read(dev+500<<10, got))
	requireEqualBytes(t, b.mem[:len(want)], got)

	// The peer reads g's GPU memory, published as cuda:0 buffers.
	d := &metadata.SegmentDesc{Name: "g", Buffers: []metadata.BufferDesc{{Addr: uint64(dev), Length: n}}}
	g.t.Describe(d)
	require.Len(t, d.Buffers, 4)
	require.Equal(t, "cuda:0", d.Buffers[0].Name)
	requireDone(t, b.transferDesc(t, context.Background(), "g", d, transport.Request{Opcode: transport.Read,
		Local: uintptr(b.addr(1 << 20)), Remote: uint64(dev + 100<<10), Length: uint64(len(want))}))
	requireEqualBytes(t, want, b.mem[1<<20:1<<20+len(want)])

	// A GPU that exports no dma-buf: the registration fails, naming why,
	// and leaves nothing registered.
	dev2, err := drv.Alloc(0, 4096)
	require.NoError(t, err)
	drv.SetDmaBuf(false)
	require.ErrorIs(t, g.t.RegisterMemory(uint64(dev2), 4096, "cuda:0"), gpu.ErrNotSupported)
	require.Equal(t, before+4, g.nics[0].MRs())
	require.NoError(t, g.t.UnregisterMemory(uint64(dev)))
	require.Equal(t, before, g.nics[0].MRs())

	// With nvidia-peermem: plain ibv_reg_mr, no export.
	mem, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(t, err)
	defer syscall.Munmap(mem)
	nic2 := c.fab.AddNIC("p", fake.NICSpec{Name: "mlx5_0"})
	topo := mustTopo(t, `{"cuda:0":[["mlx5_0"],[]]}`)
	topo.PeerMem = true
	tr, err := New(context.Background(), Config{}, Deps{Provider: c.fab.Provider("p"), LocalName: "p", Topology: topo})
	require.NoError(t, err)
	require.NoError(t, tr.RegisterMemory(uint64(addrOf(mem)), n, "cuda:0"))
	require.Zero(t, nic2.DmabufMRs())
	require.Equal(t, 1, nic2.MRs())
	require.NoError(t, tr.Close())
}

func TestTaskErrors(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{mem: 1 << 20}), c.addHost("b", hostSpec{mem: 1 << 20})
	tcpDesc := &metadata.SegmentDesc{Name: "b", Protocol: "tcp"}
	tests := []struct {
		name    string
		req     transport.Request
		desc    *metadata.SegmentDesc
		wantErr error
	}{
		{name: "zero length completes", req: transport.Request{Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: b.addr(0)}},
		{name: "local not registered", req: transport.Request{Opcode: transport.Write, Local: 4096, Remote: b.addr(0), Length: 10}, wantErr: ErrAddressNotRegistered},
		{name: "remote not published", req: transport.Request{Opcode: transport.Read, Local: uintptr(a.addr(0)), Remote: 4096, Length: 10}, wantErr: ErrAddressNotRegistered},
		{name: "remote runs past its buffer", req: transport.Request{Opcode: transport.Read, Local: uintptr(a.addr(0)), Remote: b.addr(1<<20 - 5), Length: 10}, wantErr: ErrAddressNotRegistered},
		{name: "bad opcode", req: transport.Request{Opcode: 9, Local: uintptr(a.addr(0)), Remote: b.addr(0), Length: 10}, wantErr: ErrInvalidConfig},
		{name: "tcp peer", req: write(a, b, 0, 10), desc: tcpDesc, wantErr: ErrNoPath},
		{name: "no descriptor", req: write(a, b, 0, 10), desc: &metadata.SegmentDesc{}, wantErr: ErrNoPath},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			desc := tc.desc
			if desc == nil {
				desc = b.desc(t)
			}
			if desc.Name == "" {
				desc = nil
			}
			tasks := a.transferDesc(t, context.Background(), "b", desc, tc.req)
			if tc.wantErr == nil {
				requireDone(t, tasks)
				return
			}
			require.Equal(t, transport.Failed, tasks[0].Status())
			require.ErrorIs(t, tasks[0].Err(), tc.wantErr)
		})
	}
}
