package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func newEngine(tb testing.TB, env map[string]string) *Engine {
	tb.Helper()
	return testEngine{env: env}.mustStart(tb)
}

// pair is an initiator and a target engine, each with a registered buffer.
type pair struct {
	ini, tgt      *Engine
	local, remote []byte
	seg           SegmentHandle
}

func newPair(tb testing.TB, size int, iniEnv, tgtEnv map[string]string) *pair {
	tb.Helper()
	p := &pair{tgt: newEngine(tb, tgtEnv), ini: newEngine(tb, iniEnv)}
	p.local, p.remote = testutil.Mmap(tb, size), testutil.Mmap(tb, size)
	require.NoError(tb, p.ini.RegisterMemory(addr(p.local), uint64(size), "cpu:0"))
	require.NoError(tb, p.tgt.RegisterMemory(addr(p.remote), uint64(size), "*"))
	seg, err := p.ini.OpenSegment(context.Background(), p.tgt.Name())
	require.NoError(tb, err)
	p.seg = seg
	return p
}

// requireSame compares byte slices without dumping megabytes on failure.
func requireSame(tb testing.TB, want, got []byte, msg ...any) {
	tb.Helper()
	if len(want) != len(got) {
		tb.Fatalf("length %d, want %d %v", len(got), len(want), msg)
	}
	for i := range want {
		if want[i] != got[i] {
			tb.Fatalf("first difference at byte %d of %d: got %#x, want %#x %v", i, len(want), got[i], want[i], msg)
		}
	}
}

func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func TestP2PRenameAndDescriptor(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEngine(t, nil)
	require.Equal(t, fmt.Sprintf("127.0.0.1:%d", e.RPCPort()), e.Name())
	require.GreaterOrEqual(t, e.RPCPort(), 15000)
	require.LessOrEqual(t, e.RPCPort(), 17000)
	require.NotEqual(t, e.RPCPort(), descOf(t, e).TCPDataPort)
	var d map[string]any
	require.NoError(t, json.Unmarshal(e.Descriptor(), &d))
	require.Equal(t, "tcp", d["protocol"])
	require.EqualValues(t, 2, d["tcp_proto_version"])
	require.Empty(t, d["buffers"])
}

func TestIPv6NameIsBracketed(t *testing.T) {
	testutil.ResourceCheck(t)
	e, err := testEngine{local: "::1", env: map[string]string{"MC_USE_IPV6": "1"}}.start(t)
	if err != nil && strings.Contains(err.Error(), "address family") {
		t.Skip("no IPv6 on this host")
	}
	require.NoError(t, err)
	defer e.Close()
	require.Equal(t, fmt.Sprintf("[::1]:%d", e.RPCPort()), e.Name())
}

func TestTransferSizes(t *testing.T) {
	testutil.ResourceCheck(t)
	const size = 64<<20 + 4096
	p := newPair(t, size, nil, nil)
	for _, n := range []int{0, 1, 4 << 10, 1 << 20, 64 << 20} {
		for _, op := range []transport.Opcode{transport.Write, transport.Read} {
			t.Run(fmt.Sprintf("%s/%d", op, n), func(t *testing.T) {
				src, dst := p.local, p.remote
				if op == transport.Read {
					src, dst = p.remote, p.local
				}
				fill(src[:n], uint64(n)+uint64(op))
				clear(dst[:n+1])
				err := p.ini.Transfer(ctxT(t), []Request{{Opcode: op, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: uint64(n)}}, nil)
				require.NoError(t, err)
				requireSame(t, src[:n], dst[:n])
				require.Zero(t, dst[n], "wrote past the end")
			})
		}
	}
}

