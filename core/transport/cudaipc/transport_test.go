package cudaipc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		off  bool
		err  bool
	}{
		{name: "default on", env: nil},
		{name: "cuda ipc off", env: map[string]string{"PYMOONCAKE_CUDA_IPC": "0"}, off: true},
		{name: "same host off", env: map[string]string{"PYMOONCAKE_SAME_HOST": "false"}, off: true},
		{name: "both on", env: map[string]string{"PYMOONCAKE_SAME_HOST": "1", "PYMOONCAKE_CUDA_IPC": "yes"}},
		{name: "malformed", env: map[string]string{"PYMOONCAKE_CUDA_IPC": "sometimes"}, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ConfigFromEnv(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if tc.err {
				require.ErrorIs(t, err, config.ErrInvalid)
				require.Contains(t, err.Error(), "PYMOONCAKE_CUDA_IPC")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.off, c.Off)
		})
	}
}

func TestAccept(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	tgt.alloc(0, 4096)
	ok := tgt.desc()
	require.NoError(t, ini.x.Accept(ok))

	edit := func(f func(p map[string]any)) *metadata.SegmentDesc {
		d := tgt.desc()
		var p map[string]any
		require.NoError(t, json.Unmarshal(d.Extra[Key], &p))
		f(p)
		b, err := json.Marshal(p)
		require.NoError(t, err)
		d.Extra[Key] = b
		return d
	}
	hostOnly := newSide(t, "host-only", 1, Config{})
	hostOnly.host(4096)
	mooncake := tgt.desc()
	delete(mooncake.Extra, Key)
	delete(mooncake.Extra, metadata.InstanceKey)
	tests := []struct {
		name string
		desc *metadata.SegmentDesc
	}{
		{name: "a Mooncake peer", desc: mooncake},
		{name: "the engine's own segment", desc: ini.desc()},
		{name: "another host", desc: edit(func(p map[string]any) { p["boot_id"] = "other-boot" })},
		{name: "another network namespace", desc: edit(func(p map[string]any) { p["net_ns"] = "net:[2]" })},
		{name: "this process", desc: edit(func(p map[string]any) { p["pid"] = ini.x.me.PID })},
		{name: "no GPU buffer", desc: hostOnly.desc()},
		{name: "a GPU this process does not see", desc: edit(func(p map[string]any) {
			p["gpus"] = []string{"GPU-00000000-0000-0000-0000-000000000009", "GPU-00000000-0000-0000-0000-000000000008"}
		})},
		{name: "another version", desc: edit(func(p map[string]any) { p["v"] = 2 })},
		{name: "a socket that is not an endpoint", desc: edit(func(p map[string]any) { p["socket"] = "@x11" })},
		{name: "malformed", desc: func() *metadata.SegmentDesc { d := tgt.desc(); d.Extra[Key] = json.RawMessage(`[1]`); return d }()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Error(t, ini.x.Accept(tc.desc))
		})
	}
	dead := newSide(t, "dead", 1, Config{Alive: func(int) bool { return false }})
	require.Error(t, dead.x.Accept(ok), "the peer's pid is gone")
}

