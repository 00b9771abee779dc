package tcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/connlimit"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"too many lanes", Config{Lanes: MaxLanes + 1}},
		{"negative lanes", Config{Lanes: -1}},
		{"negative status timeout", Config{StatusTimeout: -time.Second}},
		{"negative i/o timeout", Config{IOTimeout: -time.Second}},
		{"negative dial timeout", Config{DialTimeout: -time.Second}},
		{"poll budget too long", Config{PollBudget: MaxPollBudget + 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := localListener(t)
			defer ln.Close()
			_, err := New(tc.cfg, ln, &registry{all: true})
			require.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
	t.Run("nil validator", func(t *testing.T) {
		ln := localListener(t)
		defer ln.Close()
		_, err := New(Config{}, ln, nil)
		require.ErrorIs(t, err, ErrInvalidConfig)
	})
	t.Run("nil listener", func(t *testing.T) {
		_, err := New(Config{}, nil, &registry{all: true})
		require.ErrorIs(t, err, ErrInvalidConfig)
	})
	t.Run("defaults", func(t *testing.T) {
		testutil.ResourceCheck(t)
		tr := newTransport(t, Config{})
		require.Equal(t, DefaultLanes, tr.cfg.Lanes)
		require.Equal(t, uint64(DefaultSplitThreshold), tr.cfg.SplitThreshold)
		require.Equal(t, DefaultStatusTimeout, tr.cfg.StatusTimeout)
		require.Equal(t, DefaultIOTimeout, tr.cfg.IOTimeout)
		require.Equal(t, DefaultDialTimeout, tr.cfg.DialTimeout)
		require.Equal(t, DefaultPollBudget, tr.cfg.PollBudget)
		require.Equal(t, time.Duration(0), newTransport(t, Config{PollBudget: -1}).cfg.PollBudget, "disabled")
		require.Equal(t, "tcp", tr.Name())
		require.Equal(t, 2, tr.ProtoVersion())
		require.NotZero(t, tr.Port())
	})
}

// TestWriteRead moves data both ways between two transports, with both
// framings, for the sizes that matter, and checks every byte.
func TestWriteRead(t *testing.T) {
	sizes := []int{0, 1, 4 << 10, 1 << 20, 64 << 20}
	for _, tc := range []struct {
		name    string
		version int
		forceV1 bool
	}{
		{"v2", 2, false},
		{"v1 target", 1, false},
		{"v2 target forced v1", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			remote := testutil.Mmap(t, 64<<20)
			src := testutil.Mmap(t, 64<<20)
			dst := testutil.Mmap(t, 64<<20)
			server := newTransport(t, Config{}, remote)
			client := newTransport(t, Config{ForceV1: tc.forceV1})
			pe := peerOf(server, tc.version)
			for i, n := range sizes {
				fill(src[:n], uint64(i+1))
				requireDone(t, transfer(t, client, pe, write(src[:n], addrOf(remote)))...)
				landed(t, tc.version < 2 || tc.forceV1, func() bool { return bytes.Equal(src[:n], remote[:n]) }, "write of %d bytes", n)
				clear(dst[:n])
				requireDone(t, transfer(t, client, pe, read(dst[:n], addrOf(remote)))...)
				require.True(t, bytes.Equal(src[:n], dst[:n]), "read of %d bytes", n)
			}
			require.NoError(t, client.PeerHealth(pe.Name))
		})
	}
}

