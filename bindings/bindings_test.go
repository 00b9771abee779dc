package bindings

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// leakCheck fails the test if goroutines started during it outlive its
// cleanups (core/internal/testutil is internal to core, so bindings keeps
// this smaller check). Call it first.
func leakCheck(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			runtime.Gosched()
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

var textPattern = regexp.MustCompile(`^mc:(-?[0-9]+):([a-z_]+): (.*)$`)

// parse is what pymooncake/_errors.py does with the text.
func parse(t *testing.T, err error) (int, string, string) {
	t.Helper()
	require.Error(t, err)
	m := textPattern.FindStringSubmatch(err.Error())
	require.NotNil(t, m, "error text %q is not in the mc:<code>:<kind>: format", err.Error())
	code, perr := strconv.Atoi(m[1])
	require.NoError(t, perr)
	return code, m[2], m[3]
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code int
		kind string
	}{
		{"invalid", fmt.Errorf("x: %w", engine.ErrInvalidArgument), -1, kindInvalid},
		{"too many", engine.ErrTooManyRequests, -2, kindTooMany},
		{"not registered", fmt.Errorf("a: b: %w", engine.ErrAddressNotRegistered), -3, kindNotRegistered},
		{"rejected by peer", transport.ErrRejected, -3, kindNotRegistered},
		{"busy", engine.ErrBatchBusy, -4, kindBusy},
		{"overlapped", engine.ErrAddressOverlapped, -7, kindOverlapped},
		{"unknown batch", engine.ErrUnknownBatch, -1, kindUnknownBatch},
		{"unknown segment", engine.ErrUnknownSegment, -1, kindUnknownSegment},
		{"metadata", engine.ErrMetadata, -200, kindMetadata},
		{"malformed descriptor", metadata.ErrMalformed, -200, kindMetadata},
		{"not supported", engine.ErrNotSupported, -303, kindNotSupported},
		{"unsupported backend", metadata.ErrUnsupportedBackend, -303, kindNotSupported},
		{"closed", engine.ErrClosed, -1, kindClosed},
		{"deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), -1, kindTimeout},
		{"peer", transport.ErrPeer, -102, kindSocket},
		{"net error", &net.OpError{Op: "dial", Err: errors.New("refused")}, -102, kindSocket},
		{"net timeout", &net.OpError{Op: "read", Err: timeoutErr{}}, -102, kindTimeout},
		{"invalid beats malformed", fmt.Errorf("%w: %w", engine.ErrInvalidArgument, metadata.ErrMalformed), -1, kindInvalid},
		{"panic", fmt.Errorf("%w: boom", errInternal), -1, kindInternal},
		{"other", errors.New("something"), -1, kindFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, kind := classify(tc.err)
			require.Equal(t, tc.code, code)
			require.Equal(t, tc.kind, kind)
			gc, gk, reason := parse(t, fail("op", tc.err))
			require.Equal(t, tc.code, gc)
			require.Equal(t, tc.kind, gk)
			require.Equal(t, "op: "+tc.err.Error(), reason)
		})
	}
}

func TestFailKeepsOneLine(t *testing.T) {
	_, _, reason := parse(t, fail("op", errors.Join(errors.New("a"), errors.New("b"))))
	require.Equal(t, "op: a; b", reason)
}

func TestRecoverInto(t *testing.T) {
	f := func() (rc int, err error) {
		defer recoverInto("boom_op", nil, &err)
		var m map[string]int
		m["x"] = 1 // panics: assignment to nil map
		return 1, nil
	}
	_, err := f()
	code, kind, reason := parse(t, err)
	require.Equal(t, -1, code)
	require.Equal(t, kindInternal, kind)
	require.Contains(t, reason, "boom_op")
	require.Contains(t, reason, "panic")
}

func TestReadList(t *testing.T) {
	vals := onHeap([]uint64{1, 2, math.MaxUint64})
	addr := uintptr(unsafe.Pointer(&vals[0]))
	got, err := readList("op", "xs", addr, len(vals))
	require.NoError(t, err)
	require.Equal(t, vals, got)
	vals[0] = 99
	require.Equal(t, uint64(1), got[0], "readList copies")
	runtime.KeepAlive(vals)

	got, err = readList("op", "xs", 0, 0)
	require.NoError(t, err)
	require.Empty(t, got)

	for _, tc := range []struct {
		name string
		addr uintptr
		n    int
	}{
		{"negative count", addr, -1},
		{"count above bound", addr, maxList + 1},
		{"null address", 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readList("op", "xs", tc.addr, tc.n)
			code, kind, _ := parse(t, err)
			require.Equal(t, -1, code)
			require.Equal(t, kindInvalid, kind)
		})
	}
}