// Writes and reads between every kind of memory, legacy and VMM, single
// and in batches; the peer's host memory goes to the fallback; each
// allocation is mapped once.
func TestTransfers(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const n = 64 << 10
	legacy, vmm := tgt.alloc(0, n), tgt.allocVMM(1, n, true)
	thost := tgt.host(n)
	ihost := ini.host(n)
	idev := ini.alloc(1, n)
	peer := tgt.peer()

	for _, remote := range []uintptr{legacy, vmm} {
		for _, sync := range []bool{true, false} {
			opts := transport.SubmitOptions{Sync: sync}
			want := pattern(n, byte(remote))
			copy(ihost, want)
			tasks := ini.run(peer, opts, transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: n})
			require.NoError(t, tasks[0].Err())
			require.Equal(t, uint64(n), tasks[0].Transferred())
			require.Equal(t, want, tgt.read(remote, n), "host → peer GPU")

			// Peer GPU → local GPU, in two halves (a batch), then back to
			// host memory through the peer, reversed.
			tasks = ini.run(peer, opts,
				transport.Request{Opcode: transport.Read, Local: idev + n/2, Remote: uint64(remote), Length: n / 2},
				transport.Request{Opcode: transport.Read, Local: idev, Remote: uint64(remote) + n/2, Length: n / 2},
				transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: 0},
			)
			for _, task := range tasks {
				require.NoError(t, task.Err())
			}
			got := ini.read(idev, n)
			require.Equal(t, want[:n/2], got[n/2:])
			require.Equal(t, want[n/2:], got[:n/2])
			clear(ihost)
			tasks = ini.run(peer, opts, transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(remote), Length: n})
			require.NoError(t, tasks[0].Err())
			require.Equal(t, want, ihost, "peer GPU → host")
		}
	}
	require.Empty(t, ini.fb.requests(), "GPU memory never went to the fallback")

	// The peer's host memory goes to the fallback, in a mixed batch.
	copy(ihost, pattern(n, 3))
	tasks := ini.run(peer, transport.SubmitOptions{},
		transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(addrOf(thost)), Length: n},
		transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(legacy), Length: n},
	)
	for _, task := range tasks {
		require.NoError(t, task.Err())
	}
	require.Equal(t, pattern(n, 3), thost)
	require.Equal(t, pattern(n, 3), tgt.read(legacy, n))
	require.Len(t, ini.fb.requests(), 1)
	require.Equal(t, uint64(addrOf(thost)), ini.fb.requests()[0].Remote)

	mappings, _, imports := ini.d.LiveIPC()
	require.Equal(t, 2, mappings, "one mapping per allocation, cached")
	require.Equal(t, 2, imports)
}

// What CUDA IPC does not carry goes to the fallback: ranges outside the
// peer's published GPU buffers, VMM memory the peer cannot export (asked
// once), everything while a stream is held. A stale descriptor's range is
// refused by the peer.
func TestRefusalsAndFallback(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const n = 4096
	dev := tgt.alloc(0, n)
	big, err := tgt.d.Alloc(0, 2*n)
	require.NoError(t, err)
	tgt.register(big, n) // the allocation is larger than the buffer
	private := tgt.allocVMM(1, n, false)
	ihost := ini.host(2 * n)
	copy(ihost, pattern(2*n, 9))
	peer := tgt.peer()
	sync := transport.SubmitOptions{Sync: true}
	write := func(remote uintptr, length int) transport.Request {
		return transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: uint64(length)}
	}

	// Inside the buffer: mapped; the rest of the allocation: not published.
	require.NoError(t, ini.run(peer, sync, write(big, n))[0].Err())
	require.Empty(t, ini.fb.requests())
	require.NoError(t, ini.run(peer, sync, write(big+n/2, n))[0].Err())
	require.Len(t, ini.fb.requests(), 1, "runs past the buffer: the fallback's (whose target refuses it)")

	// Not exportable: to the fallback, and the peer is asked only once.
	require.NoError(t, ini.run(peer, sync, write(private, n))[0].Err())
	require.NoError(t, ini.run(peer, sync, write(private, n))[0].Err())
	require.Len(t, ini.fb.requests(), 3)
	require.Equal(t, pattern(n, 9), tgt.read(private, n))
	ini.x.mu.Lock()
	p := ini.x.peers[tgt.name]
	ini.x.mu.Unlock()
	p.mu.Lock()
	require.True(t, p.noExport[uint64(private)])
	p.mu.Unlock()

	// A held stream: the fallback takes everything.
	require.NoError(t, ini.run(peer, transport.SubmitOptions{Sync: true, Held: true}, write(dev, n))[0].Err())
	require.Len(t, ini.fb.requests(), 4)

	// A stale descriptor: the buffer is gone; the peer refuses.
	require.NoError(t, tgt.unregister(dev))
	tasks := ini.run(peer, sync, write(dev, n))
	require.ErrorIs(t, tasks[0].Err(), transport.ErrRejected)
	require.Len(t, ini.fb.requests(), 4)

	// No fallback reaches the peer: what IPC cannot carry fails.
	ini.fb.refuse = true
	ini.x.ClosePeer(tgt.name)
	tasks = ini.run(tgt.peer(), sync, write(private, n))
	require.ErrorIs(t, tasks[0].Err(), ErrNoFallback)
}