// TestRandomSizes submits 100 requests of random sizes and offsets at once,
// so that lanes, splitting and pipelining all take part.
func TestRandomSizes(t *testing.T) {
	for _, version := range []int{2, 1} {
		t.Run(map[int]string{1: "v1", 2: "v2"}[version], func(t *testing.T) {
			testutil.ResourceCheck(t)
			const total = 48 << 20
			remote := testutil.Mmap(t, total)
			src := testutil.Mmap(t, total)
			dst := testutil.Mmap(t, total)
			server := newTransport(t, Config{}, remote)
			client := newTransport(t, Config{SplitThreshold: 2 << 20})
			pe := peerOf(server, version)
			fill(src, 42)

			r := rand.New(rand.NewPCG(7, uint64(version)))
			cuts := make([]int, 99)
			for i := range cuts {
				cuts[i] = r.IntN(total)
			}
			sort.Ints(cuts)
			var writes, reads []transport.Request
			prev := 0
			for _, c := range append(cuts, total) {
				writes = append(writes, write(src[prev:c], addrOf(remote)+uint64(prev)))
				reads = append(reads, read(dst[prev:c], addrOf(remote)+uint64(prev)))
				prev = c
			}
			requireDone(t, transfer(t, client, pe, writes...)...)
			landed(t, version < 2, func() bool { return bytes.Equal(src, remote) })
			requireDone(t, transfer(t, client, pe, reads...)...)
			require.True(t, bytes.Equal(src, dst))
		})
	}
}

// TestConcurrentSubmit has several goroutines share one peer's lanes.
func TestConcurrentSubmit(t *testing.T) {
	testutil.ResourceCheck(t)
	const workers, per, size = 8, 20, 64 << 10
	remote := testutil.Mmap(t, workers*size)
	src := testutil.Mmap(t, workers*size)
	dst := testutil.Mmap(t, workers*size)
	server := newTransport(t, Config{}, remote)
	client := newTransport(t, Config{Lanes: 3})
	pe := peerOf(server, 2)
	fill(src, 9)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := w * size
			for i := 0; i < per; i++ {
				requireDone(t, transfer(t, client, pe, write(src[off:off+size], addrOf(remote)+uint64(off)))...)
				requireDone(t, transfer(t, client, pe, read(dst[off:off+size], addrOf(remote)+uint64(off)))...)
			}
		}()
	}
	wg.Wait()
	require.True(t, bytes.Equal(src, dst))
}

// TestSplit checks that a large request travels as several parts, each
// with its own header, on several lanes.
func TestSplit(t *testing.T) {
	testutil.ResourceCheck(t)
	var mu sync.Mutex
	var headers []Header
	mem := make([]byte, 8<<20)
	f := startFake(t, func(c net.Conn) {
		for {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			h := DecodeHeader(&hb)
			mu.Lock()
			headers = append(headers, h)
			mu.Unlock()
			off := h.Addr - 0x10000
			if _, err := io.ReadFull(c, mem[off:off+h.Size]); err != nil {
				return
			}
			ok := EncodeStatus(StatusOK)
			if _, err := c.Write(ok[:]); err != nil {
				return
			}
		}
	})
	client := newTransport(t, Config{Lanes: 4})
	src := testutil.Mmap(t, 8<<20)
	fill(src, 3)
	requireDone(t, transfer(t, client, f.peer(2), write(src, 0x10000))...)
	require.True(t, bytes.Equal(src, mem))
	require.Len(t, headers, 4)
	sort.Slice(headers, func(i, j int) bool { return headers[i].Addr < headers[j].Addr })
	for i, h := range headers {
		require.Equal(t, Header{Size: 2 << 20, Addr: 0x10000 + uint64(i)*(2<<20), Opcode: 0x81}, h)
	}
}

// prLikeServer is a v1 server as Mooncake PR peers run it: one request per
// connection, no status frames, no address checks; its "memory" starts at
// base.
func prLikeServer(t *testing.T, base uint64, mem []byte, mu *sync.Mutex, seen chan<- [HeaderSize]byte) *fakePeer {
	return startFake(t, func(c net.Conn) {
		var hb [HeaderSize]byte
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			return
		}
		seen <- hb
		h := DecodeHeader(&hb)
		body := make([]byte, h.Size)
		if h.Opcode == 1 {
			_, _ = io.ReadFull(c, body)
			mu.Lock()
			copy(mem[h.Addr-base:], body)
			mu.Unlock()
		} else {
			mu.Lock()
			copy(body, mem[h.Addr-base:])
			mu.Unlock()
			_, _ = c.Write(body)
		}
		// and close: the PR Session is destroyed after one request
	})
}

