package tcp

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// sgPeer is tr as a pymooncake target that publishes bufs and serves the
// scatter-gather framing.
func sgPeer(tr *Transport, bufs ...[]byte) transport.Peer {
	pe := withBuffers(peerOf(tr, 2), bufs...)
	pe.Desc.Extra = map[string]json.RawMessage{SGKey: json.RawMessage("1")}
	return pe
}

// scattered returns n requests of op with random sizes up to max, at
// distinct random slots of local and remote: the remote slots unrelated to
// the local ones, as KV block ids are.
func scattered(r *rand.Rand, op transport.Opcode, local, remote []byte, n, max int) []transport.Request {
	slots := len(local) / max
	ls, rs := r.Perm(slots)[:n], r.Perm(len(remote) / max)[:n]
	reqs := make([]transport.Request, n)
	for i := range reqs {
		size := 1 + r.IntN(max)
		reqs[i] = transport.Request{Opcode: op, Local: uintptr(addrOf(local)) + uintptr(ls[i]*max),
			Remote: addrOf(remote) + uint64(rs[i]*max), Length: uint64(size)}
	}
	return reqs
}

func slotOf(base []byte, addr uint64, n uint64) []byte {
	off := addr - addrOf(base)
	return base[off : off+n]
}

func TestScatterGather(t *testing.T) {
	testutil.ResourceCheck(t)
	r := rand.New(rand.NewPCG(1, 2))
	remote := testutil.Mmap(t, 16<<20)
	server := newTransport(t, Config{}, remote)
	local := testutil.Mmap(t, 16<<20)
	client := newTransport(t, Config{}, local)
	pe := sgPeer(server, remote)

	for _, tc := range []struct {
		name string
		n    int
		max  int
	}{
		{"one small batch", 7, 4096},
		{"pages", 3000, 2048},
		{"blocks", 300, 32 << 10},
		{"mixed with large", 12, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fill(local, r.Uint64())
			writes := scattered(r, transport.Write, local, remote, tc.n, tc.max)
			for i, task := range transfer(t, client, pe, writes...) {
				require.Equal(t, transport.Completed, task.Status(), "write %d", i)
				require.Equal(t, writes[i].Length, task.Transferred())
			}
			for i, w := range writes {
				require.True(t, bytes.Equal(memory(w.Local, w.Length), slotOf(remote, w.Remote, w.Length)), "write %d", i)
			}
			// Read the same ranges back into other local slots.
			fill(remote, r.Uint64())
			reads := scattered(r, transport.Read, local, remote, tc.n, tc.max)
			for i, task := range transfer(t, client, pe, reads...) {
				require.Equal(t, transport.Completed, task.Status(), "read %d", i)
			}
			for i, rd := range reads {
				require.True(t, bytes.Equal(slotOf(remote, rd.Remote, rd.Length), memory(rd.Local, rd.Length)), "read %d", i)
			}
		})
	}
}

// A range the target refuses fails only its own request; the others of the
// same scatter-gather request complete, and the connection stays usable.
func TestScatterGatherPartial(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<20)
	served := remote[:512<<10] // the target serves half of what it publishes
	server := newTransport(t, Config{}, served)
	local := testutil.Mmap(t, 1<<20)
	client := newTransport(t, Config{}, local)
	pe := sgPeer(server, remote)
	for _, op := range []transport.Opcode{transport.Write, transport.Read} {
		fill(local, 3)
		fill(remote, 4)
		before := bytes.Clone(remote)
		beforeLocal := bytes.Clone(local)
		var reqs []transport.Request
		for i := range 64 { // alternately inside and outside what is served
			off := uint64(i * 16 << 10)
			reqs = append(reqs, transport.Request{Opcode: op, Local: uintptr(addrOf(local) + off), Remote: addrOf(remote) + off, Length: 4096})
		}
		tasks := transfer(t, client, pe, reqs...)
		for i, task := range tasks {
			off := i * 16 << 10
			if off+4096 <= len(served) {
				require.Equal(t, transport.Completed, task.Status(), "%s %d", op, i)
				if op == transport.Write {
					require.Equal(t, local[off:off+4096], remote[off:off+4096])
				} else {
					require.Equal(t, remote[off:off+4096], local[off:off+4096])
				}
				continue
			}
			require.Equal(t, transport.Failed, task.Status(), "%s %d", op, i)
			require.ErrorIs(t, task.Err(), ErrRejected)
			require.NotErrorIs(t, task.Err(), ErrPeer)
			require.Zero(t, task.Transferred())
			if op == transport.Write {
				require.Equal(t, before[off:off+4096], remote[off:off+4096], "a refused range is never written")
			} else {
				require.Equal(t, beforeLocal[off:off+4096], local[off:off+4096], "a refused read leaves local memory alone")
			}
		}
		require.NoError(t, client.PeerHealth(pe.Name), "a refusal does not blame the connection")
	}
}