// An unregistration on the target returns once every initiator dropped its
// mappings of the buffer; the next transfer to it is refused, and a new
// registration there is mapped afresh.
func TestUnregisterDropsMappings(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const n = 8192
	dev, vmm := tgt.alloc(0, n), tgt.allocVMM(0, n, true)
	ihost := ini.host(n)
	peer := tgt.peer()
	for _, remote := range []uintptr{dev, vmm} {
		require.NoError(t, ini.run(peer, transport.SubmitOptions{Sync: true},
			transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(remote), Length: n})[0].Err())
	}
	mappings, _, _ := ini.d.LiveIPC()
	require.Equal(t, 2, mappings)

	require.NoError(t, tgt.unregister(dev))
	mappings, _, _ = ini.d.LiveIPC()
	require.Equal(t, 1, mappings, "dropped before the unregistration returned")
	require.NoError(t, tgt.unregister(vmm))
	mappings, _, _ = ini.d.LiveIPC()
	require.Zero(t, mappings)

	tasks := ini.run(peer, transport.SubmitOptions{Sync: true},
		transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(dev), Length: n})
	require.ErrorIs(t, tasks[0].Err(), transport.ErrRejected)

	tgt.register(dev, n)
	copy(ihost, pattern(n, 1))
	require.NoError(t, ini.run(tgt.peer(), transport.SubmitOptions{Sync: true},
		transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(dev), Length: n})[0].Err())
	require.Equal(t, pattern(n, 1), tgt.read(dev, n))
	_, _, imports := ini.d.LiveIPC()
	require.Equal(t, 3, imports, "mapped afresh")
}

// A restarted peer (a new instance at the same name) gets new mappings; the
// old incarnation's are dropped. ClosePeer drops them too.
func TestRestartAndClosePeer(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const n = 4096
	dev := tgt.alloc(0, n)
	ihost := ini.host(n)
	read := func(peer transport.Peer) {
		t.Helper()
		require.NoError(t, ini.run(peer, transport.SubmitOptions{Sync: true},
			transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(dev), Length: n})[0].Err())
	}
	read(tgt.peer())

	tgt2 := newSide(t, "target", 2, Config{}) // the restarted process, same name
	ini.fb.drivers[tgt2.d] = true
	dev2 := tgt2.alloc(0, n)
	require.NoError(t, tgt2.d.Write(dev2, pattern(n, 5)))
	require.NoError(t, ini.run(tgt2.peer(), transport.SubmitOptions{Sync: true},
		transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(dev2), Length: n})[0].Err())
	require.Equal(t, pattern(n, 5), ihost)
	require.Eventually(t, func() bool { m, _, _ := ini.d.LiveIPC(); return m == 1 }, 5*time.Second, time.Millisecond,
		"the old incarnation's mapping is dropped")

	ini.x.ClosePeer("target")
	m, _, _ := ini.d.LiveIPC()
	require.Zero(t, m)
	ini.x.ClosePeer("target") // nothing left: no-op
}

