package rdma

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

// TestQPStateMachine checks every QP transition an endpoint makes against
// transports.md §4.4: masks, attributes, clamping, and QP i paired with the
// peer's QP i.
func TestQPStateMachine(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{
		nics: []fake.NICSpec{{Name: "mlx5_0", ActiveMTU: verbs.MTU2048, Limits: fake.Limits{MaxQPRdAtom: 8, MaxQPInitRdAtom: 4}}},
		cfg:  Config{NumQPPerEP: 3, TrafficClass: 5, ServiceLevel: 2},
	})
	b := c.addHost("b", hostSpec{cfg: Config{NumQPPerEP: 3, MTU: 1024}})
	requireDone(t, a.transfer(t, context.Background(), b, transport.Request{
		Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: b.addr(0), Length: 1 << 20}))

	aq, bq := a.nics[0].QPs(), b.nics[0].QPs()
	require.Len(t, aq, 3)
	require.Len(t, bq, 3)
	access := verbs.AccessLocalWrite | verbs.AccessRemoteRead | verbs.AccessRemoteWrite | verbs.AccessRemoteAtomic
	for i := range aq {
		for _, side := range []struct {
			name      string
			q, peer   fake.QPInfo
			peerNIC   *fake.NIC
			mtu       verbs.MTU
			tc, sl    uint8
			rd, rdIni uint8
		}{
			// a: port MTU 2048 < MC_MTU 4096; rd_atomic clamped to 8 and 4.
			{name: "a", q: aq[i], peer: bq[i], peerNIC: b.nics[0], mtu: verbs.MTU2048, tc: 5, sl: 2, rd: 8, rdIni: 4},
			// b: MC_MTU 1024 < port MTU 4096.
			{name: "b", q: bq[i], peer: aq[i], peerNIC: a.nics[0], mtu: verbs.MTU1024, rd: 16, rdIni: 16},
		} {
			h := side.q.History
			require.Len(t, h, 3, side.name)
			require.Equal(t, verbs.QPSRTS, side.q.State)

			require.Equal(t, verbs.QPSReset, h[0].From)
			require.Equal(t, verbs.QPSInit, h[0].To)
			require.Equal(t, verbs.MaskState|verbs.MaskPKeyIndex|verbs.MaskPort|verbs.MaskAccessFlags, h[0].Mask)
			require.Equal(t, uint8(1), h[0].Attr.PortNum)
			require.Equal(t, uint16(0), h[0].Attr.PKeyIndex)
			require.Equal(t, access, h[0].Attr.AccessFlags)

			require.Equal(t, verbs.QPSRTR, h[1].To)
			require.Equal(t, verbs.MaskState|verbs.MaskPathMTU|verbs.MaskMinRNRTimer|verbs.MaskAV|
				verbs.MaskMaxDestRdAtomic|verbs.MaskDestQPN|verbs.MaskRQPSN, h[1].Mask)
			r := h[1].Attr
			require.Equal(t, side.mtu, r.PathMTU, side.name)
			require.Equal(t, side.peer.Num, r.DestQPN, "qp %d pairs with the peer's qp %d", i, i)
			require.Equal(t, uint32(0), r.RQPSN)
			require.Equal(t, side.rd, r.MaxDestRdAtomic)
			require.Equal(t, uint8(12), r.MinRNRTimer)
			require.Equal(t, verbs.AHAttr{IsGlobal: true, DGID: side.peerNIC.GID(3), SGIDIndex: 3, HopLimit: 16,
				TrafficClass: side.tc, SL: side.sl, PortNum: 1}, r.AH)

			require.Equal(t, verbs.QPSRTS, h[2].To)
			require.Equal(t, verbs.MaskState|verbs.MaskTimeout|verbs.MaskRetryCnt|verbs.MaskRNRRetry|
				verbs.MaskSQPSN|verbs.MaskMaxQPRdAtomic, h[2].Mask)
			s := h[2].Attr
			require.Equal(t, uint8(14), s.Timeout)
			require.Equal(t, uint8(7), s.RetryCnt)
			require.Equal(t, uint8(7), s.RNRRetry)
			require.Equal(t, uint32(0), s.SQPSN)
			require.Equal(t, side.rdIni, s.MaxRdAtomic)
		}
	}
}

func TestGIDChoice(t *testing.T) {
	testutil.ResourceCheck(t)
	tests := []struct {
		name     string
		nic      fake.NICSpec
		cfg      Config
		wantIdx  int
		wantLID  bool
		wantFail bool
	}{
		// The fake RoCE table: 0 link-local v1, 1 link-local v2, 2 v4 v1, 3 v4 v2.
		{name: "roce auto picks ipv4-mapped v2", nic: fake.NICSpec{Name: "mlx5_0"}, wantIdx: 3},
		{name: "roce configured index", nic: fake.NICSpec{Name: "mlx5_0"}, cfg: Config{GIDIndex: 1}, wantIdx: 1},
		{name: "roce configured zero", nic: fake.NICSpec{Name: "mlx5_0"}, cfg: Config{GIDIndexSet: true}, wantIdx: 0},
		{name: "ib auto", nic: fake.NICSpec{Name: "mlx5_0", InfiniBand: true}, wantIdx: 0, wantLID: true},
		{name: "index out of range", nic: fake.NICSpec{Name: "mlx5_0"}, cfg: Config{GIDIndex: 9}, wantFail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			nic := c.fab.AddNIC("h", tc.nic)
			topo := mustTopo(t, `{"cpu:0":[["mlx5_0"],[]]}`)
			tr, err := New(context.Background(), tc.cfg, Deps{Provider: c.fab.Provider("h"), LocalName: "h", Topology: topo})
			if tc.wantFail {
				require.ErrorIs(t, err, ErrNoDevices)
				return
			}
			require.NoError(t, err)
			defer tr.Close()
			require.Equal(t, tc.wantIdx, tr.ctxs[0].gidIndex)
			lid, gid := tr.ctxs[0].address()
			require.Equal(t, nic.GID(tc.wantIdx), gid)
			require.Equal(t, tc.wantLID, lid != 0)
		})
	}
}
