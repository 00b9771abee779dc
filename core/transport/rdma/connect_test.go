package rdma

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

func TestOnConnection(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a, b := c.addHost("a", hostSpec{}), c.addHost("b", hostSpec{})
	// b's real QPs, so that a's QPs can reach RTR.
	bEP, err := b.t.ctxs[0].store.getOrCreate("a@mlx5_0", func() (*endpoint, error) { return newEndpoint(b.t.ctxs[0], "a@mlx5_0") })
	require.NoError(t, err)
	qps := bEP.qpNums()
	gid := b.nics[0].GID(3).String()
	good := handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "a@mlx5_0", QPNum: qps, LocalGID: gid}
	tests := []struct {
		name      string
		req       handshake.HandShakeDesc
		wantRefus string
	}{
		{name: "wrong segment", req: handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "z@mlx5_0", QPNum: qps, LocalGID: gid}, wantRefus: "is not a nic of"},
		{name: "unknown hca", req: handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "a@mlx5_9", QPNum: qps, LocalGID: gid}, wantRefus: "no usable hca"},
		{name: "no segment in path", req: handshake.HandShakeDesc{LocalNICPath: "mlx5_0", PeerNICPath: "a@mlx5_0", QPNum: qps, LocalGID: gid}, wantRefus: "want <segment>@<hca>"},
		{name: "qp count mismatch", req: handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "a@mlx5_0", QPNum: qps[:1], LocalGID: gid}, wantRefus: "MC_NUM_QP_PER_EP"},
		{name: "bad gid", req: handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "a@mlx5_0", QPNum: qps, LocalGID: "zz"}, wantRefus: "bad local_gid"},
		{name: "qps that do not exist", req: handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "a@mlx5_0", QPNum: []uint32{1, 2}, LocalGID: gid}, wantRefus: "connect b@mlx5_0"},
		{name: "gid from the descriptor (PR peer)", req: handshake.HandShakeDesc{LocalNICPath: "b@mlx5_0", PeerNICPath: "a@mlx5_0", QPNum: qps}},
		{name: "repeat is idempotent", req: good},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reply := a.t.OnConnection(context.Background(), tc.req)
			require.Equal(t, tc.req.PeerNICPath, reply.LocalNICPath)
			require.Equal(t, tc.req.LocalNICPath, reply.PeerNICPath)
			if tc.wantRefus != "" {
				require.Contains(t, reply.ReplyMsg, tc.wantRefus)
				require.Empty(t, reply.QPNum)
				return
			}
			require.Empty(t, reply.ReplyMsg)
			require.Len(t, reply.QPNum, 2)
			require.Equal(t, a.nics[0].GID(3).String(), reply.LocalGID)
		})
	}
	require.Equal(t, []string{"b@mlx5_0"}, a.t.ctxs[0].store.paths())
}

// FuzzOnConnection feeds arbitrary Connection requests (peer input) to the
// passive side: it must never panic, and a reply either refuses or names
// the requested paths with one QP per configured QP.
func FuzzOnConnection(f *testing.F) {
	f.Add("b@mlx5_0", "a@mlx5_0", uint32(1001), uint32(1002), "00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:02", uint16(0))
	f.Add("@", "a@", uint32(0), uint32(0), "", uint16(7))
	f.Add("b@mlx5_0@x", "a@mlx5_0", uint32(5), uint32(6), "fe80:0000:0000:0000:0000:0000:0000:0001", uint16(1))
	c := newCluster(f)
	c.quiet = true
	a := c.addHost("a", hostSpec{noReg: true})
	c.addHost("b", hostSpec{noReg: true})
	f.Fuzz(func(t *testing.T, local, peer string, q0, q1 uint32, gid string, lid uint16) {
		req := handshake.HandShakeDesc{LocalNICPath: local, PeerNICPath: peer, QPNum: []uint32{q0, q1}, LocalGID: gid, LocalLID: lid}
		reply := a.t.OnConnection(context.Background(), req)
		if reply.ReplyMsg == "" && len(reply.QPNum) != 2 {
			t.Fatalf("accepted with %d qps", len(reply.QPNum))
		}
		if reply.LocalNICPath != peer || reply.PeerNICPath != local {
			t.Fatalf("reply paths %q %q", reply.LocalNICPath, reply.PeerNICPath)
		}
	})
}

// FuzzPeerDescriptor routes requests through arbitrary peer descriptors
// (peer input, decoded by Mooncake's rules): slicing and NIC choice must
// never panic, and every slice must stay inside one published buffer and
// carry a key of it.
func FuzzPeerDescriptor(f *testing.F) {
	f.Add([]byte(`{"name":"p","protocol":"rdma","buffers":[{"name":"cpu:0","addr":4096,"length":100000,"rkey":[1,2],"lkey":[1,2]}],`+
		`"devices":[{"name":"mlx5_0","lid":0,"gid":"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:01"},{"name":"mlx5_1","lid":1,"gid":"x"}],`+
		`"priority_matrix":{"cpu:0":[["mlx5_1","nope"],["mlx5_0"]]}}`), uint64(4096), uint64(70000), uint8(0))
	f.Add([]byte(`{"name":"p","protocol":"rdma","buffers":[{"name":"*","addr":1,"length":18446744073709551614,"rkey":[7],"lkey":[7]}],`+
		`"devices":[{"name":"a","lid":0,"gid":"g"},{"name":"a","lid":0,"gid":"g"}],"priority_matrix":{}}`), uint64(1), uint64(1<<20), uint8(3))
	c := newCluster(f)
	c.quiet = true
	h := c.addHost("h", hostSpec{mem: 1 << 20})
	f.Fuzz(func(t *testing.T, js []byte, remote, length uint64, retry uint8) {
		desc, err := metadata.DecodeSegmentDesc(js)
		if err != nil || desc.Protocol != Protocol || desc.Name == "" {
			return
		}
		rt, err := h.t.routeFor(desc.Name, desc)
		if err != nil {
			return
		}
		task := &transport.Task{}
		task.Init(transport.Request{Opcode: transport.Read, Local: uintptr(h.addr(0)), Remote: remote, Length: length % (1 << 20)}, nil)
		ss, err := h.t.cut(task, rt, submit.NewCall(context.Background()))
		if err != nil {
			return
		}
		for _, s := range ss {
			b := s.rbuf
			if s.remote < b.Addr || s.remote+uint64(s.length) > b.Addr+b.Length {
				t.Fatalf("slice [%#x, +%d) outside buffer [%#x, +%d)", s.remote, s.length, b.Addr, b.Length)
			}
			s.retry = int(retry % 16)
			if _, _, err := h.t.choose(s); err == nil && !slices.Contains(b.RKey, s.rkey) {
				t.Fatalf("rkey %d is not one of the buffer's %v", s.rkey, b.RKey)
			}
		}
	})
}