// rawSG sends b on a new connection to tr's data port and returns what
// the server answers: want bytes, or all it sends before closing (up to 64
// bytes) when want is 0.
func rawSG(t *testing.T, tr *Transport, b []byte, want int) []byte {
	t.Helper()
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(tr.Port())))
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write(b)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	if want > 0 {
		out := make([]byte, want)
		_, err := io.ReadFull(c, out)
		require.NoError(t, err)
		return out
	}
	out, _ := io.ReadAll(io.LimitReader(c, 64))
	return out
}

func sgHeader(op uint8, n, size uint64) []byte {
	var hb [HeaderSize]byte
	Header{Size: size, Addr: n, Opcode: FlagV2 | FlagSG | op}.Encode(&hb)
	return hb[:]
}

// Hostile scatter-gather frames are refused whole and touch nothing.
func TestScatterGatherHostileFrames(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 64<<10)
	fill(remote, 9)
	want := bytes.Clone(remote)
	server := newTransport(t, Config{}, remote)
	a := addrOf(remote)
	table := func(rs ...Range) []byte { return AppendSGTable(nil, rs) }
	rejected := EncodeStatus(StatusRejected)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"no ranges", sgHeader(opWrite, 0, 10)},
		{"too many ranges", sgHeader(opWrite, MaxSGRanges+1, 1<<20)},
		{"too many bytes", sgHeader(opWrite, 1, MaxSGBytes+1)},
		{"fewer bytes than ranges", sgHeader(opWrite, 4, 3)},
		{"lengths short of size", append(sgHeader(opWrite, 2, 100), table(Range{a, 10}, Range{a + 10, 10})...)},
		{"lengths past size", append(sgHeader(opWrite, 2, 15), table(Range{a, 10}, Range{a + 10, 10})...)},
		{"zero length", append(sgHeader(0, 2, 10), table(Range{a, 10}, Range{a + 10, 0})...)},
		{"wrapping range", append(sgHeader(0, 1, 16), table(Range{^uint64(0) - 7, 16})...)},
		{"sum overflows", append(sgHeader(opWrite, 2, 10), table(Range{a, ^uint64(0) - 5}, Range{a, 16})...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := append(tc.b, bytes.Repeat([]byte{0xAB}, 64)...)
			got := rawSG(t, server, body, 0)
			require.Equal(t, rejected[:], got, "REJECTED, then the server closes")
			require.Equal(t, want, remote, "nothing was written")
		})
	}
	t.Run("valid after hostile", func(t *testing.T) {
		// Refused ranges get a PARTIAL reply with the bitmap, and the
		// accepted ones are read as asked.
		req := append(sgHeader(0, 3, 30), table(Range{a, 10}, Range{0x10, 10}, Range{a + 100, 10})...)
		got := rawSG(t, server, req, 8+1+20)
		partial := EncodeStatus(StatusPartial)
		require.Equal(t, partial[:], got[:8])
		require.Equal(t, []byte{0b010}, got[8:9], "range 1 refused")
		require.Equal(t, append(bytes.Clone(remote[:10]), remote[100:110]...), got[9:])
	})
}

func FuzzDecodeSGTable(f *testing.F) {
	f.Add(AppendSGTable(nil, []Range{{0x1000, 10}, {0x2000, 20}}), uint64(30))
	f.Add([]byte{1, 2, 3}, uint64(1))
	f.Add(AppendSGTable(nil, []Range{{^uint64(0), 1}}), uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, size uint64) {
		rs, err := DecodeSGTable(b, size, nil)
		if err != nil {
			require.Nil(t, rs)
			return
		}
		var sum uint64
		for _, r := range rs {
			require.NotZero(t, r.Len)
			require.GreaterOrEqual(t, r.Addr+r.Len, r.Addr)
			sum += r.Len
		}
		require.Equal(t, size, sum)
		require.True(t, bytes.Equal(b, AppendSGTable(nil, rs)), "round trip")
	})
}