// SubmitOnStream queues the copies on the caller's stream, in its order,
// with no gate; the mappings they use are not dropped before the stream
// has run them: an unregistration on the target waits for it.
func TestSubmitOnStream(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{DropTimeout: 5 * time.Second})
	ini.d.RefuseCallsWhileHeld(true)
	const n = 4096
	remote := tgt.allocVMM(0, n, true)
	thost := tgt.host(n)
	idev := ini.alloc(0, n)
	s, err := ini.d.NewStream(0)
	require.NoError(t, err)
	peer := tgt.peer()

	release := make(chan struct{})
	require.NoError(t, ini.d.Launch(s, func() {
		<-release
		_ = ini.d.Write(idev, pattern(n, 4)) // the kernel before
	}))
	require.NoError(t, ini.x.SubmitOnStream(peer, []transport.Request{
		{Opcode: transport.Write, Local: idev, Remote: uint64(remote), Length: n},
		{Opcode: transport.Write, Local: idev, Remote: uint64(remote), Length: 0},
	}, s, 0))
	seen := make(chan []byte, 1)
	require.NoError(t, ini.d.Launch(s, func() { seen <- tgt.read(remote, n) })) // the kernel after

	unregistered := make(chan error, 1)
	go func() { unregistered <- tgt.unregister(remote) }()
	select {
	case <-unregistered:
		t.Fatal("the unregistration returned while the stream had not run the copy")
	case <-time.After(50 * time.Millisecond):
	}
	require.Equal(t, 1, func() int { m, _, _ := ini.d.LiveIPC(); return m }(), "still mapped")
	close(release)
	require.Equal(t, pattern(n, 4), <-seen)
	require.NoError(t, <-unregistered)
	m, ev, _ := ini.d.LiveIPC()
	require.Zero(t, m)
	require.Zero(t, ev, "the event was released")
	_, _, gates := ini.d.Live()
	require.Zero(t, gates)

	// The peer's host memory cannot go on the stream: nothing is queued.
	err = ini.x.SubmitOnStream(peer, []transport.Request{{Opcode: transport.Write, Local: idev, Remote: uint64(addrOf(thost)), Length: n}}, s, 0)
	require.ErrorIs(t, err, transport.ErrNotOnStream)
	// A range the peer refuses.
	err = ini.x.SubmitOnStream(peer, []transport.Request{{Opcode: transport.Write, Local: idev, Remote: uint64(remote), Length: n}}, s, 0)
	require.ErrorIs(t, err, transport.ErrRejected)
}

// A drop waits at most DropTimeout for a stream that never runs the
// copies: the mapping then stays (unmapping would fault them) and the
// target's unregistration reports the peer that did not answer.
func TestDropTimesOut(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{DropTimeout: 100 * time.Millisecond})
	const n = 4096
	remote := tgt.alloc(0, n)
	idev := ini.alloc(0, n)
	s, err := ini.d.NewStream(0)
	require.NoError(t, err)
	release := make(chan struct{})
	require.NoError(t, ini.d.Launch(s, func() { <-release }))
	require.NoError(t, ini.x.SubmitOnStream(tgt.peer(), []transport.Request{{Opcode: transport.Read, Local: idev, Remote: uint64(remote), Length: n}}, s, 0))
	require.Error(t, tgt.unregister(remote))
	close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, ini.d.Synchronize(ctx, s))
	// The target disconnected us: the connection's loss drops the rest.
	require.Eventually(t, func() bool { m, _, _ := ini.d.LiveIPC(); return m == 0 }, 5*time.Second, time.Millisecond)
	require.ErrorIs(t, ini.x.PeerHealth(tgt.name), transport.ErrPeer)
	require.Equal(t, uint64(1), ini.x.PeerCloses(tgt.peer()))
}