func TestBatchOfRandomSizes(t *testing.T) {
	testutil.ResourceCheck(t)
	const size = 32 << 20
	p := newPair(t, size, nil, nil)
	r := rand.New(rand.NewPCG(1, 2))
	fill(p.local, 3)
	var reqs []Request
	off := 0
	for i := 0; i < 100; i++ {
		n := r.IntN(256 << 10)
		if off+n > size {
			break
		}
		reqs = append(reqs, Request{Opcode: transport.Write, Local: addr(p.local) + uintptr(off), Segment: p.seg, Remote: uint64(addr(p.remote)) + uint64(off), Length: uint64(n)})
		off += n
	}
	id, err := p.ini.AllocateBatch(len(reqs))
	require.NoError(t, err)
	require.NoError(t, p.ini.Submit(id, reqs))
	st, err := p.ini.Wait(ctxT(t), id)
	require.NoError(t, err)
	require.Equal(t, transport.Completed, st)
	for i, rq := range reqs {
		ts, n, err := p.ini.TaskStatus(id, i)
		require.NoError(t, err)
		require.Equal(t, transport.Completed, ts)
		require.Equal(t, rq.Length, n)
	}
	require.NoError(t, p.ini.FreeBatch(id))
	requireSame(t, p.local[:off], p.remote[:off])

	// and read it all back into a cleared buffer, async, polling
	clear(p.local)
	for i := range reqs {
		reqs[i].Opcode = transport.Read
	}
	id, err = p.ini.AllocateBatch(len(reqs))
	require.NoError(t, err)
	require.NoError(t, p.ini.Submit(id, reqs))
	require.Eventually(t, func() bool {
		st, err := p.ini.BatchStatus(id)
		require.NoError(t, err)
		return st == transport.Completed
	}, 20*time.Second, time.Millisecond)
	require.NoError(t, p.ini.FreeBatch(id))
	requireSame(t, p.remote[:off], p.local[:off])
}

func TestFramingsAgainstEachOther(t *testing.T) {
	for _, tc := range []struct {
		name string
		ini  map[string]string
	}{
		{"v2", nil},
		{"v1 client", map[string]string{"MC_TCP_PROTO": "1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			p := newPair(t, 4<<20, tc.ini, nil)
			fill(p.local, 9)
			require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 4 << 20}}, nil))
			// v1 has no ack: a write completes when its bytes are in the
			// kernel, so the target may still be applying them.
			require.Eventually(t, func() bool { return bytes.Equal(p.local, p.remote) }, 10*time.Second, time.Millisecond)
			fill(p.remote, 10)
			clear(p.local)
			require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Read, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 4 << 20}}, nil))
			requireSame(t, p.remote, p.local)
		})
	}
}

func TestRejections(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	base := uint64(addr(p.remote))
	other := testutil.Mmap(t, 4096)
	tests := []struct {
		name string
		req  Request
		want error
	}{
		{"remote out of range", Request{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: base + 1<<20, Length: 16}, ErrAddressNotRegistered},
		{"remote partly outside", Request{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: base + 1<<20 - 8, Length: 16}, ErrAddressNotRegistered},
		{"remote wraps", Request{Opcode: transport.Read, Local: addr(p.local), Segment: p.seg, Remote: ^uint64(0) - 4, Length: 16}, ErrAddressNotRegistered},
		{"local unregistered", Request{Opcode: transport.Write, Local: addr(other), Segment: p.seg, Remote: base, Length: 16}, ErrAddressNotRegistered},
		{"unknown segment", Request{Opcode: transport.Write, Local: addr(p.local), Segment: 999, Remote: base, Length: 16}, ErrUnknownSegment},
		{"bad opcode", Request{Opcode: 7, Local: addr(p.local), Segment: p.seg, Remote: base, Length: 16}, ErrInvalidArgument},
	}
	fill(p.remote, 5)
	before := append([]byte(nil), p.remote...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := p.ini.Transfer(ctxT(t), []Request{tc.req}, nil)
			require.ErrorIs(t, err, tc.want)
		})
	}
	requireSame(t, before, p.remote, "a rejected request changed target memory")

	t.Run("unknown segment name", func(t *testing.T) {
		_, err := p.ini.OpenSegment(ctxT(t), "127.0.0.1:1")
		require.Error(t, err)
		_, err = p.ini.OpenSegment(ctxT(t), "")
		require.ErrorIs(t, err, ErrInvalidArgument)
	})
	t.Run("unknown batch ids", func(t *testing.T) {
		for _, id := range []BatchID{0, 1, 1<<32 | 1, ^BatchID(0), 12345678901} {
			_, err := p.ini.BatchStatus(id)
			require.ErrorIs(t, err, ErrUnknownBatch)
			require.ErrorIs(t, p.ini.FreeBatch(id), ErrUnknownBatch)
			require.ErrorIs(t, p.ini.Submit(id, nil), ErrUnknownBatch)
		}
		id, err := p.ini.AllocateBatch(1)
		require.NoError(t, err)
		require.NoError(t, p.ini.FreeBatch(id))
		_, err = p.ini.BatchStatus(id)
		require.ErrorIs(t, err, ErrUnknownBatch, "a freed id must not resolve")
		id2, err := p.ini.AllocateBatch(1)
		require.NoError(t, err)
		require.NotEqual(t, id, id2, "a reused slot gets a new id")
		require.NoError(t, p.ini.FreeBatch(id2))
	})
	t.Run("capacity", func(t *testing.T) {
		id, err := p.ini.AllocateBatch(1)
		require.NoError(t, err)
		req := Request{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: base, Length: 1}
		require.ErrorIs(t, p.ini.Submit(id, []Request{req, req}), ErrTooManyRequests)
		require.NoError(t, p.ini.FreeBatch(id))
	})
}