func TestPRLikeServer(t *testing.T) {
	testutil.ResourceCheck(t)
	const base = 0x7f0000000000
	mem := make([]byte, 4<<20)
	seen := make(chan [HeaderSize]byte, 64)
	var memMu sync.Mutex
	f := prLikeServer(t, base, mem, &memMu, seen)
	client := newTransport(t, Config{})
	pe := f.peer(1)
	src := testutil.Mmap(t, 4<<20)
	dst := testutil.Mmap(t, 4<<20)
	fill(src, 5)

	var writes, reads []transport.Request
	for off := 0; off < 4<<20; off += 256 << 10 {
		writes = append(writes, write(src[off:off+256<<10], base+uint64(off)))
		reads = append(reads, read(dst[off:off+256<<10], base+uint64(off)))
	}
	requireDone(t, transfer(t, client, pe, writes...)...)
	landed(t, true, func() bool {
		memMu.Lock()
		defer memMu.Unlock()
		return bytes.Equal(src, mem)
	})
	requireDone(t, transfer(t, client, pe, reads...)...)
	require.True(t, bytes.Equal(src, dst))
	require.Len(t, seen, 2*len(writes))
	for len(seen) > 0 {
		hb := <-seen
		require.Contains(t, []byte{0, 1}, hb[16], "v1 opcodes carry no flag")
		require.Equal(t, make([]byte, 7), hb[17:], "padding is zero")
	}
	require.NoError(t, client.PeerHealth(pe.Name))
}

// TestRejected checks that a v2 target refuses ranges outside its
// registered memory, touching nothing, and that only the refused task fails.
func TestRejected(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 16<<20)
	registered := remote[4096 : 8<<20]
	server := newTransport(t, Config{}, registered)
	client := newTransport(t, Config{SplitThreshold: 1 << 30})
	pe := peerOf(server, 2)
	src := testutil.Mmap(t, 64<<20)
	fill(src, 11)
	fill(remote, 12)
	before := bytes.Clone(remote)
	base := addrOf(registered)
	for _, tc := range []struct {
		name   string
		remote uint64
		size   int
	}{
		{"below", base - 4096, 4096},
		{"straddles start", base - 1, 2},
		{"straddles end", base + uint64(len(registered)) - 10, 20},
		{"large straddles end", base + 1<<20, 8 << 20},
		{"huge straddles end", base + 1<<20, 64 << 20}, // the server resets the unread body
		{"beyond", base + 16<<20, 4096},
		{"null", 0, 4096},
		{"wraps", ^uint64(0) - 10, 4096},
	} {
		for _, op := range []transport.Opcode{transport.Write, transport.Read} {
			t.Run(tc.name+" "+op.String(), func(t *testing.T) {
				req := transport.Request{Opcode: op, Local: uintptr(addrOf(src)), Remote: tc.remote, Length: uint64(tc.size)}
				ok := write(src[:4096], base)
				tasks := transfer(t, client, pe, req, ok)
				require.ErrorIs(t, tasks[0].Err(), ErrRejected)
				require.NotErrorIs(t, tasks[0].Err(), ErrPeer)
				var pErr *PeerError
				require.ErrorAs(t, tasks[0].Err(), &pErr)
				require.Equal(t, tc.remote, pErr.Remote)
				require.Equal(t, pe.Name, pErr.Peer)
				require.Equal(t, transport.Failed, tasks[0].Status())
				requireDone(t, tasks[1])
				require.NoError(t, client.PeerHealth(pe.Name))
				require.True(t, bytes.Equal(before[:4096], remote[:4096]))
				require.True(t, bytes.Equal(before[8<<20:], remote[8<<20:]))
				copy(before[4096:8192], src[:4096]) // the good write
				require.True(t, bytes.Equal(before, remote))
			})
		}
	}
}