func TestParseOpcodeAndBatchID(t *testing.T) {
	for _, op := range []int{0, 1} {
		o, err := parseOpcode("op", op)
		require.NoError(t, err)
		require.Equal(t, op, int(o))
	}
	for _, bad := range []int{-1, 2, 255, 256} {
		_, err := parseOpcode("op", bad)
		require.Error(t, err)
	}
	for _, bad := range []uint64{0, 1 << 63, math.MaxUint64} {
		_, err := batchID("op", bad)
		_, kind, _ := parse(t, err)
		require.Equal(t, kindUnknownBatch, kind)
	}
	id, err := batchID("op", 42)
	require.NoError(t, err)
	require.Equal(t, engine.BatchID(42), id)
}

func TestEnvironLookup(t *testing.T) {
	lookup, err := environLookup(`{"MC_TRANSFER_TIMEOUT": "7", "EMPTY": ""}`)
	require.NoError(t, err)
	v, ok := lookup("MC_TRANSFER_TIMEOUT")
	require.True(t, ok)
	require.Equal(t, "7", v)
	_, ok = lookup("EMPTY")
	require.True(t, ok)
	_, ok = lookup("MISSING")
	require.False(t, ok)
	_, err = environLookup(`[1, 2]`)
	require.ErrorIs(t, err, engine.ErrInvalidArgument)
}

// environ returns a JSON environment for NewEngine.
func environ(t *testing.T, kv ...string) string {
	t.Helper()
	m := map[string]string{"MC_LOG_LEVEL": "WARNING"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return string(b)
}

func newEngine(t *testing.T, kv ...string) *Engine {
	t.Helper()
	e, err := NewEngine("127.0.0.1", "P2PHANDSHAKE", "", "tcp", "", environ(t, kv...))
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := e.Close()
		require.NoError(t, err)
	})
	return e
}

func TestNewEngineFailures(t *testing.T) {
	leakCheck(t)
	for _, tc := range []struct {
		name                           string
		local, server, mtype, protocol string
		env                            string
		code                           int
	}{
		{"xgmi", "127.0.0.1", "P2PHANDSHAKE", "", "xgmi", environ(t), -1},
		{"bad env value", "127.0.0.1", "P2PHANDSHAKE", "", "tcp", environ(t, "MC_TRANSFER_TIMEOUT", "soon"), -1},
		{"bad env json", "127.0.0.1", "P2PHANDSHAKE", "", "tcp", "{", -1},
		{"empty server", "127.0.0.1", "", "", "tcp", environ(t), -1},
		{"redis", "127.0.0.1", "redis://h:1", "", "tcp", environ(t), -303},
		{"no host", "", "P2PHANDSHAKE", "", "tcp", environ(t), -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(tc.local, tc.server, tc.mtype, tc.protocol, "", tc.env)
			require.Nil(t, e)
			code, _, _ := parse(t, err)
			require.Equal(t, tc.code, code)
		})
	}
}

// Memory handed to the engine as a uintptr must stay where it is during
// the call. Escape analysis does not follow uintptrs: a small slice the
// compiler proves local could live on the goroutine's stack, which moves
// when it grows (deep in the engine's call), and the engine would then
// read or write where the slice was (TestNotifiesInPieces once saw an
// "unregistered" address so). onHeap makes a value escape: on the heap
// nothing moves.
var sink struct {
	mu sync.Mutex
	v  any
}

func onHeap[T any](v T) T {
	sink.mu.Lock()
	sink.v = v
	sink.mu.Unlock()
	return v
}

// mem is memory for the engine to register: a Go byte slice on the heap,
// kept alive by the test.
type mem struct {
	b []byte
}

