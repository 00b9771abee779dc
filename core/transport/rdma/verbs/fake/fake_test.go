package fake

import (
	"context"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// side is one host's objects for a single QP.
type side struct {
	dev verbs.Device
	pd  verbs.PD
	ch  verbs.CompChannel
	cq  verbs.CQ
	qp  verbs.QP
	mr  verbs.MR
	mem []byte
}

func open(t *testing.T, f *Fabric, host string) *side {
	t.Helper()
	s := &side{}
	var err error
	s.dev, err = f.Provider(host).Open("mlx5_0")
	require.NoError(t, err)
	s.pd, err = s.dev.AllocPD()
	require.NoError(t, err)
	s.ch, err = s.dev.CreateCompChannel()
	require.NoError(t, err)
	s.cq, err = s.dev.CreateCQ(16, s.ch, 0)
	require.NoError(t, err)
	s.qp, err = s.pd.CreateQP(verbs.QPInit{SendCQ: s.cq, RecvCQ: s.cq, MaxSendWR: 4, MaxRecvWR: 4, MaxSendSGE: 1, MaxRecvSGE: 1})
	require.NoError(t, err)
	s.mem, err = syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(t, err)
	s.mr, err = s.pd.RegMR(uintptr(unsafe.Pointer(&s.mem[0])), 4096, verbs.AccessLocalWrite|verbs.AccessRemoteWrite|verbs.AccessRemoteRead)
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{s.mr, s.qp, s.cq, s.ch, s.pd, s.dev} {
			require.NoError(t, c.Close())
		}
		require.NoError(t, syscall.Munmap(s.mem))
	})
	return s
}

func (s *side) addr() uint64 { return uint64(uintptr(unsafe.Pointer(&s.mem[0]))) }

const (
	initMask = verbs.MaskState | verbs.MaskPKeyIndex | verbs.MaskPort | verbs.MaskAccessFlags
	rtrMask  = verbs.MaskState | verbs.MaskAV | verbs.MaskPathMTU | verbs.MaskDestQPN | verbs.MaskRQPSN |
		verbs.MaskMaxDestRdAtomic | verbs.MaskMinRNRTimer
	rtsMask = verbs.MaskState | verbs.MaskTimeout | verbs.MaskRetryCnt | verbs.MaskRNRRetry | verbs.MaskSQPSN | verbs.MaskMaxQPRdAtomic
)

func toInit(t *testing.T, q verbs.QP) {
	require.NoError(t, q.Modify(&verbs.QPAttr{State: verbs.QPSInit, PortNum: 1,
		AccessFlags: verbs.AccessLocalWrite | verbs.AccessRemoteWrite | verbs.AccessRemoteRead}, initMask))
}

func rtr(dst *NIC, qpn uint32) verbs.QPAttr {
	return verbs.QPAttr{State: verbs.QPSRTR, PathMTU: verbs.MTU4096, DestQPN: qpn, MaxDestRdAtomic: 16, MinRNRTimer: 12,
		AH: verbs.AHAttr{IsGlobal: true, DGID: dst.GID(3), SGIDIndex: 3, HopLimit: 16, PortNum: 1}}
}

func connect(t *testing.T, a, b *side, na, nb *NIC) {
	toInit(t, a.qp)
	toInit(t, b.qp)
	ra, rb := rtr(nb, b.qp.Num()), rtr(na, a.qp.Num())
	require.NoError(t, a.qp.Modify(&ra, rtrMask))
	require.NoError(t, b.qp.Modify(&rb, rtrMask))
	for _, s := range []*side{a, b} {
		require.NoError(t, s.qp.Modify(&verbs.QPAttr{State: verbs.QPSRTS, Timeout: 14, RetryCnt: 7, RNRRetry: 7, MaxRdAtomic: 16}, rtsMask))
	}
}

func waitWC(t *testing.T, s *side) verbs.WC {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	wcs := make([]verbs.WC, 1)
	for {
		n, err := s.cq.Poll(wcs)
		require.NoError(t, err)
		if n == 1 {
			return wcs[0]
		}
		require.NoError(t, s.cq.ReqNotify())
		if n, _ = s.cq.Poll(wcs); n == 1 {
			return wcs[0]
		}
		_, err = s.ch.Wait(ctx)
		require.NoError(t, err)
	}
}