func TestFreeBusyBatch(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 64<<20, nil, nil)
	id, err := p.ini.AllocateBatch(1)
	require.NoError(t, err)
	require.NoError(t, p.ini.Submit(id, []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 64 << 20}}))
	err = p.ini.FreeBatch(id)
	if err == nil {
		t.Skip("the 64 MiB write finished before the free; nothing to test on this machine")
	}
	require.ErrorIs(t, err, ErrBatchBusy)
	_, err = p.ini.Wait(ctxT(t), id)
	require.NoError(t, err)
	require.NoError(t, p.ini.FreeBatch(id))
}

func TestRegistration(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEngine(t, nil)
	b := testutil.Mmap(t, 1<<20)
	a := addr(b)
	require.ErrorIs(t, e.RegisterMemory(a, 0, "*"), ErrInvalidArgument)
	require.ErrorIs(t, e.RegisterMemory(a, 10, "gpu0"), ErrInvalidArgument)
	require.NoError(t, e.RegisterMemory(a, 4096, "cpu:0"))
	require.ErrorIs(t, e.RegisterMemory(a+100, 10, "*"), ErrAddressOverlapped)
	require.ErrorIs(t, e.RegisterMemory(a-100, 200, "*"), ErrAddressOverlapped)
	require.ErrorIs(t, e.RegisterMemoryBatch([]uintptr{a + 8192, a + 8192}, []uint64{10, 10}, "*"), ErrAddressOverlapped)
	require.ErrorIs(t, e.RegisterMemoryBatch([]uintptr{a + 8192}, []uint64{10, 10}, "*"), ErrInvalidArgument)
	require.Len(t, descOf(t, e).Buffers, 1, "failed registrations changed nothing")
	require.NoError(t, e.RegisterMemoryBatch([]uintptr{a + 8192, a + 16384}, []uint64{4096, 4096}, "cuda:0"))
	d := descOf(t, e)
	require.Len(t, d.Buffers, 3)
	require.Equal(t, e.Name(), d.Buffers[0].Name)
	require.NoError(t, e.CheckLocal(a+8192, 4096))
	require.ErrorIs(t, e.CheckLocal(a+8192, 4097), ErrAddressNotRegistered)
	require.ErrorIs(t, e.UnregisterMemoryBatch([]uintptr{a, a + 1}), ErrAddressNotRegistered)
	require.Len(t, descOf(t, e).Buffers, 3)
	require.NoError(t, e.UnregisterMemoryBatch([]uintptr{a, a + 8192}))
	require.NoError(t, e.UnregisterMemory(a+16384))
	require.ErrorIs(t, e.UnregisterMemory(a), ErrAddressNotRegistered)
	require.Empty(t, descOf(t, e).Buffers)
}

func TestPeerSeesNewRegistrations(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	later := testutil.Mmap(t, 4096)
	require.NoError(t, p.tgt.RegisterMemory(addr(later), 4096, "*"))
	fill(p.local[:4096], 11)
	require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(later)), Length: 4096}}, nil))
	requireSame(t, p.local[:4096], later)
}

func TestNotifyAndProbe(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	require.NoError(t, p.ini.Probe(ctxT(t), p.tgt.Name()))
	require.Error(t, p.ini.Probe(ctxT(t), "127.0.0.1:1"))
	n := Notify{Name: "job1", Msg: "hello"}
	require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 128}}, &n))
	require.Equal(t, []Notify{n}, p.tgt.Notifies())
	require.Empty(t, p.tgt.Notifies(), "notifies are drained")
	require.NoError(t, p.ini.SendNotify(ctxT(t), p.tgt.Name(), Notify{Name: "x", Msg: "y"}))
	require.Equal(t, []Notify{{Name: "x", Msg: "y"}}, p.tgt.Notifies())

	// async: the notify goes out when a poll first sees the batch completed
	id, err := p.ini.AllocateBatch(1)
	require.NoError(t, err)
	require.NoError(t, p.ini.SubmitWithNotify(id, []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 1}}, Notify{Name: "a", Msg: "b"}))
	require.Eventually(t, func() bool { st, _ := p.ini.BatchStatus(id); return st == transport.Completed }, 10*time.Second, time.Millisecond)
	require.NoError(t, p.ini.FreeBatch(id))
	require.Equal(t, []Notify{{Name: "a", Msg: "b"}}, p.tgt.Notifies())
}

