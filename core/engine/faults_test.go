package engine

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/etcdtest"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// Fault tolerance: hostile peers (descriptors, RPC and data streams),
// killed, stopped and restarted targets.

// rawServer accepts connections on loopback and gives each to handle (in
// its own goroutine, the connection closed after it). done is closed when
// the test ends, before the server waits for its handlers.
func rawServer(t *testing.T, handle func(c net.Conn, done <-chan struct{})) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, done)
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// fakeRPC is a P2P peer's handshake listener that answers Metadata
// requests with desc; it returns the peer's segment name.
func fakeRPC(t *testing.T, desc []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := handshake.NewServer(ln, handshake.ServerConfig{}, map[handshake.MsgType]handshake.Handler{
		handshake.Metadata: func(context.Context, handshake.MsgType, []byte) []byte { return desc },
	})
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// descJSON is a tcp descriptor with the given data port and buffer list
// (raw JSON values, so tests can put absurd ones in).
func descJSON(name, port, buffers string) []byte {
	return []byte(fmt.Sprintf(`{"name":%q,"protocol":"tcp","tcp_data_host":"127.0.0.1","tcp_data_port":%s,"tcp_proto_version":2,"buffers":%s}`+"\n", name, port, buffers))
}

func bufJSON(addr, length uint64) string {
	return fmt.Sprintf(`{"name":"b","addr":%d,"length":%d}`, addr, length)
}

// manyBuffers is a buffer list of n valid, disjoint buffers.
func manyBuffers(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = bufJSON(uint64(1<<32+i*8192), 4096)
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// rawReply answers every handshake connection with the bytes of reply.
func rawReply(reply []byte) func(c net.Conn, done <-chan struct{}) {
	return func(c net.Conn, _ <-chan struct{}) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := handshake.ReadFrame(c, handshake.DefaultMaxFrame); err != nil {
			return
		}
		_, _ = c.Write(reply)
	}
}

func frameBytes(length uint64, typ byte, payload string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, length)
	return append(append(b, typ), payload...)
}