func TestQPStateMachineRejects(t *testing.T) {
	testutil.ResourceCheck(t)
	f := NewFabric()
	defer f.Close()
	f.AddNIC("a", NICSpec{Name: "mlx5_0", ActiveMTU: verbs.MTU2048, Limits: Limits{MaxQPRdAtom: 8}})
	nb := f.AddNIC("b", NICSpec{Name: "mlx5_0"})
	a, b := open(t, f, "a"), open(t, f, "b")

	tests := []struct {
		name string
		attr verbs.QPAttr
		mask verbs.QPAttrMask
	}{
		{name: "no state bit", attr: verbs.QPAttr{State: verbs.QPSInit, PortNum: 1}, mask: initMask &^ verbs.MaskState},
		{name: "init without access flags", attr: verbs.QPAttr{State: verbs.QPSInit, PortNum: 1}, mask: initMask &^ verbs.MaskAccessFlags},
		{name: "init on port 2", attr: verbs.QPAttr{State: verbs.QPSInit, PortNum: 2}, mask: initMask},
		{name: "reset to rtr", attr: rtr(nb, b.qp.Num()), mask: rtrMask},
		{name: "reset to rts", attr: verbs.QPAttr{State: verbs.QPSRTS}, mask: rtsMask},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, a.qp.Modify(&tc.attr, tc.mask), syscall.EINVAL)
		})
	}
	toInit(t, a.qp)
	toInit(t, b.qp)
	after := []struct {
		name string
		attr func() verbs.QPAttr
		mask verbs.QPAttrMask
	}{
		{name: "rtr without dest qpn bit", attr: func() verbs.QPAttr { return rtr(nb, b.qp.Num()) }, mask: rtrMask &^ verbs.MaskDestQPN},
		{name: "rtr to unknown qpn", attr: func() verbs.QPAttr { return rtr(nb, 424242) }, mask: rtrMask},
		{name: "rtr to unknown gid", attr: func() verbs.QPAttr { a := rtr(nb, b.qp.Num()); a.AH.DGID[15] ^= 0xff; return a }, mask: rtrMask},
		{name: "rtr mtu above port", attr: func() verbs.QPAttr { return rtr(nb, b.qp.Num()) }, mask: rtrMask},
		{name: "rtr rd atomic above limit", attr: func() verbs.QPAttr { a := rtr(nb, b.qp.Num()); a.PathMTU = verbs.MTU1024; return a }, mask: rtrMask},
		{name: "init to rts", attr: func() verbs.QPAttr { return verbs.QPAttr{State: verbs.QPSRTS} }, mask: rtsMask},
	}
	for _, tc := range after {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.attr()
			require.ErrorIs(t, openQP(t, f).Modify(&a, tc.mask), syscall.EINVAL)
		})
	}
}

// openQP returns host a's QP in INIT.
func openQP(t *testing.T, f *Fabric) verbs.QP {
	s := open(t, f, "a")
	toInit(t, s.qp)
	return s.qp
}