// A target that goes away: the connection's loss drops the mappings,
// reports the peer unhealthy and counts a close, so that the engine fetches
// its descriptor again.
func TestTargetGone(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const n = 4096
	remote := tgt.alloc(0, n)
	ihost := ini.host(n)
	peer := tgt.peer()
	require.NoError(t, ini.run(peer, transport.SubmitOptions{Sync: true},
		transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(remote), Length: n})[0].Err())
	require.NoError(t, ini.x.PeerHealth(tgt.name))
	require.NoError(t, tgt.x.Close())
	require.Eventually(t, func() bool { m, _, _ := ini.d.LiveIPC(); return m == 0 }, 5*time.Second, time.Millisecond)
	require.ErrorIs(t, ini.x.PeerHealth(tgt.name), transport.ErrPeer)
	require.Equal(t, uint64(1), ini.x.PeerCloses(peer))
	tasks := ini.run(peer, transport.SubmitOptions{Sync: true},
		transport.Request{Opcode: transport.Read, Local: addrOf(ihost), Remote: uint64(remote), Length: n})
	require.ErrorIs(t, tasks[0].Err(), transport.ErrPeer)
}

// 100 cycles of mapping and dropping, of both kinds, leave no descriptor,
// goroutine or mapping behind.
func TestOpenCloseCycles(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const n = 4096
	legacy, vmm := tgt.alloc(0, n), tgt.allocVMM(1, n, true)
	ihost := ini.host(n)
	for i := range 100 {
		remote := legacy
		if i%2 == 1 {
			remote = vmm
		}
		copy(ihost, pattern(n, byte(i)))
		require.NoError(t, ini.run(tgt.peer(), transport.SubmitOptions{Sync: i%3 == 0},
			transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: n})[0].Err())
		require.Equal(t, pattern(n, byte(i)), tgt.read(remote, n))
		ini.x.ClosePeer(tgt.name)
	}
	m, ev, imports := ini.d.LiveIPC()
	require.Zero(t, m)
	require.Zero(t, ev)
	require.Equal(t, 100, imports)
}

func TestDecodeEndpoint(t *testing.T) {
	tgt := newSide(t, "target", 1, Config{})
	tgt.alloc(0, 4096)
	u, err := tgt.d.DeviceUUID(0)
	require.NoError(t, err)
	pi, err := decodeEndpoint(tgt.desc(), map[gpu.UUID]int{u: 3})
	require.NoError(t, err)
	require.Len(t, pi.spans, 1)
	require.Equal(t, 3, pi.spans[0].ord, "numbered as this process numbers that GPU")
	first, ok := pi.reachable(pi.spans[0].start+10, 100)
	require.True(t, ok)
	require.Equal(t, pi.spans[0].start, first)
	_, ok = pi.reachable(pi.spans[0].start+10, 4096)
	require.False(t, ok, "runs past the buffer")
	_, ok = pi.reachable(pi.spans[0].start-1, 2)
	require.False(t, ok)

	d := tgt.desc()
	d.Extra[Key] = json.RawMessage(`{"v":1,"socket":"@pymooncake-cudaipc-x","gpus":["GPU-00000000-0000-0000-0000-000000000001"],` +
		`"buffers":[[4096,4096,0],[8192,4096,0],[16384,4096,0]]}`)
	pi, err = decodeEndpoint(d, map[gpu.UUID]int{{15: 1}: 0})
	require.NoError(t, err)
	_, ok = pi.reachable(4096+100, 8000)
	require.True(t, ok, "touching buffers are one range")
	_, ok = pi.reachable(8192+100, 8000)
	require.False(t, ok, "a gap between buffers")
	for _, bad := range []string{
		`{"v":1,"socket":"@pymooncake-cudaipc-x","gpus":[],"buffers":[[4096,4096,0]]}`,
		`{"v":1,"socket":"@pymooncake-cudaipc-x","gpus":["GPU-00000000-0000-0000-0000-000000000001"],"buffers":[[4096,0,0]]}`,
		`{"v":1,"socket":"@pymooncake-cudaipc-x","gpus":["GPU-00000000-0000-0000-0000-000000000001"],"buffers":[[18446744073709551615,2,0]]}`,
		`{"v":1,"socket":"@pymooncake-cudaipc-x","gpus":["GPU-00000000-0000-0000-0000-000000000001"],"buffers":[[4096,4096,0],[4097,1,0]]}`,
		`{"v":1,"socket":"@pymooncake-cudaipc-x","gpus":["nvidia"],"buffers":[]}`,
	} {
		d.Extra[Key] = json.RawMessage(bad)
		_, err := decodeEndpoint(d, nil)
		require.Error(t, err, bad)
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	reply := openReply{id: 7, status: statusOK, kind: gpu.IPCVMM, base: 1 << 40, size: 2 << 20, grant: 1<<40 + 4096, grantLen: 4096,
		device: gpu.UUID{1, 2, 3}, legacy: [64]byte{9: 9}, text: "fine"}
	for _, m := range []any{openRequest{id: 1, addr: 2}, reply, dropRequest{seq: 3, addr: 4, length: 5}, dropReply{seq: 6}} {
		var b []byte
		switch m := m.(type) {
		case openRequest:
			b = m.encode()
		case openReply:
			b = m.encode()
		case dropRequest:
			b = m.encode()
		case dropReply:
			b = m.encode()
		}
		got, err := decode(b)
		require.NoError(t, err)
		require.Equal(t, m, got)
	}
	for _, bad := range [][]byte{nil, {msgOpen}, {99, 1, 2}, append(reply.encode(), 0), bytes.Repeat([]byte{msgOpened}, openedFixed)} {
		_, err := decode(bad)
		require.ErrorIs(t, err, errProtocol)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(openRequest{id: 1, addr: 2}.encode())
	f.Add(openReply{id: 3, kind: gpu.IPCLegacy, text: "x"}.encode())
	f.Add(dropRequest{seq: 1}.encode())
	f.Add(dropReply{seq: 1}.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			require.Nil(t, m)
			return
		}
		require.NotNil(t, m)
	})
}