// A peer whose RPC listener serves a descriptor with absurd values, or
// bytes that are no descriptor at all, is refused cleanly and quickly: no
// panic, no segment kept, and the engine keeps serving good peers.
func TestHostileDescriptors(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	good := bufJSON(1<<32, 1<<20)
	deep := `{"name":"x","protocol":"tcp","tcp_data_port":1,"buffers":[],"junk":` + strings.Repeat("[", 200_000) + strings.Repeat("]", 200_000) + "}"
	for _, tc := range []struct {
		name  string
		peer  func(t *testing.T) string
		fails bool
	}{
		{"data port 0", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "0", "["+good+"]")) }, true},
		{"data port above 65535", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "70000", "["+good+"]")) }, true},
		{"negative data port", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "-1", "["+good+"]")) }, true},
		{"data port as a string", func(t *testing.T) string { return fakeRPC(t, descJSON("x", `"15000"`, "["+good+"]")) }, true},
		{"fractional data port", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "1.5", "["+good+"]")) }, true},
		{"buffer wraps around", func(t *testing.T) string {
			return fakeRPC(t, descJSON("x", "15000", "["+bufJSON(math.MaxUint64-10, 100)+"]"))
		}, true},
		{"buffer length above 2^64", func(t *testing.T) string {
			return fakeRPC(t, descJSON("x", "15000", `[{"name":"b","addr":4096,"length":18446744073709551616}]`))
		}, true},
		{"buffer of length 0", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "15000", "["+bufJSON(4096, 0)+"]")) }, true},
		{"buffer at address 0", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "15000", "["+bufJSON(0, 4096)+"]")) }, true},
		{"buffers not a list", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "15000", `{"a":1}`)) }, true},
		{"huge buffer list over the frame limit", func(t *testing.T) string { return fakeRPC(t, descJSON("x", "15000", manyBuffers(40_000))) }, true},
		{"absurd proto version", func(t *testing.T) string {
			return fakeRPC(t, []byte(`{"name":"x","protocol":"tcp","tcp_data_port":15000,"tcp_proto_version":1099511627776,"buffers":[]}`))
		}, true},
		{"unknown protocol", func(t *testing.T) string {
			return fakeRPC(t, []byte(`{"name":"x","protocol":"warp","tcp_data_port":15000,"buffers":[]}`))
		}, true},
		{"rdma without devices", func(t *testing.T) string {
			return fakeRPC(t, []byte(`{"name":"x","protocol":"rdma","buffers":[{"name":"b","addr":4096,"length":4096,"rkey":[1],"lkey":[1]}]}`))
		}, true},
		{"deeply nested unknown key", func(t *testing.T) string { return fakeRPC(t, []byte(deep)) }, true},
		{"null", func(t *testing.T) string { return fakeRPC(t, []byte("null\n")) }, true},
		{"array", func(t *testing.T) string { return fakeRPC(t, []byte("[1,2,3]")) }, true},
		{"trailing garbage", func(t *testing.T) string { return fakeRPC(t, append(descJSON("x", "15000", "["+good+"]"), "}}"...)) }, true},
		{"garbage reply", func(t *testing.T) string {
			return "127.0.0.1:" + strconv.Itoa(rawServer(t, rawReply([]byte("HTTP/1.1 200 OK\r\n\r\n<html>"))))
		}, true},
		{"truncated reply frame", func(t *testing.T) string {
			return "127.0.0.1:" + strconv.Itoa(rawServer(t, rawReply(frameBytes(1000, 1, `{"name":"x"`))))
		}, true},
		{"oversized reply frame", func(t *testing.T) string {
			return "127.0.0.1:" + strconv.Itoa(rawServer(t, rawReply(frameBytes(1<<40, 1, `{}`))))
		}, true},
		{"reply of another type", func(t *testing.T) string {
			d := descJSON("x", "15000", "["+good+"]")
			return "127.0.0.1:" + strconv.Itoa(rawServer(t, rawReply(frameBytes(uint64(len(d)+1), 2, string(d)))))
		}, true},
		{"reset", func(t *testing.T) string {
			return "127.0.0.1:" + strconv.Itoa(rawServer(t, func(c net.Conn, _ <-chan struct{}) {
				_ = c.(*net.TCPConn).SetLinger(0)
			}))
		}, true},
		{"silent", func(t *testing.T) string {
			return "127.0.0.1:" + strconv.Itoa(rawServer(t, func(_ net.Conn, done <-chan struct{}) { <-done }))
		}, true},
		{"huge buffer list within the frame limit is usable", func(t *testing.T) string {
			return fakeRPC(t, descJSON("x", "15000", manyBuffers(10_000)))
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.peer(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			h, err := p.ini.OpenSegment(ctx, name)
			require.Less(t, time.Since(start), 2*time.Second)
			if !tc.fails {
				require.NoError(t, err)
				d, err := p.ini.SegmentDesc(h)
				require.NoError(t, err)
				require.Len(t, d.Buffers, 10_000)
				// A range outside every buffer is refused before any I/O.
				err = p.ini.Transfer(ctx, []Request{{Opcode: transport.Read, Local: addr(p.local), Segment: h, Remote: 1 << 31, Length: 64}}, nil)
				require.ErrorIs(t, err, ErrAddressNotRegistered)
				require.NoError(t, p.ini.CloseSegment(h))
				return
			}
			require.Error(t, err)
			require.Zero(t, h)
			_, open := p.ini.segs.Lookup(name)
			require.False(t, open, "a refused descriptor leaves no segment")
			// The engine still serves a good peer.
			require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 4096}}, nil))
		})
	}
}

// guarded is registered memory with unregistered guard pages on both sides,
// to show that no peer makes the engine write outside what it asked for.
type guarded struct {
	all, mid []byte
}

func newGuarded(t *testing.T, e *Engine, n int) *guarded {
	const page = 4096
	all := testutil.Mmap(t, n+2*page)
	for i := range all {
		all[i] = 0x5a
	}
	g := &guarded{all: all, mid: all[page : page+n]}
	require.NoError(t, e.RegisterMemory(addr(g.mid), uint64(n), "*"))
	return g
}

func (g *guarded) requireIntact(t *testing.T) {
	t.Helper()
	page := (len(g.all) - len(g.mid)) / 2
	for _, b := range [][]byte{g.all[:page], g.all[len(g.all)-page:]} {
		for i, c := range b {
			if c != 0x5a {
				t.Fatalf("guard byte %d changed to %#x", i, c)
			}
		}
	}
}