func newMem(n int) *mem              { return onHeap(&mem{b: make([]byte, n)}) }
func (m *mem) addr() uintptr         { return uintptr(unsafe.Pointer(&m.b[0])) }
func (m *mem) size() int64           { return int64(len(m.b)) }
func list(vs ...uint64) uintptr      { return uintptr(unsafe.Pointer(&onHeap(vs)[0])) }
func keep(vs ...[]uint64) [][]uint64 { return vs }

func TestEngineRoundTrip(t *testing.T) {
	leakCheck(t)
	a, b := newEngine(t), newEngine(t)
	ma, mb := newMem(1<<16), newMem(1<<16)
	defer runtime.KeepAlive(ma)
	defer runtime.KeepAlive(mb)

	_, err := a.RegisterMemory(ma.addr(), ma.size(), "*")
	require.NoError(t, err)
	_, err = b.RegisterMemory(mb.addr(), mb.size(), "cpu:0")
	require.NoError(t, err)
	seg, err := b.Name()
	require.NoError(t, err)
	port, err := b.RPCPort()
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:"+strconv.Itoa(port), seg)

	copy(ma.b, "hello, bindings")
	_, err = a.TransferSync(seg, 1, ma.addr(), mb.addr()+100, 15)
	require.NoError(t, err)
	require.Equal(t, "hello, bindings", string(mb.b[100:115]))

	// batch with notify
	locals := []uint64{uint64(ma.addr()), uint64(ma.addr()) + 7}
	remotes := []uint64{uint64(mb.addr()) + 1000, uint64(mb.addr()) + 2000}
	lengths := []uint64{5, 8}
	_, err = a.BatchTransferSyncNotify(seg, 1, list(locals...), list(remotes...), list(lengths...), 2, "n\x00ame", "m")
	require.NoError(t, err)
	require.Equal(t, "hello", string(mb.b[1000:1005]))
	require.Equal(t, "bindings", string(mb.b[2000:2008]))
	require.Equal(t, [][2]string{{"n\x00ame", "m"}}, drainNotifies(t, b, 64))
	require.Empty(t, drainNotifies(t, b, 64))

	// async batches
	id, err := a.BatchTransferAsync(seg, 0, list(uint64(ma.addr())+5000), list(uint64(mb.addr())+100), list(15), 1)
	require.NoError(t, err)
	require.Positive(t, id)
	ids := []uint64{uint64(id)}
	_, err = a.WaitBatches(list(ids...), 1)
	require.NoError(t, err)
	require.Equal(t, "hello, bindings", string(ma.b[5000:5015]))
	_, err = a.CheckStatus(id)
	_, kind, _ := parse(t, err)
	require.Equal(t, kindUnknownBatch, kind, "a waited batch is freed")

	id, err = a.TransferAsync(seg, 1, ma.addr(), mb.addr()+3000, 5)
	require.NoError(t, err)
	rc := 0
	for deadline := time.Now().Add(10 * time.Second); rc == 0 && time.Now().Before(deadline); {
		rc, err = a.CheckStatus(id)
		require.NoError(t, err)
	}
	require.Equal(t, 1, rc)
	runtime.KeepAlive(keep(locals, remotes, lengths, ids))

	first, err := a.FirstBufferAddress(seg)
	require.NoError(t, err)
	require.Equal(t, mb.addr(), first)
	_, err = a.SendProbe(seg)
	require.NoError(t, err)
}