func TestManagedBuffers(t *testing.T) {
	testutil.ResourceCheck(t)
	e := newEngine(t, nil)
	a, err := e.AllocateManaged(4096)
	require.NoError(t, err)
	require.NoError(t, e.CheckLocal(a, 8<<10), "a 4 KiB request gets an 8 KiB block")
	d := descOf(t, e)
	require.Len(t, d.Buffers, 1)
	require.EqualValues(t, 2<<30, d.Buffers[0].Length, "one 2 GiB pool, as Mooncake publishes it")
	b, err := e.AllocateManaged(8 << 10)
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	require.ErrorIs(t, e.FreeManaged(a, 1<<20), ErrInvalidArgument, "wrong size class")
	require.NoError(t, e.FreeManaged(a, 4096))
	require.ErrorIs(t, e.FreeManaged(a, 4096), ErrInvalidArgument, "double free")
	c, err := e.AllocateManaged(4096)
	require.NoError(t, err)
	require.Equal(t, a, c, "freed block is reused")
	big, err := e.AllocateManaged(300 << 20)
	require.NoError(t, err)
	require.Len(t, descOf(t, e).Buffers, 2)
	require.NoError(t, e.FreeManaged(big, 300<<20))
	require.Len(t, descOf(t, e).Buffers, 1)
	_, err = e.AllocateManaged(0)
	require.ErrorIs(t, err, ErrInvalidArgument)
}

func TestCloseIsIdempotentAndFailsCalls(t *testing.T) {
	testutil.ResourceCheck(t)
	e, err := testEngine{}.start(t)
	require.NoError(t, err)
	require.NoError(t, e.Close())
	require.NoError(t, e.Close())
	_, err = e.AllocateBatch(1)
	require.ErrorIs(t, err, ErrClosed)
	_, err = e.OpenSegment(context.Background(), "127.0.0.1:15000")
	require.ErrorIs(t, err, ErrClosed)
}

func TestInitErrors(t *testing.T) {
	testutil.ResourceCheck(t)
	for _, tc := range []struct{ name, local, meta string }{
		{"redis", "127.0.0.1", "redis://127.0.0.1:6379"},
		{"unknown scheme", "127.0.0.1", "foo://x"},
		{"no host", ":15000", "P2PHANDSHAKE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testEngine{local: tc.local, meta: tc.meta}.start(t)
			require.Error(t, err)
		})
	}
}

// The two-process tests run this test binary again as a target process.
// It prints its name and buffer address, then waits for "quit" on stdin.
func TestMain(m *testing.M) {
	if os.Getenv("PYMOONCAKE_TEST_TARGET") == "1" {
		os.Exit(runTarget())
	}
	os.Exit(m.Run())
}

func runTarget() int {
	cfg, err := testEngine{}.config()
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	e, err := New(context.Background(), cfg)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer e.Close()
	b, err := syscall.Mmap(-1, 0, 64<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		return 1
	}
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := e.RegisterMemory(addr(b), uint64(len(b)), "*"); err != nil {
		return 1
	}
	fmt.Printf("%s %d\n", e.Name(), addr(b))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "sum":
			var s uint64
			for _, c := range b {
				s = s*31 + uint64(c)
			}
			fmt.Println(s)
		case "quit":
			return 0
		}
	}
	return 0
}