// hostileData is a fake data server: it reads each request header and
// lets act answer it.
func hostileData(t *testing.T, act func(c net.Conn, h tcp.Header, done <-chan struct{})) int {
	return rawServer(t, func(c net.Conn, done <-chan struct{}) {
		for {
			var hb [tcp.HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			h := tcp.DecodeHeader(&hb)
			if h.Opcode&^tcp.FlagV2 == uint8(transport.Write) {
				if _, err := io.CopyN(io.Discard, c, int64(h.Size)); err != nil {
					return
				}
			}
			act(c, h, done)
		}
	})
}

func status(s tcp.StatusFrame) []byte {
	b := tcp.EncodeStatus(s)
	return b[:]
}

// A target whose data connection misbehaves (garbage, truncated or extra
// bytes, a stall mid-body, resets) fails the call within its deadline
// (MC_TCP_STATUS_TIMEOUT_SEC is 30 s; the call's 1 s cuts it), never writes
// outside the local range, and leaves the engine serving good peers.
func TestHostileDataServer(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	const n = 64 << 10
	local := newGuarded(t, p.ini, n)
	const remote = 1 << 32
	for _, tc := range []struct {
		name string
		op   transport.Opcode
		act  func(c net.Conn, h tcp.Header, done <-chan struct{})
		want error // nil: the call succeeds
	}{
		{"garbage status", transport.Read, func(c net.Conn, _ tcp.Header, _ <-chan struct{}) {
			_, _ = c.Write([]byte("GARBAGE!"))
		}, tcp.ErrLegacyPeer},
		{"unknown status code", transport.Write, func(c net.Conn, _ tcp.Header, _ <-chan struct{}) {
			_, _ = c.Write(status(tcp.StatusOK | 7))
		}, tcp.ErrUnknownStatus},
		{"truncated body then close", transport.Read, func(c net.Conn, h tcp.Header, _ <-chan struct{}) {
			_, _ = c.Write(append(status(tcp.StatusOK), make([]byte, h.Size/2)...))
			_ = c.Close()
		}, tcp.ErrPeer},
		{"stall mid-body", transport.Read, func(c net.Conn, h tcp.Header, done <-chan struct{}) {
			_, _ = c.Write(append(status(tcp.StatusOK), make([]byte, h.Size/2)...))
			<-done
		}, context.DeadlineExceeded},
		{"stall before the write ack", transport.Write, func(_ net.Conn, _ tcp.Header, done <-chan struct{}) {
			<-done
		}, context.DeadlineExceeded},
		{"rejects everything", transport.Write, func(c net.Conn, _ tcp.Header, _ <-chan struct{}) {
			_, _ = c.Write(status(tcp.StatusRejected))
			_ = c.Close()
		}, tcp.ErrRejected},
		{"resets", transport.Read, func(c net.Conn, _ tcp.Header, _ <-chan struct{}) {
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
		}, tcp.ErrPeer},
		{"sends more than asked", transport.Read, func(c net.Conn, h tcp.Header, _ <-chan struct{}) {
			body := make([]byte, h.Size+3*4096)
			for i := range body {
				body[i] = 0xee
			}
			_, _ = c.Write(append(status(tcp.StatusOK), body...))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := hostileData(t, tc.act)
			name := fakeRPC(t, descJSON("hostile", strconv.Itoa(port), "["+bufJSON(remote, 1<<20)+"]"))
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err := p.ini.TransferTo(ctx, name, []Request{{Opcode: tc.op, Local: addr(local.mid), Remote: remote, Length: n}}, nil)
			require.Less(t, time.Since(start), 2*time.Second)
			if tc.want == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.want)
			}
			local.requireIntact(t)
			require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 4096}}, nil))
			if h, err := p.ini.OpenSegment(ctx, name); err == nil {
				require.NoError(t, p.ini.CloseSegment(h))
			}
		})
	}
}