// TestRejectedV1 checks what a v1 client sees: a refused write looks
// complete (v1 has no ack) but changes nothing; a refused read fails.
func TestRejectedV1(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 64<<10)
	registered := remote[:32<<10]
	server := newTransport(t, Config{}, registered)
	client := newTransport(t, Config{})
	pe := peerOf(server, 1)
	src := testutil.Mmap(t, 64<<10)
	fill(src, 1)
	fill(remote, 2)
	before := bytes.Clone(remote)
	outside := addrOf(remote) + 32<<10

	tasks := transfer(t, client, pe, write(src[:4096], outside))
	require.NoError(t, tasks[0].Err())
	tasks = transfer(t, client, pe, read(src[:4096], outside))
	require.ErrorIs(t, tasks[0].Err(), ErrPeer)
	require.True(t, bytes.Equal(before, remote))
}

// rawRequest sends raw bytes to addr and returns everything the server
// answers until it closes the connection (or 5 s pass).
func rawRequest(t *testing.T, addr string, in []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = c.Write(in)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	out, err := io.ReadAll(c)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	return out
}

// landed waits for a write to reach the target's memory: immediate with v2
// acks, eventual with v1, whose writes complete when sent.
func landed(t *testing.T, v1 bool, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	if !v1 {
		require.True(t, cond(), msgAndArgs...)
		return
	}
	require.Eventually(t, cond, 10*time.Second, time.Millisecond, msgAndArgs...)
}

func header(size, addr uint64, op uint8) []byte {
	var b [HeaderSize]byte
	Header{Size: size, Addr: addr, Opcode: op}.Encode(&b)
	return b[:]
}

// TestServerRawInput feeds the server what bad or odd peers send.
func TestServerRawInput(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 64<<10)
	fill(remote, 77)
	before := bytes.Clone(remote)
	server := newTransport(t, Config{}, remote)
	addr := server.srv.ln.Addr().String()
	base := addrOf(remote)
	ok := EncodeStatus(StatusOK)
	rejected := EncodeStatus(StatusRejected)
	garbage := make([]byte, 24)
	for i := range garbage {
		garbage[i] = byte(i*37 + 11)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want []byte
	}{
		{"empty", nil, []byte{}},
		{"truncated header", header(16, base, 0x80)[:10], []byte{}},
		{"v2 size 0", header(0, base, 0x80), rejected[:]},
		{"v2 write size 0", header(0, base, 0x81), rejected[:]},
		{"v1 size 0", header(0, base, 0), []byte{}},
		{"v2 huge size", header(1<<63, base, 0x80), rejected[:]},
		{"v2 max size", header(^uint64(0), base, 0x81), rejected[:]},
		{"v2 wrapping range", header(4096, ^uint64(0)-100, 0x80), rejected[:]},
		{"garbage", garbage, []byte{}},
		{"v2 read", header(16, base, 0x80), append(ok[:], remote[:16]...)},
		{"v1 read", header(16, base+100, 0), remote[100:116]},
		{"unknown opcode reads", header(8, base, 0x85), append(ok[:], remote[:8]...)},
		{"two v2 reads then reject", bytes.Join([][]byte{header(4, base, 0x80), header(4, base+4, 0x80), header(4, base+64<<10, 0x80)}, nil),
			bytes.Join([][]byte{ok[:], remote[:4], ok[:], remote[4:8], rejected[:]}, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, rawRequest(t, addr, tc.in))
		})
	}
	require.True(t, bytes.Equal(before, remote), "memory changed")

	t.Run("v2 write without body", func(t *testing.T) {
		require.Equal(t, []byte{}, rawRequest(t, addr, header(4096, base, 0x81)))
		require.True(t, bytes.Equal(before, remote), "memory changed")
	})
	t.Run("v2 write with short body", func(t *testing.T) {
		// What arrived is applied in place; the rest stays, and no ack.
		require.Equal(t, []byte{}, rawRequest(t, addr, append(header(4096, base, 0x81), bytes.Repeat([]byte{0xAB}, 100)...)))
		require.Equal(t, bytes.Repeat([]byte{0xAB}, 100), remote[:100])
		require.True(t, bytes.Equal(before[100:], remote[100:]), "memory changed beyond the body")
	})
	t.Run("v2 write applies then acks", func(t *testing.T) {
		in := append(header(5, base+10, 0x81), []byte("hello")...)
		require.Equal(t, ok[:], rawRequest(t, addr, in))
		require.Equal(t, []byte("hello"), remote[10:15])
	})
	t.Run("good peer still served", func(t *testing.T) {
		client := newTransport(t, Config{})
		src := testutil.Mmap(t, 64<<10)
		fill(src, 8)
		requireDone(t, transfer(t, client, peerOf(server, 2), write(src, base))...)
		require.True(t, bytes.Equal(src, remote))
	})
}