func FuzzDecodeEndpoint(f *testing.F) {
	f.Add(`{"v":1,"socket":"@pymooncake-cudaipc-x","boot_id":"b","net_ns":"n","pid_ns":"p","pid":1,` +
		`"gpus":["GPU-00000000-0000-0000-0000-000000000001"],"buffers":[[4096,4096,0]]}`)
	f.Add(`{"v":1,"gpus":[1]}`)
	f.Fuzz(func(t *testing.T, s string) {
		d := &metadata.SegmentDesc{Extra: map[string]json.RawMessage{Key: json.RawMessage(s)}}
		pi, err := decodeEndpoint(d, map[gpu.UUID]int{{15: 1}: 0})
		if err != nil {
			require.Nil(t, pi)
			return
		}
		for _, sp := range pi.spans {
			require.Less(t, sp.start, sp.end)
		}
		pi.reachable(4096, 1)
	})
}

// A long batch is copied in groups, each queued while the one before is
// copied; a copy that fails fails its group (its copies are undefined),
// and its queue is not used again.
func TestGroupsOfCopies(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	const tasks, each = 3*batchTasks + 7, 1024
	remote := tgt.alloc(0, tasks*each)
	ihost := ini.host(tasks * each)
	copy(ihost, pattern(tasks*each, 2))
	peer := tgt.peer()
	reqs := make([]transport.Request, tasks)
	for i := range reqs {
		reqs[i] = transport.Request{Opcode: transport.Write, Local: addrOf(ihost) + uintptr(i*each), Remote: uint64(remote) + uint64(i*each), Length: each}
	}
	for _, task := range ini.run(peer, transport.SubmitOptions{}, reqs...) {
		require.NoError(t, task.Err())
	}
	require.Equal(t, pattern(tasks*each, 2), tgt.read(remote, tasks*each))

	ini.d.FailCopiesAfter(batchTasks + 3) // in the second group
	failed := 0
	for i, task := range ini.run(peer, transport.SubmitOptions{Sync: true}, reqs...) {
		if err := task.Err(); err != nil {
			// The failed group's, or the next one's, queued behind it on
			// the failed queue.
			require.True(t, errors.Is(err, fake.ErrInjected) || errors.Is(err, fake.ErrClosed), "%v", err)
			require.GreaterOrEqual(t, i, batchTasks, "the first group was copied")
			failed++
		}
	}
	ini.d.FailCopiesAfter(-1)
	require.Positive(t, failed)

	// The failed queues were destroyed: the next batch gets working ones.
	copy(ihost, pattern(tasks*each, 3))
	for _, task := range ini.run(peer, transport.SubmitOptions{}, reqs...) {
		require.NoError(t, task.Err())
	}
	require.Equal(t, pattern(tasks*each, 3), tgt.read(remote, tasks*each))
}