func startTarget(tb testing.TB) (cmd *exec.Cmd, name string, base uint64, stdin *os.File, out *bufio.Scanner) {
	tb.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PYMOONCAKE_TEST_TARGET=1")
	pr, pw, err := os.Pipe()
	require.NoError(tb, err)
	cmd.Stdin = pr
	stdout, err := cmd.StdoutPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	pr.Close()
	tb.Cleanup(func() {
		pw.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	out = bufio.NewScanner(stdout)
	require.True(tb, out.Scan(), "target printed nothing")
	_, err = fmt.Sscanf(out.Text(), "%s %d", &name, &base)
	require.NoError(tb, err, out.Text())
	return cmd, name, base, pw, out
}

func checksum(b []byte) uint64 {
	var s uint64
	for _, c := range b {
		s = s*31 + uint64(c)
	}
	return s
}

func TestTwoProcesses(t *testing.T) {
	testutil.ResourceCheck(t)
	_, name, base, stdin, out := startTarget(t)
	e := newEngine(t, nil)
	local := testutil.Mmap(t, 64<<20)
	require.NoError(t, e.RegisterMemory(addr(local), uint64(len(local)), "*"))
	seg, err := e.OpenSegment(ctxT(t), name)
	require.NoError(t, err)
	require.NoError(t, e.Transfer(ctxT(t), []Request{{Opcode: transport.Read, Local: addr(local), Segment: seg, Remote: base, Length: 64 << 20}}, nil))
	for i := 0; i < 1000; i++ {
		require.Equal(t, byte(i*7), local[i])
	}
	fill(local, 77)
	require.NoError(t, e.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(local), Segment: seg, Remote: base, Length: 64 << 20}}, nil))
	fmt.Fprintln(stdin, "sum")
	require.True(t, out.Scan())
	require.Equal(t, fmt.Sprint(checksum(local)), out.Text())
}

func TestPeerDiesMidTransfer(t *testing.T) {
	testutil.ResourceCheck(t)
	cmd, name, base, _, _ := startTarget(t)
	e := newEngine(t, map[string]string{"MC_TCP_STATUS_TIMEOUT_SEC": "3"})
	local := testutil.Mmap(t, 64<<20)
	require.NoError(t, e.RegisterMemory(addr(local), uint64(len(local)), "*"))
	seg, err := e.OpenSegment(ctxT(t), name)
	require.NoError(t, err)
	reqs := make([]Request, 64)
	for i := range reqs {
		reqs[i] = Request{Opcode: transport.Write, Local: addr(local), Segment: seg, Remote: base, Length: 64 << 20}
	}
	id, err := e.AllocateBatch(len(reqs))
	require.NoError(t, err)
	require.NoError(t, e.Submit(id, reqs))
	require.NoError(t, cmd.Process.Kill())
	start := time.Now()
	st, err := e.Wait(ctxT(t), id)
	require.Less(t, time.Since(start), 10*time.Second)
	require.Equal(t, transport.Failed, st)
	require.Error(t, err)
	require.NoError(t, e.FreeBatch(id))
}

// testLogger attaches logs to a failing test; benchmarks get none.
func testLogger(tb testing.TB) *zap.Logger {
	if _, ok := tb.(*testing.B); ok {
		return zap.NewNop()
	}
	return zaptest.NewLogger(tb)
}

func TestTransferTimeout(t *testing.T) {
	e := &Engine{cfg: Config{Env: config.Env{TransferTimeout: 30 * time.Second}}}
	require.Equal(t, 30*time.Second, e.TransferTimeout(0))
	require.Equal(t, 30*time.Second+time.Duration(1<<30), e.TransferTimeout(1<<30), "1 ns per byte")
	require.Equal(t, time.Duration(math.MaxInt64), e.TransferTimeout(math.MaxUint64), "saturates")
}

// Batches of any size: SGLang sends all layers' pages, 64,000 and more
// entries, in one call (Mooncake's own TCP transport refuses above about
// 2,048 queued entries and then stays broken).
func TestHugeScatteredBatch(t *testing.T) {
	testutil.ResourceCheck(t)
	const n, block = 70_000, 256
	p := newPair(t, 2*n*block, nil, nil)
	perm := rand.New(rand.NewPCG(3, 4)).Perm(2 * n)
	reqs := make([]Request, n)
	for i := range reqs {
		reqs[i] = Request{Opcode: transport.Write, Segment: p.seg, Length: block,
			Local: addr(p.local) + uintptr(i*block), Remote: uint64(addr(p.remote)) + uint64(perm[i]*block)}
	}
	fill(p.local, 21)
	require.NoError(t, p.ini.Transfer(ctxT(t), reqs, nil))
	for i, r := range reqs {
		off := r.Remote - uint64(addr(p.remote))
		requireSame(t, p.local[i*block:(i+1)*block], p.remote[off:off+block], "block", i)
	}
	for i := range reqs {
		reqs[i].Opcode = transport.Read
		reqs[i].Local += uintptr(n * block) // read back into the second half, in order
	}
	require.NoError(t, p.ini.Transfer(ctxT(t), reqs, nil))
	requireSame(t, p.local[:n*block], p.local[n*block:])
}