// Raw-socket attackers hammer a target's RPC and data ports while a good
// peer moves and verifies data: every good call succeeds.
func TestAttackersDoNotDisturbGoodPeers(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	rpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.tgt.RPCPort()))
	dataAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(descOf(t, p.tgt).TCPDataPort))
	var hb [tcp.HeaderSize]byte
	// A valid write, into the half of the target's buffer the good peer
	// leaves alone: such an attacker is a legitimate peer that stalls.
	tcp.Header{Size: 256 << 10, Addr: uint64(addr(p.remote)) + 512<<10, Opcode: 1 | tcp.FlagV2}.Encode(&hb)
	valid := hb
	tcp.Header{Size: 1 << 40, Addr: 8, Opcode: 1 | tcp.FlagV2}.Encode(&hb)
	unregistered := hb
	tcp.Header{Size: 1 << 20, Addr: math.MaxUint64 - 100, Opcode: 0}.Encode(&hb)
	wrapping := hb
	attacks := []struct {
		addr  string
		bytes []byte
		stall bool
	}{
		{rpcAddr, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false},
		{rpcAddr, frameBytes(1<<40, 1, "{}"), false},
		{rpcAddr, frameBytes(100, 1, `{"trunc`), false},
		{rpcAddr, frameBytes(12, 2, `{"name":1}`), false},
		{rpcAddr, frameBytes(5, 9, "[[[["), false},
		{rpcAddr, nil, true}, // slowloris
		{dataAddr, unregistered[:], false},
		{dataAddr, wrapping[:], false},
		{dataAddr, append(valid[:], make([]byte, 1000)...), true}, // stalls mid-body
		{dataAddr, valid[:10], false},
		{dataAddr, []byte(strings.Repeat("\xff", 4096)), false},
	}
	var attacksRun sync.Map
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a := attacks[i%len(attacks)]
				c, err := net.DialTimeout("tcp", a.addr, time.Second)
				if err != nil {
					continue
				}
				_, _ = c.Write(a.bytes)
				if a.stall {
					select {
					case <-stop:
					case <-time.After(300 * time.Millisecond):
					}
				}
				_ = c.Close()
				attacksRun.Store(i%len(attacks), true)
			}
		}()
	}
	deadline := time.Now().Add(1500 * time.Millisecond)
	calls := 0
	for i := 0; time.Now().Before(deadline); i++ {
		fill(p.local[:64<<10], uint64(i))
		op := []transport.Opcode{transport.Write, transport.Read}[i%2]
		if op == transport.Read {
			copy(p.remote[:64<<10], p.local[:64<<10])
			clear(p.local[:64<<10])
		}
		require.NoError(t, p.ini.TransferTo(ctxT(t), p.tgt.Name(), []Request{{Opcode: op, Local: addr(p.local), Remote: uint64(addr(p.remote)), Length: 64 << 10}}, nil))
		requireSame(t, p.local[:64<<10], p.remote[:64<<10])
		require.NoError(t, p.ini.Probe(ctxT(t), p.tgt.Name()), "the RPC listener answers good peers")
		calls++
	}
	close(stop)
	wg.Wait()
	ran := 0
	attacksRun.Range(func(any, any) bool { ran++; return true })
	require.Equal(t, len(attacks), ran, "every attack ran")
	require.Greater(t, calls, 10)
}

// A target killed with SIGKILL in the middle of a large batch: sync and
// async calls fail within the deadline, and nothing leaks on the initiator
// (goroutines, descriptors: ResourceCheck).
func TestSigkillMidBatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(e *Engine, target string, reqs []Request) error
	}{
		{"sync", func(e *Engine, target string, reqs []Request) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return e.TransferTo(ctx, target, reqs, nil)
		}},
		{"async", func(e *Engine, target string, reqs []Request) error {
			h, err := e.OpenSegment(context.Background(), target)
			if err != nil {
				return err
			}
			id, err := e.AllocateBatch(len(reqs))
			if err != nil {
				return err
			}
			if err := e.Submit(id, withSegment(reqs, h)); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st, err := e.Wait(ctx, id)
			if st != transport.Failed {
				return fmt.Errorf("batch ended %v (%v), want failed", st, err)
			}
			require.NoError(t, e.FreeBatch(id))
			require.True(t, e.Recover(ctx, h, err), "a dead peer's segment is dropped")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			cmd, name, base, _, _ := startTarget(t)
			e := newEngine(t, nil)
			local := testutil.Mmap(t, 64<<20)
			require.NoError(t, e.RegisterMemory(addr(local), uint64(len(local)), "*"))
			reqs := make([]Request, 32)
			for i := range reqs {
				reqs[i] = Request{Opcode: transport.Write, Local: addr(local), Remote: base, Length: 64 << 20}
			}
			done := make(chan error, 1)
			go func() { done <- tc.run(e, name, reqs) }()
			time.Sleep(100 * time.Millisecond)
			require.NoError(t, cmd.Process.Kill())
			killed := time.Now()
			select {
			case err := <-done:
				require.ErrorIs(t, err, tcp.ErrPeer)
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not return after the target was killed")
			}
			require.Less(t, time.Since(killed), 5*time.Second)
			_, open := e.segs.Lookup(name)
			require.False(t, open, "the dead segment is not kept")
		})
	}
}