// TestPeerDies checks that a peer dying mid-transfer fails the task fast,
// long before any timeout, and marks the peer unhealthy.
func TestPeerDies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		op     transport.Opcode
		handle func(c net.Conn)
	}{
		{"mid read body", transport.Read, func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			ok := EncodeStatus(StatusOK)
			_, _ = c.Write(append(ok[:], make([]byte, DecodeHeader(&hb).Size/2)...))
		}},
		{"mid write body", transport.Write, func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			_, _ = io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size/2))
		}},
		{"before status", transport.Read, func(c net.Conn) {
			var hb [HeaderSize]byte
			_, _ = io.ReadFull(c, hb[:])
		}},
		{"legacy status", transport.Write, func(c net.Conn) {
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
			_, _ = io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size))
			_, _ = c.Write([]byte("garbage!"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			f := startFake(t, tc.handle)
			client := newTransport(t, Config{})
			local := testutil.Mmap(t, 8<<20)
			pe := f.peer(2)
			start := time.Now()
			tasks := transfer(t, client, pe, transport.Request{Opcode: tc.op, Local: uintptr(addrOf(local)), Remote: 0x1000, Length: 2 << 20})
			require.Less(t, time.Since(start), 5*time.Second)
			require.Equal(t, transport.Failed, tasks[0].Status())
			var pErr *PeerError
			require.ErrorAs(t, tasks[0].Err(), &pErr)
			require.Equal(t, "fake", pErr.Peer)
			if tc.name == "legacy status" {
				require.ErrorIs(t, tasks[0].Err(), ErrLegacyPeer)
				return
			}
			require.ErrorIs(t, tasks[0].Err(), ErrPeer)
			require.ErrorIs(t, client.PeerHealth(pe.Name), ErrPeer)
		})
	}
}