func TestEngineFailures(t *testing.T) {
	leakCheck(t)
	a, b := newEngine(t), newEngine(t)
	ma, mb := newMem(4096), newMem(4096)
	defer runtime.KeepAlive(ma)
	defer runtime.KeepAlive(mb)
	seg, err := b.Name()
	require.NoError(t, err)
	_, err = b.RegisterMemory(mb.addr(), mb.size(), "*")
	require.NoError(t, err)

	code := func(_ int, err error) int {
		c, _, _ := parse(t, err)
		return c
	}
	code64 := func(_ int64, err error) int {
		c, _, _ := parse(t, err)
		return c
	}
	require.Equal(t, -3, code(a.TransferSync(seg, 1, ma.addr(), mb.addr(), 16)), "local memory not registered")
	_, err = a.RegisterMemory(ma.addr(), ma.size(), "*")
	require.NoError(t, err)
	require.Equal(t, -7, code(a.RegisterMemory(ma.addr()+8, 8, "*")))
	require.Equal(t, -1, code(a.RegisterMemory(ma.addr(), -1, "*")))
	require.Equal(t, -3, code(a.UnregisterMemory(ma.addr()+1)))
	require.Equal(t, -3, code(a.TransferSync(seg, 1, ma.addr(), 8, 16)), "remote range not registered")
	require.Equal(t, -1, code(a.TransferSync(seg, 7, ma.addr(), mb.addr(), 16)), "bad opcode")
	require.Equal(t, -1, code(a.TransferSync(seg, 1, ma.addr(), mb.addr(), -5)), "negative length")
	require.Equal(t, -102, code(a.TransferSync("127.0.0.1:1", 1, ma.addr(), mb.addr(), 16)), "nobody listens")
	require.Equal(t, -3, code64(a.TransferAsync(seg, 1, ma.addr(), 8, 16)), "python returns 0")
	require.Equal(t, -1, code(a.BatchTransferSync(seg, 1, 0, 0, 0, -1)))
	require.Equal(t, -1, code(a.CheckStatus(0)))
	require.Equal(t, -1, code(a.CheckStatus(-1)))
	require.Equal(t, -1, code(a.CheckStatus(1<<40)))
	bad := []uint64{12345}
	require.Equal(t, -1, code(a.WaitBatches(list(bad...), 1)))
	runtime.KeepAlive(bad)
	require.Equal(t, -3, code(a.CopyIn(mb.addr(), ma.addr(), 16)), "destination not registered here")
	require.Equal(t, -3, code(a.CheckLocal(mb.addr(), 16)))
	addr, err := a.AllocateManaged(8192)
	require.NoError(t, err)
	require.Equal(t, -1, code(a.FreeManaged(addr, 1<<20)))
	_, err = a.FreeManaged(addr, 8192)
	require.NoError(t, err)

	// after Close every call fails with the closed kind, and Close stays idempotent
	_, err = a.Close()
	require.NoError(t, err)
	_, err = a.Close()
	require.NoError(t, err)
	for _, err := range []error{
		second(a.RPCPort()), second(a.TransferSync(seg, 1, ma.addr(), mb.addr(), 1)),
		second(a.CopyOut(ma.addr(), ma.addr(), 1)), second(a.Notifies(ma.addr(), ma.size(), 1)), second(a.AllocateManaged(1)),
	} {
		_, kind, _ := parse(t, err)
		require.Equal(t, kindClosed, kind)
	}
}

func second[T any](_ T, err error) error { return err }

func TestLocalTopology(t *testing.T) {
	topo, err := LocalTopology("", environ(t, "CUDA_VISIBLE_DEVICES", ""))
	require.NoError(t, err)
	var m map[string][2][]string
	require.NoError(t, json.Unmarshal([]byte(topo), &m))
	_, err = LocalTopology("", environ(t, "MC_CUSTOM_TOPO_JSON", t.TempDir()+"/missing.json"))
	require.Error(t, err)
}

func TestMetadataServer(t *testing.T) {
	leakCheck(t)
	s, err := NewMetadataServer("127.0.0.1:0", "", environ(t))
	require.NoError(t, err)
	addr, err := s.Addr()
	require.NoError(t, err)
	require.NotEmpty(t, addr)
	done := make(chan error, 1)
	go func() {
		_, err := s.Wait()
		done <- err
	}()
	_, err = s.Stop()
	require.NoError(t, err)
	_, err = s.Stop()
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after Stop")
	}
	_, err = NewMetadataServer(addr, "", environ(t, "MC_LOG_LEVEL", "LOUD"))
	require.Error(t, err)
}

// gopy also exposes a constructor of the zero Engine; its methods must fail,
// not crash the process.
func TestZeroEngineFailsCleanly(t *testing.T) {
	var e Engine
	for _, err := range []error{
		second(e.RPCPort()), second(e.Name()), second(e.TransferSync("x", 1, 1, 1, 1)),
		second(e.CheckStatus(1)), second(e.CopyOut(1, 1, 1)), second(e.Close()),
	} {
		_, kind, _ := parse(t, err)
		require.Equal(t, kindInternal, kind)
	}
	var m MetadataServer
	_, kind, _ := parse(t, second(m.Addr()))
	require.Equal(t, kindInternal, kind)
	_, kind, _ = parse(t, second(m.Wait()))
	require.Equal(t, kindInvalid, kind, "Wait must not block forever")
}