// A stopped target (SIGSTOP: a partition) times a sync call out at its own
// deadline, far below MC_TCP_STATUS_TIMEOUT_SEC, even mid-body; after
// SIGCONT the pending async batch completes and calls succeed again.
func TestSigstopTarget(t *testing.T) {
	testutil.ResourceCheck(t)
	cmd, name, base, stdin, out := startTarget(t)
	e := newEngine(t, nil) // MC_TCP_STATUS_TIMEOUT_SEC at its default, 30 s
	local := testutil.Mmap(t, 64<<20)
	require.NoError(t, e.RegisterMemory(addr(local), uint64(len(local)), "*"))
	fill(local, 5)
	big := []Request{{Opcode: transport.Write, Local: addr(local), Remote: base, Length: 64 << 20}}
	require.NoError(t, e.TransferTo(ctxT(t), name, big, nil))

	require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
	cont := sync.OnceFunc(func() { _ = cmd.Process.Signal(syscall.SIGCONT) })
	defer cont()
	h, err := e.OpenSegment(ctxT(t), name)
	require.NoError(t, err)
	id, err := e.AllocateBatch(1)
	require.NoError(t, err)
	require.NoError(t, e.Submit(id, withSegment(big, h)))

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err = e.TransferTo(ctx, name, []Request{big[0], big[0], big[0], big[0]}, nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second)
	wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
	defer wcancel()
	st, err := e.Wait(wctx, id)
	require.Equal(t, transport.Timeout, st, "the async batch waits for the peer: %v", err)

	cont()
	st, err = e.Wait(ctxT(t), id)
	require.NoError(t, err)
	require.Equal(t, transport.Completed, st)
	require.NoError(t, e.FreeBatch(id))
	fill(local, 6)
	require.NoError(t, e.TransferTo(ctxT(t), name, big, nil))
	fmt.Fprintln(stdin, "sum")
	require.True(t, out.Scan())
	require.Equal(t, fmt.Sprint(checksum(local)), out.Text())
}

// settled samples goroutines and open descriptors for 200 ms and returns
// the smallest counts seen, so that goroutines on their way out are not
// counted.
func settled() (goroutines, fds int) {
	goroutines, fds = math.MaxInt, math.MaxInt
	for i := 0; i < 10; i++ {
		goroutines, fds = min(goroutines, runtime.NumGoroutine()), min(fds, openFDCount())
		time.Sleep(20 * time.Millisecond)
	}
	return goroutines, fds
}

func openFDCount() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// A target restarted 100 times: under the same name (HTTP, etcd) or at a
// new P2P name, in this process (a closed engine releases what a dead
// process would). After each restart, concurrent sync calls all succeed
// (the first ones meet the dead connections, re-resolve and retry once),
// and the survivor's goroutines, descriptors and heap do not grow.
func TestRestartCycles(t *testing.T) {
	for _, m := range []struct {
		name string
		meta func(t *testing.T) string
	}{
		{"http same name", startHTTPMetadata},
		{"etcd same name", func(t *testing.T) string { return "etcd://" + etcdtest.Start(t, 1).Endpoints()[0] }},
		{"p2p new name", func(*testing.T) string { return "P2PHANDSHAKE" }},
	} {
		t.Run(m.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			meta := m.meta(t)
			start := func(name string) *Engine {
				e, err := testEngine{local: name, meta: meta, envOverride: bindLoopback}.start(t)
				require.NoError(t, err)
				return e
			}
			local := "survivor"
			if meta == "P2PHANDSHAKE" {
				local = "127.0.0.1"
			}
			ini := start(local)
			defer ini.Close()
			const threads, chunk = 4, 64 << 10
			src, dst := testutil.Mmap(t, threads*chunk), testutil.Mmap(t, threads*chunk)
			require.NoError(t, ini.RegisterMemory(addr(src), uint64(len(src)), "*"))
			var baseG, baseFD int
			var baseHeap uint64
			const cycles, warmup = 100, 5
			for c := 0; c < cycles; c++ {
				tgt := start(map[bool]string{true: "127.0.0.1", false: "restarting"}[meta == "P2PHANDSHAKE"])
				require.NoError(t, tgt.RegisterMemory(addr(dst), uint64(len(dst)), "*"))
				clear(dst)
				fill(src, uint64(c))
				errs := make([]error, threads)
				var wg sync.WaitGroup
				for i := range threads {
					wg.Add(1)
					go func() {
						defer wg.Done()
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						errs[i] = ini.TransferTo(ctx, tgt.Name(), []Request{{Opcode: transport.Write, Local: addr(src) + uintptr(i*chunk), Remote: uint64(addr(dst)) + uint64(i*chunk), Length: chunk}}, nil)
					}()
				}
				wg.Wait()
				for i, err := range errs {
					require.NoError(t, err, "cycle %d, call %d", c, i)
				}
				requireSame(t, src, dst, "cycle", c)
				require.NoError(t, tgt.Close())
				if c == warmup-1 {
					baseG, baseFD = settled()
					baseHeap = heapInUse()
				}
			}
			g, fds := settled()
			heap := heapInUse()
			t.Logf("after %d cycles: goroutines %d (at cycle %d: %d), fds %d (%d), heap %d KiB (%d KiB)",
				cycles, g, warmup, baseG, fds, baseFD, heap>>10, baseHeap>>10)
			require.LessOrEqual(t, g, baseG, "goroutines grew")
			require.LessOrEqual(t, fds, baseFD, "descriptors grew")
			require.Less(t, heap, baseHeap+4<<20, "heap grew")
		})
	}
}