// TestPeerStops checks that a peer that stops reading or answering (as a
// SIGSTOPped process) fails the task within the configured timeouts.
func TestPeerStops(t *testing.T) {
	for _, tc := range []struct {
		name   string
		op     transport.Opcode
		size   uint64
		handle func(done <-chan struct{}) func(c net.Conn)
	}{
		{"never reads a large write", transport.Write, 64 << 20, func(done <-chan struct{}) func(net.Conn) {
			return func(net.Conn) { <-done }
		}},
		{"never acks a write", transport.Write, 4096, func(done <-chan struct{}) func(net.Conn) {
			return func(c net.Conn) { _, _ = io.ReadFull(c, make([]byte, HeaderSize+4096)); <-done }
		}},
		{"never answers a read", transport.Read, 4096, func(done <-chan struct{}) func(net.Conn) {
			return func(c net.Conn) { _, _ = io.ReadFull(c, make([]byte, HeaderSize)); <-done }
		}},
		{"stops mid read body", transport.Read, 4 << 20, func(done <-chan struct{}) func(net.Conn) {
			return func(c net.Conn) {
				_, _ = io.ReadFull(c, make([]byte, HeaderSize))
				ok := EncodeStatus(StatusOK)
				_, _ = c.Write(append(ok[:], make([]byte, 1000)...))
				<-done
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			f := startFakeDone(t, tc.handle)
			client := newTransport(t, Config{IOTimeout: 200 * time.Millisecond, StatusTimeout: 200 * time.Millisecond, SplitThreshold: 1 << 30})
			local := testutil.Mmap(t, int(tc.size))
			start := time.Now()
			tasks := transfer(t, client, f.peer(2), transport.Request{Opcode: tc.op, Local: uintptr(addrOf(local)), Remote: 0x1000, Length: tc.size})
			require.Less(t, time.Since(start), 3*time.Second)
			require.ErrorIs(t, tasks[0].Err(), ErrPeer)
			require.ErrorIs(t, tasks[0].Err(), os.ErrDeadlineExceeded)
			require.ErrorIs(t, client.PeerHealth("fake"), ErrPeer)
		})
	}
}

func TestDialRefused(t *testing.T) {
	testutil.ResourceCheck(t)
	ln := localListener(t)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	client := newTransport(t, Config{})
	pe := tcpPeer("gone", port, 2)
	local := testutil.Mmap(t, 4096)
	tasks := transfer(t, client, pe, write(local, 0x1000), read(local, 0x1000))
	for _, task := range tasks {
		require.ErrorIs(t, task.Err(), ErrPeer)
		require.ErrorIs(t, task.Err(), syscall.ECONNREFUSED)
	}
	require.ErrorIs(t, client.PeerHealth("gone"), ErrPeer)
	require.NoError(t, client.PeerHealth("other"))
	client.ClosePeer("gone")
	require.NoError(t, client.PeerHealth("gone"))
}

// TestHealthRecovers checks that a success after a failure makes the peer
// healthy again.
func TestHealthRecovers(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 4096)
	server := newTransport(t, Config{}, remote)
	client := newTransport(t, Config{})
	pe := peerOf(server, 2)
	local := testutil.Mmap(t, 4096)
	// A v1 read that the server refuses closes the connection: to the
	// client it is a connection failure.
	v1 := peerOf(server, 1)
	tasks := transfer(t, client, v1, read(local, addrOf(remote)+1))
	require.ErrorIs(t, tasks[0].Err(), ErrPeer)
	require.ErrorIs(t, client.PeerHealth(pe.Name), ErrPeer)
	requireDone(t, transfer(t, client, pe, read(local, addrOf(remote)))...)
	require.NoError(t, client.PeerHealth(pe.Name))
}

// TestStaleConnection checks that a pooled connection the peer closed while
// idle is replaced transparently.
func TestStaleConnection(t *testing.T) {
	testutil.ResourceCheck(t)
	var conns sync.WaitGroup
	served := make(chan struct{}, 16)
	f := startFake(t, func(c net.Conn) {
		conns.Add(1)
		defer conns.Done()
		var hb [HeaderSize]byte
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			return
		}
		_, _ = io.ReadFull(c, make([]byte, DecodeHeader(&hb).Size))
		ok := EncodeStatus(StatusOK)
		_, _ = c.Write(ok[:])
		served <- struct{}{}
		// then close, as an idle timeout would
	})
	client := newTransport(t, Config{})
	local := testutil.Mmap(t, 4096)
	for i := 0; i < 3; i++ {
		requireDone(t, transfer(t, client, f.peer(2), write(local, 0x1000))...)
		<-served
		time.Sleep(10 * time.Millisecond) // let the close reach the client
	}
	require.NoError(t, client.PeerHealth("fake"))
}

// TestContextCancel checks that ending the Submit ctx fails in-flight and
// queued tasks promptly, while other work continues.
func TestContextCancel(t *testing.T) {
	testutil.ResourceCheck(t)
	f := stuckPeer(t)
	client := newTransport(t, Config{Lanes: 2})
	local := testutil.Mmap(t, 64<<20)
	ctx, cancel := context.WithCancel(context.Background())
	g := transport.NewGroup()
	tasks := make([]*transport.Task, 6)
	for i := range tasks {
		tasks[i] = &transport.Task{}
		tasks[i].Init(write(local[i<<20:(i+1)<<20], 0x1000), g)
	}
	g.Add(len(tasks))
	client.Submit(ctx, f.peer(2), tasks, transport.SubmitOptions{})
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	require.NoError(t, g.Wait(wctx))
	require.Less(t, time.Since(start), 2*time.Second)
	for _, task := range tasks {
		require.ErrorIs(t, task.Err(), context.Canceled)
	}
	// A cancelled ctx fails at once.
	tasks = transferCtx(t, ctx, client, f.peer(2), write(local[:4096], 0x1000))
	require.ErrorIs(t, tasks[0].Err(), context.Canceled)
}