func TestWriteReadAndFailures(t *testing.T) {
	testutil.ResourceCheck(t)
	f := NewFabric()
	defer f.Close()
	na := f.AddNIC("a", NICSpec{Name: "mlx5_0"})
	nb := f.AddNIC("b", NICSpec{Name: "mlx5_0"})
	a, b := open(t, f, "a"), open(t, f, "b")

	// Posting before RTS is refused.
	_, err := a.qp.PostSend([]verbs.SendWR{{WRID: 1}})
	require.ErrorIs(t, err, syscall.EINVAL)
	connect(t, a, b, na, nb)

	copy(a.mem, "hello, fabric")
	n, err := a.qp.PostSend([]verbs.SendWR{{WRID: 7, LocalAddr: a.addr(), RemoteAddr: b.addr() + 100, Length: 13,
		LKey: a.mr.LKey(), RKey: b.mr.RKey(), Opcode: verbs.WRRDMAWrite}})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	wc := waitWC(t, a)
	require.Equal(t, verbs.WCSuccess, wc.Status)
	require.Equal(t, uint64(7), wc.WRID)
	require.Equal(t, "hello, fabric", string(b.mem[100:113]))

	// A bad rkey fails the request and moves the QP to ERR; the next
	// request flushes.
	_, err = a.qp.PostSend([]verbs.SendWR{
		{WRID: 8, LocalAddr: a.addr(), RemoteAddr: b.addr(), Length: 8, LKey: a.mr.LKey(), RKey: 0xdead, Opcode: verbs.WRRDMARead},
		{WRID: 9, LocalAddr: a.addr(), RemoteAddr: b.addr(), Length: 8, LKey: a.mr.LKey(), RKey: b.mr.RKey(), Opcode: verbs.WRRDMARead},
	})
	require.NoError(t, err)
	require.Equal(t, verbs.WCRemAccessErr, waitWC(t, a).Status)
	require.Equal(t, verbs.WCWRFlushErr, waitWC(t, a).Status)
	require.Equal(t, verbs.QPSErr, na.QPs()[0].State)

	// Injected post failure at the k-th request.
	require.NoError(t, a.qp.Modify(&verbs.QPAttr{State: verbs.QPSReset}, verbs.MaskState))
	require.NoError(t, b.qp.Modify(&verbs.QPAttr{State: verbs.QPSReset}, verbs.MaskState))
	connect(t, a, b, na, nb)
	na.FailPostAfter(1)
	wr := verbs.SendWR{LocalAddr: a.addr(), RemoteAddr: b.addr(), Length: 8, LKey: a.mr.LKey(), RKey: b.mr.RKey()}
	n, err = a.qp.PostSend([]verbs.SendWR{wr, wr, wr})
	require.ErrorIs(t, err, syscall.ENOMEM)
	require.Equal(t, 1, n)
	require.Equal(t, verbs.WCSuccess, waitWC(t, a).Status)

	// The send queue holds MaxSendWR requests until they are polled.
	n, err = a.qp.PostSend([]verbs.SendWR{wr, wr, wr, wr, wr})
	require.ErrorIs(t, err, syscall.ENOMEM)
	require.Equal(t, 4, n)
	for range 4 {
		require.Equal(t, verbs.WCSuccess, waitWC(t, a).Status)
	}

	// A path fault and a dead peer QP.
	na.FailPath(nb, verbs.WCRetryExcErr, 1)
	_, err = a.qp.PostSend([]verbs.SendWR{wr})
	require.NoError(t, err)
	require.Equal(t, verbs.WCRetryExcErr, waitWC(t, a).Status)
	require.Equal(t, 1, na.Completions(verbs.WCRetryExcErr))

	// Port events reach open devices.
	na.SetPort(false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ev, err := a.dev.AsyncEvent(ctx)
	require.NoError(t, err)
	require.Equal(t, verbs.AsyncEvent{Type: verbs.EventPortErr, Port: 1}, ev)
	na.SetPort(true)
	ev, err = a.dev.AsyncEvent(ctx)
	require.NoError(t, err)
	require.Equal(t, verbs.EventPortActive, ev.Type)
	require.Empty(t, f.Violations())
}

func TestLeaksAndViolations(t *testing.T) {
	f := NewFabric()
	defer f.Close()
	f.AddNIC("a", NICSpec{Name: "mlx5_0"})
	dev, err := f.Provider("a").Open("mlx5_0")
	require.NoError(t, err)
	pd, err := dev.AllocPD()
	require.NoError(t, err)
	require.Len(t, f.Leaks(), 2)
	require.Contains(t, f.Leaks()[0], "fake_test.go")
	require.NoError(t, dev.Close())
	require.Len(t, f.Violations(), 1, "device closed with a live pd")
	require.NoError(t, pd.Close())

	_, err = f.Provider("nohost").Devices()
	require.ErrorIs(t, err, verbs.ErrNoDevices)
	require.ErrorIs(t, err, verbs.ErrUnavailable)
	_, err = f.Provider("a").Open("mlx5_9")
	require.ErrorIs(t, err, verbs.ErrNoSuchDevice)
}