// twoFreePorts returns p such that p and p+1 are free on every address.
func twoFreePorts(t *testing.T) int {
	t.Helper()
	for p := 20000 + int(time.Now().UnixNano()%5000)*2; p < 32000; p += 2 {
		a, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		b, err := net.Listen("tcp", ":"+strconv.Itoa(p+1))
		a.Close()
		if err == nil {
			b.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free ports")
	return 0
}

// A target that restarts under the same name at the same data address is
// recognised by the instance id in its descriptor: a range the new
// incarnation rejects makes the initiator fetch the fresh descriptor (and
// a sync call retry against it), so no stale descriptor outlives a restart.
func TestRestartAtTheSameAddress(t *testing.T) {
	testutil.ResourceCheck(t)
	meta := startHTTPMetadata(t)
	ini := newStoreEngine(t, "ini", meta)
	p := twoFreePorts(t)
	start := func() *Engine {
		e, err := testEngine{local: "fixed", meta: meta, envOverride: func(env *config.Env) {
			env.TCPBindAddress = "127.0.0.1"
			env.MinPort, env.MaxPort = p, p+1
		}}.start(t)
		require.NoError(t, err)
		return e
	}
	// restart closes tgt and starts it again until the new incarnation
	// listens for data where the old one did.
	restart := func(tgt *Engine) *Engine {
		port := descOf(t, tgt).TCPDataPort
		require.NoError(t, tgt.Close())
		for i := 0; i < 50; i++ {
			e := start()
			if descOf(t, e).TCPDataPort == port {
				return e
			}
			require.NoError(t, e.Close())
		}
		t.Fatal("the data port never came back")
		return nil
	}
	local := testutil.Mmap(t, 1<<16)
	require.NoError(t, ini.RegisterMemory(addr(local), 1<<16, "*"))
	remoteA, remoteB := testutil.Mmap(t, 1<<16), testutil.Mmap(t, 1<<16)
	write := func(ctx context.Context, remote []byte) error {
		return ini.TransferTo(ctx, "fixed", []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 1 << 16}}, nil)
	}

	tgt := start()
	defer func() { tgt.Close() }()
	require.NoError(t, tgt.RegisterMemory(addr(remoteA), 1<<16, "*"))
	fill(local, 1)
	require.NoError(t, write(ctxT(t), remoteA))

	// Same memory registered again: no call fails.
	tgt = restart(tgt)
	require.NoError(t, tgt.RegisterMemory(addr(remoteA), 1<<16, "*"))
	fill(local, 2)
	require.NoError(t, write(ctxT(t), remoteA))
	requireSame(t, local, remoteA)

	// Other memory: the stale range fails as unregistered, and the handle
	// now carries the new incarnation's descriptor.
	tgt = restart(tgt)
	require.NoError(t, tgt.RegisterMemory(addr(remoteB), 1<<16, "*"))
	err := write(ctxT(t), remoteA)
	require.ErrorIs(t, err, ErrAddressNotRegistered)
	h, err := ini.OpenSegment(ctxT(t), "fixed")
	require.NoError(t, err)
	d, err := ini.SegmentDesc(h)
	require.NoError(t, err)
	require.Equal(t, tgt.instance, d.Instance())
	require.Equal(t, uint64(addr(remoteB)), d.Buffers[0].Addr)
	fill(local, 3)
	require.NoError(t, write(ctxT(t), remoteB))
	requireSame(t, local, remoteB)

	// The async path: a FAILED task (rejected) makes Recover fetch the
	// fresh descriptor.
	tgt = restart(tgt)
	require.NoError(t, tgt.RegisterMemory(addr(remoteA), 1<<16, "*"))
	id, err := ini.AllocateBatch(1)
	require.NoError(t, err)
	require.NoError(t, ini.Submit(id, []Request{{Opcode: transport.Write, Local: addr(local), Segment: h, Remote: uint64(addr(remoteB)), Length: 1 << 16}}))
	st, err := ini.Wait(ctxT(t), id)
	require.Equal(t, transport.Failed, st)
	require.ErrorIs(t, err, tcp.ErrRejected)
	require.NoError(t, ini.FreeBatch(id))
	require.True(t, ini.Recover(ctxT(t), h, err))
	d, err = ini.SegmentDesc(h)
	require.NoError(t, err)
	require.Equal(t, tgt.instance, d.Instance(), "the same handle, re-resolved")
	require.False(t, ini.Recover(ctxT(t), h, err), "a rejection by the same incarnation changes nothing")
}