// The client writes a connection's next requests without waiting for the
// replies of the previous ones: a server that reads four requests before
// it answers any completes them (a client that waited would deadlock), and
// it sees Mooncake's framing, never the scatter-gather one, since its
// descriptor does not offer it.
func TestPipelined(t *testing.T) {
	testutil.ResourceCheck(t)
	const k = 4
	var mu sync.Mutex
	var opcodes []uint8
	f := startFake(t, func(c net.Conn) {
		for {
			for range k {
				var hb [HeaderSize]byte
				if _, err := io.ReadFull(c, hb[:]); err != nil {
					return
				}
				h := DecodeHeader(&hb)
				mu.Lock()
				opcodes = append(opcodes, h.Opcode)
				mu.Unlock()
				if _, err := io.ReadFull(c, make([]byte, h.Size)); err != nil {
					return
				}
			}
			ok := EncodeStatus(StatusOK)
			for range k {
				if _, err := c.Write(ok[:]); err != nil {
					return
				}
			}
		}
	})
	client := newTransport(t, Config{Lanes: 1})
	local := testutil.Mmap(t, 8*4096)
	var reqs []transport.Request
	for i := range 2 * k {
		reqs = append(reqs, write(local[i*4096:(i+1)*4096], 0x100000+uint64(i)*0x10000))
	}
	requireDone(t, transfer(t, client, f.peer(2), reqs...)...)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, opcodes, 2*k)
	for _, op := range opcodes {
		require.Equal(t, uint8(FlagV2|opWrite), op, "Mooncake's framing")
	}
}

// A peer that dies with a window of requests in flight fails every one of
// them, within the timeouts, and is reported unhealthy.
func TestPeerDiesMidWindow(t *testing.T) {
	testutil.ResourceCheck(t)
	f := startFake(t, func(c net.Conn) {
		for range 3 { // reads three requests' headers, answers none, dies
			var hb [HeaderSize]byte
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				return
			}
		}
	})
	client := newTransport(t, Config{Lanes: 1, StatusTimeout: 3 * time.Second, IOTimeout: 3 * time.Second})
	local := testutil.Mmap(t, 16*4096)
	var reqs []transport.Request
	for i := range 16 {
		reqs = append(reqs, read(local[i*4096:(i+1)*4096], 0x100000+uint64(i)*0x10000))
	}
	start := time.Now()
	for i, task := range transfer(t, client, f.peer(2), reqs...) {
		require.Equal(t, transport.Failed, task.Status(), "read %d", i)
		require.ErrorIs(t, task.Err(), ErrPeer, "read %d", i)
	}
	require.Less(t, time.Since(start), 5*time.Second)
	require.ErrorIs(t, client.PeerHealth("fake"), ErrPeer)
}

// Cancelling one Submit's ctx fails its requests at once, wherever they
// are (queued, in flight, waiting for a reply), while another Submit's
// requests on the same lane complete.
func TestCancelOneOfTwo(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<20)
	server := newTransport(t, Config{}, remote)
	stuck := stuckPeer(t)
	client := newTransport(t, Config{Lanes: 1})
	local := testutil.Mmap(t, 1<<20)

	ctx, cancel := context.WithCancel(context.Background())
	g := transport.NewGroup()
	tasks := make([]*transport.Task, 8)
	for i := range tasks {
		tasks[i] = new(transport.Task)
		tasks[i].Init(read(local[i*4096:(i+1)*4096], 0x100000), g)
	}
	g.Add(len(tasks))
	client.Submit(ctx, stuck.peer(2), tasks, transport.SubmitOptions{})
	time.Sleep(50 * time.Millisecond)
	cancel()
	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer wcancel()
	require.NoError(t, g.Wait(wctx), "a cancelled Submit finishes at once")
	for _, task := range tasks {
		require.ErrorIs(t, task.Err(), context.Canceled)
	}
	requireDone(t, transfer(t, client, peerOf(server, 2), write(local[:4096], addrOf(remote)))...)
}
