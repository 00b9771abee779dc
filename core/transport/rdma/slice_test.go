package rdma

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

// peerDesc builds an rdma descriptor with buffers of the given lengths laid
// end to end from base; buffer i's keys are 1000*(i+1)+device.
func fakePeerDesc(base uint64, lengths []uint64, devices int) *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{Name: "peer", Protocol: Protocol}
	for i := range devices {
		d.Devices = append(d.Devices, metadata.DeviceDesc{Name: "mlx5_" + string(rune('0'+i)), GID: "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01"})
	}
	addr := base
	for i, l := range lengths {
		b := metadata.BufferDesc{Name: "cpu:0", Addr: addr, Length: l}
		for dev := range devices {
			b.RKey = append(b.RKey, uint32(1000*(i+1)+dev))
			b.LKey = append(b.LKey, uint32(1000*(i+1)+dev))
		}
		d.Buffers = append(d.Buffers, b)
		addr += l
	}
	return d
}

type piece struct{ off, length uint64 }

func cutPieces(t *testing.T, tr *Transport, desc *metadata.SegmentDesc, local uintptr, remote, length uint64) ([]*slice, error) {
	rt, err := tr.routeFor(desc.Name, desc)
	require.NoError(t, err)
	task := &transport.Task{}
	task.Init(transport.Request{Opcode: transport.Write, Local: local, Remote: remote, Length: length}, nil)
	return tr.cut(task, rt, submit.NewCall(context.Background()))
}

func TestSlicing(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	// Local memory registered in 1 MiB chunks (a device MR limit).
	h := c.addHost("h", hostSpec{cfg: Config{MaxMRSize: 1 << 20}, mem: 4 << 20})
	base := uint64(1 << 40)
	desc := fakePeerDesc(base, []uint64{3 << 20, 100, 1 << 20}, 1)
	const k = 1024
	tests := []struct {
		name          string
		local, remote uint64 // offsets
		length        uint64
		want          []piece
		wantErr       error
	}{
		{name: "one byte", length: 1, want: []piece{{0, 1}}},
		{name: "one slice", length: 64 * k, want: []piece{{0, 64 * k}}},
		{name: "tail merged up to the fragment limit", length: 80 * k, want: []piece{{0, 80 * k}}},
		{name: "tail above the fragment limit", length: 80*k + 1, want: []piece{{0, 64 * k}, {64 * k, 16*k + 1}}},
		{name: "three slices", length: 192 * k, want: []piece{{0, 64 * k}, {64 * k, 64 * k}, {128 * k, 64 * k}}},
		{name: "local chunk boundary", local: 1<<20 - 100, length: 200, want: []piece{{0, 100}, {100, 100}}},
		{name: "remote buffer boundary", remote: 3<<20 - 10, length: 120, want: []piece{{0, 10}, {10, 100}, {110, 10}}},
		{name: "local not registered", local: 4 << 20, length: 10, wantErr: ErrAddressNotRegistered},
		{name: "local runs past registration", local: 4<<20 - 10, length: 20, wantErr: ErrAddressNotRegistered},
		{name: "remote not published", remote: 5 << 20, length: 10, wantErr: ErrAddressNotRegistered},
		{name: "remote wraps", remote: ^uint64(0) - base - 5, length: 10, wantErr: ErrAddressNotRegistered},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ss, err := cutPieces(t, h.t, desc, uintptr(h.addr(int(tc.local))), base+tc.remote, tc.length)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.Nil(t, ss)
				return
			}
			require.NoError(t, err)
			var got []piece
			for _, s := range ss {
				got = append(got, piece{s.local - h.addr(int(tc.local)), uint64(s.length)})
				require.Equal(t, s.remote-(base+tc.remote), s.local-h.addr(int(tc.local)))
			}
			require.Equal(t, tc.want, got)
		})
	}
}

// TestSlicingProperties cuts random requests over random local chunk sizes
// and remote layouts (equal and unequal buffers, N-way spans): the pieces
// tile [0, L) in order, each lies inside one local chunk and one remote
// buffer, its keys are that chunk's and that buffer's for the chosen
// devices, and no piece exceeds SliceSize+FragmentLimit.
func TestSlicingProperties(t *testing.T) {
	testutil.ResourceCheck(t)
	r := rand.New(rand.NewPCG(1, 2))
	c := newCluster(t)
	const mem = 1 << 20
	for layout := range 12 {
		chunk := uint64(4096 * (1 + r.IntN(64)))
		slice := 1024 * (1 + r.IntN(64))
		h := c.addHost("h"+string(rune('a'+layout)), hostSpec{cfg: Config{MaxMRSize: chunk, SliceSize: slice}, mem: mem,
			nics: nicSpecs(1 + r.IntN(2))})
		var lengths []uint64
		total := uint64(0)
		for total < mem {
			l := uint64(1 + r.IntN(200_000))
			if layout%3 == 0 {
				l = 65536 // equal blocks
			}
			lengths = append(lengths, l)
			total += l
		}
		devices := 1 + r.IntN(3)
		base := uint64(1 << 44)
		desc := fakePeerDesc(base, lengths, devices)
		for range 40 {
			off := uint64(r.IntN(mem - 1))
			length := uint64(1 + r.IntN(int(mem-off)))
			roff := uint64(r.IntN(int(total - length + 1)))
			ss, err := cutPieces(t, h.t, desc, uintptr(h.addr(int(off))), base+roff, length)
			require.NoError(t, err)
			pos := uint64(0)
			for _, s := range ss {
				require.Equal(t, h.addr(int(off))+pos, s.local, "pieces tile the request in order")
				require.Equal(t, base+roff+pos, s.remote)
				require.LessOrEqual(t, int(s.length), h.t.cfg.SliceSize+h.t.cfg.FragmentLimit)
				lc, lend, ok := h.t.mem.Find(s.local)
				require.True(t, ok)
				require.Same(t, lc, s.lchunk)
				require.LessOrEqual(t, s.local+uint64(s.length), lend, "inside one local chunk")
				ri := slices.IndexFunc(desc.Buffers, func(b metadata.BufferDesc) bool { return b.Addr == s.rbuf.Addr })
				require.GreaterOrEqual(t, ri, 0)
				b := desc.Buffers[ri]
				require.LessOrEqual(t, b.Addr, s.remote)
				require.LessOrEqual(t, s.remote+uint64(s.length), b.Addr+b.Length, "inside one remote buffer")
				ctx, _, err := h.t.choose(s)
				require.NoError(t, err)
				require.Equal(t, lc.LKeys[ctx.id], s.lkey)
				require.Equal(t, uint32(1000*(ri+1)+peerIndex(desc, s.peerNIC)), s.rkey)
				pos += uint64(s.length)
			}
			require.Equal(t, length, pos, "the pieces add up to the request")
		}
	}
}

func peerIndex(d *metadata.SegmentDesc, name string) int {
	for i, dev := range d.Devices {
		if dev.Name == name {
			return i
		}
	}
	return -1
}