// TestDeadlineBehindABlockedWrite: requests whose ctx ended fail at once
// even when the lane is blocked writing other requests (whose ctx lives)
// to a peer that reads nothing, as a SIGSTOPped one. The ending ctx cuts
// the connection, the other requests go out again on a fresh one and
// block there; the ended ones used to wait behind them for IOTimeout.
func TestDeadlineBehindABlockedWrite(t *testing.T) {
	testutil.ResourceCheck(t)
	f := stuckPeer(t)
	client := newTransport(t, Config{Lanes: 1, IOTimeout: 20 * time.Second, SplitThreshold: 4 << 20})
	local := testutil.Mmap(t, 64<<20)
	pe := f.peer(2)

	// Work whose ctx lives: 16 requests of 4 MiB, more than the sockets
	// hold, on the one lane.
	bg := transport.NewGroup()
	live := []*transport.Task{{}, {}}
	for i, task := range live {
		task.Init(write(local[i<<25:(i+1)<<25], 0x1000), bg)
	}
	bg.Add(len(live))
	client.Submit(context.Background(), pe, live, transport.SubmitOptions{})
	time.Sleep(50 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	g := transport.NewGroup()
	late := []*transport.Task{{}, {}, {}}
	for i, task := range late {
		task.Init(write(local[i<<20:(i+1)<<20], 0x1000), g)
	}
	g.Add(len(late))
	client.Submit(ctx, pe, late, transport.SubmitOptions{})
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	require.NoError(t, g.Wait(wctx), "the requests whose deadline passed are still pending behind a blocked write")
	for _, task := range late {
		require.ErrorIs(t, task.Err(), context.DeadlineExceeded)
	}
	require.NotZero(t, bg.Pending(), "the live work still waits for the peer")
	client.ClosePeer(pe.Name)
	require.NoError(t, bg.Wait(wctx))
}

func TestContextDeadline(t *testing.T) {
	testutil.ResourceCheck(t)
	f := stuckPeer(t)
	client := newTransport(t, Config{})
	local := testutil.Mmap(t, 64<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	tasks := transferCtx(t, ctx, client, f.peer(2), write(local, 0x1000))
	require.ErrorIs(t, tasks[0].Err(), context.DeadlineExceeded)
}

// TestCloseInFlight closes transports with work in flight and queued: every
// task fails with ErrClosed and nothing leaks.
func TestCloseInFlight(t *testing.T) {
	testutil.ResourceCheck(t)
	f := stuckPeer(t)
	remote := testutil.Mmap(t, 64<<20)
	server := newTransport(t, Config{}, remote)
	client, err := New(Config{Lanes: 2}, localListener(t), &registry{})
	require.NoError(t, err)
	local := testutil.Mmap(t, 64<<20)
	g := transport.NewGroup()
	var tasks []*transport.Task
	for _, pe := range []transport.Peer{f.peer(2), peerOf(server, 2), peerOf(server, 1)} {
		batch := make([]*transport.Task, 8)
		for i := range batch {
			batch[i] = &transport.Task{}
			batch[i].Init(write(local[i<<23:(i+1)<<23], addrOf(remote)), g)
		}
		g.Add(len(batch))
		client.Submit(context.Background(), pe, batch, transport.SubmitOptions{})
		tasks = append(tasks, batch...)
	}
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, client.Close())
	require.NoError(t, client.Close(), "idempotent")
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, g.Wait(wctx))
	for _, task := range tasks[:8] {
		require.ErrorIs(t, task.Err(), ErrClosed)
	}
	for _, task := range tasks {
		if task.Err() != nil {
			require.ErrorIs(t, task.Err(), ErrClosed)
		}
	}
	after := transfer(t, client, peerOf(server, 2), write(local[:10], addrOf(remote)))
	require.ErrorIs(t, after[0].Err(), ErrClosed)
}