// After a target restarted under its name, the first call is an async
// batch, to an address the stale descriptor also allows: it reaches the
// new incarnation, whether the initiator only saw its pooled connection
// close (the cached descriptor is fetched again) or failed calls while the
// target was down, its keys left behind as by a SIGKILL (nothing stale is
// cached).
func TestFirstAsyncCallAfterRestart(t *testing.T) {
	for _, callWhileDown := range []bool{false, true} {
		t.Run(fmt.Sprintf("call while down %v", callWhileDown), func(t *testing.T) {
			testutil.ResourceCheck(t)
			meta := startHTTPMetadata(t)
			ini := newStoreEngine(t, "ini", meta)
			local, remote := testutil.Mmap(t, 1<<16), testutil.Mmap(t, 1<<16)
			require.NoError(t, ini.RegisterMemory(addr(local), 1<<16, "*"))
			write := []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 1 << 16}}
			tgt := newStoreEngine(t, "tgt", meta)
			require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<16, "*"))
			require.NoError(t, ini.TransferTo(ctxT(t), "tgt", write, nil))
			_, desc := httpGet(t, meta, "mooncake/ram/tgt")
			_, rpcMeta := httpGet(t, meta, "mooncake/rpc_meta/tgt")
			require.NoError(t, tgt.Close())
			if callWhileDown {
				require.Equal(t, http.StatusOK, httpPut(t, meta, "mooncake/ram/tgt", desc))
				require.Equal(t, http.StatusOK, httpPut(t, meta, "mooncake/rpc_meta/tgt", rpcMeta))
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				require.ErrorIs(t, ini.TransferTo(ctx, "tgt", write, nil), tcp.ErrPeer)
				cancel()
				code, _ := httpGet(t, meta, "mooncake/ram/tgt")
				require.Equal(t, http.StatusOK, code, "recovery forgets the descriptor locally, never in the store")
			} else {
				s, ok := ini.segs.Lookup("tgt")
				require.True(t, ok)
				deadline := time.Now().Add(5 * time.Second)
				for !ini.peerClosedSince(s) {
					require.True(t, time.Now().Before(deadline), "the initiator never saw its idle connection close")
					time.Sleep(time.Millisecond)
				}
			}
			tgt = newStoreEngine(t, "tgt", meta)
			require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<16, "*"))
			fill(local, 9)
			h, err := ini.OpenSegment(ctxT(t), "tgt")
			require.NoError(t, err)
			id, err := ini.AllocateBatch(1)
			require.NoError(t, err)
			require.NoError(t, ini.Submit(id, withSegment(write, h)))
			st, err := ini.Wait(ctxT(t), id)
			require.NoError(t, err)
			require.Equal(t, transport.Completed, st)
			require.NoError(t, ini.FreeBatch(id))
			requireSame(t, local, remote)
		})
	}
}