// slowOpen holds the initiator's OpenIPC calls until released: a stand-in
// for a driver that takes its time to map (it wraps the FAKE driver).
type slowOpen struct {
	gpu.IPC
	entered chan struct{}
	release chan struct{}
}

func (s *slowOpen) OpenIPC(h gpu.IPCHandle, ord int) (gpu.IPCMapping, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.IPC.OpenIPC(h, ord)
}

// TestUnregisterDuringOpen: the target unregisters a buffer while an
// initiator is mapping it (the grant came, the mapping is not in place
// yet). The unregistration returns at once (nothing is mapped to drop),
// and the mapping that then completes is not kept: the open is asked
// again, the target refuses it, and no byte reaches the unregistered
// buffer through CUDA IPC.
func TestUnregisterDuringOpen(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{})
	slow := &slowOpen{IPC: ini.x.ipc, entered: make(chan struct{}), release: make(chan struct{})}
	ini.x.ipc = slow
	const n = 8192
	for _, vmm := range []bool{false, true} {
		remote := tgt.alloc(0, n)
		if vmm {
			remote = tgt.allocVMM(0, n, true)
		}
		ihost := ini.host(n)
		copy(ihost, pattern(n, 7))
		peer := tgt.peer()
		done := make(chan []*transport.Task, 1)
		go func() {
			done <- ini.run(peer, transport.SubmitOptions{Sync: true},
				transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: n})
		}()
		<-slow.entered
		require.NoError(t, tgt.unregister(remote))
		close(slow.release)
		tasks := <-done
		require.ErrorIs(t, tasks[0].Err(), transport.ErrRejected, "vmm %v", vmm)
		require.Equal(t, make([]byte, n), tgt.read(remote, n), "vmm %v: bytes reached the unregistered buffer", vmm)
		mappings, _, _ := ini.d.LiveIPC()
		require.Zero(t, mappings, "vmm %v: the late mapping was kept", vmm)
		slow.release = make(chan struct{})
	}
}

// TestWedgedInitiatorDoesNotHoldUnregister: an initiator that asks for
// openings and reads none of the replies (stopped, wedged) blocks the
// target's reply once the socket is full, while the buffer is pinned for
// it. The target gives up on it after the open timeout, so that
// unregister_memory of that buffer returns soon after instead of waiting
// for the initiator.
func TestWedgedInitiatorDoesNotHoldUnregister(t *testing.T) {
	testutil.ResourceCheck(t)
	const timeout = 300 * time.Millisecond
	tgt := newSide(t, "target", 1, Config{OpenTimeout: timeout})
	const n = 8192
	dev := tgt.alloc(0, n)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: tgt.x.srv.ln.Addr().String(), Net: "unixpacket"})
	require.NoError(t, err)
	defer c.Close()
	// Ask until our own sends block: the target has stopped reading,
	// stuck in a reply we do not take.
	sent := 0
	for ; sent < 1_000_000; sent++ {
		require.NoError(t, c.SetWriteDeadline(time.Now().Add(100*time.Millisecond)))
		if _, err := c.Write(openRequest{id: uint64(sent + 1), addr: uint64(dev)}.encode()); err != nil {
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			break
		}
	}
	require.Greater(t, sent, 1, "the socket took some requests")
	start := time.Now()
	require.NoError(t, tgt.unregister(dev))
	require.Less(t, time.Since(start), timeout+2*time.Second, "unregister waited for the wedged initiator")
}