func TestClosePeer(t *testing.T) {
	testutil.ResourceCheck(t)
	f := stuckPeer(t)
	client := newTransport(t, Config{})
	local := testutil.Mmap(t, 64<<20)
	g := transport.NewGroup()
	tasks := make([]*transport.Task, 4)
	for i := range tasks {
		tasks[i] = &transport.Task{}
		tasks[i].Init(write(local[i<<24:(i+1)<<24], 0x1000), g)
	}
	g.Add(len(tasks))
	client.Submit(context.Background(), f.peer(2), tasks, transport.SubmitOptions{})
	time.Sleep(20 * time.Millisecond)
	client.ClosePeer("fake")
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, g.Wait(wctx))
	for _, task := range tasks {
		require.ErrorIs(t, task.Err(), ErrClosed)
	}
}

// TestInvalidRequest checks requests the transport refuses before sending.
func TestInvalidRequest(t *testing.T) {
	testutil.ResourceCheck(t)
	client := newTransport(t, Config{})
	pe := tcpPeer("x", 1, 2)
	tasks := transfer(t, client, pe, transport.Request{Opcode: 9, Local: 0x1000, Remote: 0x1000, Length: 10})
	require.Error(t, tasks[0].Err())
	require.Equal(t, transport.Failed, tasks[0].Status())
}

// FuzzServer feeds arbitrary bytes to a server connection. The validator
// approves one page between two inaccessible guard pages, so any access
// beyond what it approved crashes the run.
func FuzzServer(f *testing.F) {
	page := os.Getpagesize()
	mem, err := syscall.Mmap(-1, 0, 3*page, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(f, err)
	f.Cleanup(func() { _ = syscall.Munmap(mem) })
	require.NoError(f, syscall.Mprotect(mem[:page], syscall.PROT_NONE))
	require.NoError(f, syscall.Mprotect(mem[2*page:], syscall.PROT_NONE))
	approved := mem[page : 2*page]
	base := addrOf(approved)
	reg := &registry{}
	reg.add(approved)

	seeds := [][]byte{
		header(16, base, 0x80),
		append(header(5, base+10, 0x81), []byte("hello")...),
		header(4096, base, 0),
		header(1, base+uint64(page)-1, 0x81),
		header(2, base+uint64(page)-1, 0x81),
		header(0, base, 0x80),
		header(1<<63, base, 0x81),
		append(header(4, base, 0x81), append([]byte("abcd"), header(4, base, 0x80)...)...),
		{1, 2, 3},
	}
	for _, s := range seeds {
		f.Add(s, uint64(0))
	}
	f.Fuzz(func(t *testing.T, in []byte, shift uint64) {
		// Rebase addresses the fuzzer made up near the approved page, so
		// that accepted requests are common.
		if len(in) >= HeaderSize && shift%2 == 1 {
			a := binary.LittleEndian.Uint64(in[8:16])
			binary.LittleEndian.PutUint64(in[8:16], base-uint64(page)+a%uint64(3*page))
		}
		s := &server{mem: reg, log: zaptestNop(), io: time.Second, idle: time.Second}
		a, b := net.Pipe()
		lim, err := connlimit.New(1, 1)
		require.NoError(t, err)
		la, err := lim.Admit(context.Background(), a)
		require.NoError(t, err)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.serveConn(la)
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			_, _ = io.Copy(io.Discard, b)
		}()
		_, werr := b.Write(in)
		if werr != nil && !errors.Is(werr, io.ErrClosedPipe) {
			t.Fatalf("write: %v", werr)
		}
		_ = b.Close()
		<-done
		<-drained
	})
}

// A lane whose queue never empties (a steady backlog) keeps a short array:
// pop moves the waiting requests to the front once the taken prefix is
// half of it, and they come out in order.
func TestLaneQueueStaysCompact(t *testing.T) {
	l := &lane{}
	for i := range 100_000 {
		l.queue = append(l.queue, wreq{n: uint64(i)})
		if i > 0 {
			require.True(t, l.pop())
			require.Equal(t, uint64(i-1), l.cur.n)
		}
	}
	require.Less(t, cap(l.queue), 1024)
	require.True(t, l.pop())
	require.False(t, l.pop())
}
