//go:build linux

package hostmem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/hostid"
)

// pathOf is the path serving the peer called name ("" before its setup).
func (t *Transport) pathOf(name string) string {
	for _, p := range (*t.peers.Load())[name] {
		select {
		case <-p.ready:
			if p.setupErr != nil {
				return "error: " + p.setupErr.Error()
			}
			return pathName(p.path)
		default:
		}
	}
	return ""
}

func TestConfig(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"ring only", Config{Mode: RingOnly}, true},
		{"off is not a mode to run", Config{Mode: Off}, false},
		{"too many workers", Config{Workers: 65}, false},
		{"tiny chunk", Config{Chunk: 100}, false},
		{"ring not in whole slots", Config{RingBytes: 1 << 20, RingSlots: 3}, false},
		{"ring slots too small", Config{RingBytes: 1 << 20, RingSlots: 64}, false},
		{"ring too large", Config{RingBytes: 2 << 30, RingSlots: 8}, false},
		{"ring of 1 slot", Config{RingBytes: 1 << 20, RingSlots: 1}, true},
		{"regions", Config{Regions: MaxRegions + 1}, false},
		{"negative timeout", Config{IOTimeout: -1}, false},
		{"max conns", Config{MaxConns: 1}, true},
		{"negative max conns", Config{MaxConns: -1}, false},
		{"too many max conns", Config{MaxConns: MaxConnsLimit + 1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.cfg.withDefaults()
			if !c.ok {
				require.ErrorIs(t, err, ErrInvalidConfig)
				return
			}
			require.NoError(t, err)
			require.NotZero(t, got.Workers)
			require.NotZero(t, got.IOTimeout)
			require.NotZero(t, got.MaxConns)
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	for _, c := range []struct {
		value    string
		set      bool
		mode     Mode
		required bool
		bad      bool
	}{
		{set: false, mode: Auto},
		{value: "1", set: true, mode: Auto, required: true},
		{value: "auto", set: true, mode: Auto, required: true},
		{value: "cma", set: true, mode: CMAOnly, required: true},
		{value: "shm", set: true, mode: RingOnly, required: true},
		{value: " SHM ", set: true, mode: RingOnly, required: true},
		{value: "0", set: true, mode: Off},
		{value: "off", set: true, mode: Off},
		{value: "n", set: true, mode: Off},
		{value: "No", set: true, mode: Off},
		{value: "y", set: true, mode: Auto, required: true},
		{value: "TRUE", set: true, mode: Auto, required: true},
		{value: "tcp", set: true, bad: true},
		{value: "", set: true, bad: true},
	} {
		t.Run(fmt.Sprintf("%q/%v", c.value, c.set), func(t *testing.T) {
			cfg, err := ConfigFromEnv(func(k string) (string, bool) {
				if k != "PYMOONCAKE_SAME_HOST" {
					require.Equal(t, "PYMOONCAKE_SAME_HOST_MAX_CONNS", k)
					return "", false
				}
				return c.value, c.set
			})
			if c.bad {
				require.Error(t, err)
				require.Contains(t, err.Error(), "PYMOONCAKE_SAME_HOST")
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.mode, cfg.Mode)
			require.Equal(t, c.required, cfg.Required)
			// The in-process and CUDA IPC transports read "off" through
			// the config parser: the three agree.
			off := config.NewParser(func(string) (string, bool) { return c.value, c.set }).SameHostOff()
			require.Equal(t, c.mode == Off, off, "config.Parser.SameHostOff")
		})
	}
}

func TestConfigFromEnvMaxConns(t *testing.T) {
	for v, want := range map[string]int{"1": 1, " 64 ": 64, "1048576": MaxConnsLimit, "0": -1, "1048577": -1, "many": -1} {
		cfg, err := ConfigFromEnv(func(k string) (string, bool) {
			return v, k == "PYMOONCAKE_SAME_HOST_MAX_CONNS"
		})
		if want < 0 {
			require.ErrorContains(t, err, "PYMOONCAKE_SAME_HOST_MAX_CONNS", v)
			continue
		}
		require.NoError(t, err, v)
		require.Equal(t, want, cfg.MaxConns)
	}
}

func TestAccept(t *testing.T) {
	testutil.ResourceCheck(t)
	fb := &fakeFallback{}
	n := newNode(t, Config{Fallback: fb})
	good := n.desc("peer")
	edit := func(f func(d *metadata.SegmentDesc)) *metadata.SegmentDesc {
		d := good.Clone()
		f(d)
		return d
	}
	setID := func(f func(*hostid.Identity)) func(d *metadata.SegmentDesc) {
		return func(d *metadata.SegmentDesc) {
			id, err := hostid.Parse(d)
			require.NoError(t, err)
			f(&id)
			hostid.Publish(d, id)
		}
	}
	for _, c := range []struct {
		name string
		desc *metadata.SegmentDesc
		want error
	}{
		{"same host", good, nil},
		{"another process, pid namespace and user", edit(setID(func(id *hostid.Identity) { id.PID, id.PIDNS, id.UID = 1, 2, 3 })), nil},
		{"a Mooncake peer: no keys", edit(func(d *metadata.SegmentDesc) { d.Extra = nil }), hostid.ErrNoIdentity},
		{"another host", edit(setID(func(id *hostid.Identity) { id.BootID = "another" })), hostid.ErrElsewhere},
		{"another network namespace", edit(setID(func(id *hostid.Identity) { id.NetNS++ })), hostid.ErrElsewhere},
		{"malformed identity", edit(func(d *metadata.SegmentDesc) { d.Extra[hostid.Key] = json.RawMessage(`{"boot_id":1}`) }), hostid.ErrMalformed},
		{"no endpoint", edit(func(d *metadata.SegmentDesc) { delete(d.Extra, EndpointKey) }), errAny},
		{"another version", edit(func(d *metadata.SegmentDesc) {
			d.Extra[EndpointKey] = json.RawMessage(`{"version":2,"socket":"@pymooncake-hostmem-1-0"}`)
		}), errAny},
		{"a socket not ours", edit(func(d *metadata.SegmentDesc) {
			d.Extra[EndpointKey] = json.RawMessage(`{"version":1,"socket":"/run/docker.sock"}`)
		}), errAny},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := n.t.Accept(c.desc)
			switch c.want {
			case nil:
				require.NoError(t, err)
			case errAny:
				require.Error(t, err)
			default:
				require.ErrorIs(t, err, c.want)
			}
		})
	}
	fb.refuse = errors.New("the peer runs rdma")
	require.ErrorIs(t, n.t.Accept(good), fb.refuse, "a peer the fallback cannot serve is refused")
}

var errAny = errors.New("any error")

// TestInProcess moves data between two transports of this process (cross-
// memory attach to ourselves, or the ring), in every shape: sizes across
// the chunk and slot sizes, reads and writes, sync and async, scattered
// batches, zero-length tasks.
func TestInProcess(t *testing.T) {
	for _, mode := range []Mode{Auto, RingOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			testutil.ResourceCheck(t)
			const size = 8 << 20
			cfg := Config{Mode: mode, Chunk: 256 << 10, RingBytes: 1 << 20, RingSlots: 4}
			tgt, ini := newNode(t, Config{}), newNode(t, cfg)
			remote, local := testutil.Mmap(t, size), testutil.Mmap(t, size)
			tgt.register(t, remote, memory.Host)
			ini.register(t, local, memory.Host)
			pe := tgt.peer("target")
			want := map[Mode]string{Auto: "cma", RingOnly: "shm"}[mode]
			for _, n := range []int{1, 100, 4096, 256<<10 - 1, 256 << 10, 256<<10 + 1, 3 << 20, size} {
				for _, op := range []transport.Opcode{transport.Write, transport.Read} {
					for _, sync := range []bool{true, false} {
						src, dst := local, remote
						if op == transport.Read {
							src, dst = remote, local
						}
						fill(src[:n], uint64(n)*3+uint64(op))
						clear(dst[:n+min(1, size-n)])
						requireAllOK(t, run(t, ini.t, ctxT(t, 30*time.Second), pe,
							[]transport.Request{{Opcode: op, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: uint64(n)}}, sync))
						requireSame(t, src[:n], dst[:n], op, n, sync)
						if n < size {
							require.Zero(t, dst[n], "wrote past the end")
						}
					}
				}
			}
			require.Equal(t, want, ini.t.pathOf("target"))

			// A scattered batch: 2 KiB pages to random remote slots, and
			// zero-length tasks among them.
			r := rand.New(rand.NewPCG(1, 2))
			const page = 2048
			slots := r.Perm(size / page)[:1500]
			fill(local, 99)
			clear(remote)
			var reqs []transport.Request
			for i, s := range slots {
				reqs = append(reqs, transport.Request{Opcode: transport.Write, Local: addrOf(local) + uintptr(i*page),
					Remote: uint64(addrOf(remote)) + uint64(s*page), Length: page})
				if i%100 == 0 {
					reqs = append(reqs, transport.Request{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: 0})
				}
			}
			for _, sync := range []bool{true, false} {
				requireAllOK(t, run(t, ini.t, ctxT(t, 30*time.Second), pe, reqs, sync))
				for i, s := range slots {
					requireSame(t, local[i*page:(i+1)*page], remote[s*page:(s+1)*page], "page", i)
				}
			}
			// Read them back into another spot.
			var back []transport.Request
			for i, s := range slots {
				back = append(back, transport.Request{Opcode: transport.Read, Local: addrOf(local) + uintptr(size/2+i*page),
					Remote: uint64(addrOf(remote)) + uint64(s*page), Length: page})
			}
			requireAllOK(t, run(t, ini.t, ctxT(t, 30*time.Second), pe, back, false))
			requireSame(t, local[:len(slots)*page], local[size/2:size/2+len(slots)*page])
		})
	}
}

// TestRejections: a remote range outside the target's registrations fails
// its own task with ErrRejected, on both paths, and its neighbours in the
// batch complete.
func TestRejections(t *testing.T) {
	for _, mode := range []Mode{Auto, RingOnly} {
		t.Run(mode.String(), func(t *testing.T) {
			testutil.ResourceCheck(t)
			tgt, ini := newNode(t, Config{}), newNode(t, Config{Mode: mode})
			whole := testutil.Mmap(t, 3<<20)
			a, b := whole[:1<<20], whole[1<<20:2<<20] // two regions side by side
			tgt.register(t, a, memory.Host)
			tgt.register(t, b, memory.Host)
			local := testutil.Mmap(t, 1<<20)
			ini.register(t, local, memory.Host)
			fill(local, 5)
			base := uint64(addrOf(whole))
			for _, c := range []struct {
				name           string
				remote, length uint64
			}{
				{"before the regions", base - 4096, 4096},
				{"across both regions", base + 1<<20 - 8, 16},
				{"past the end", base + 2<<20 - 8, 16},
				{"unregistered memory", base + 2<<20 + 4096, 4096},
				{"wrapping", ^uint64(0) - 8, 16},
			} {
				for _, op := range []transport.Opcode{transport.Write, transport.Read} {
					t.Run(c.name+"/"+op.String(), func(t *testing.T) {
						good := transport.Request{Opcode: op, Local: addrOf(local), Remote: base + 4096, Length: 4096}
						errs := run(t, ini.t, ctxT(t, 10*time.Second), tgt.peer("target"),
							[]transport.Request{good, {Opcode: op, Local: addrOf(local), Remote: c.remote, Length: c.length}, good}, true)
						require.NoError(t, errs[0])
						require.ErrorIs(t, errs[1], ErrRejected)
						require.NotErrorIs(t, errs[1], ErrPeer)
						var pe *PeerError
						require.ErrorAs(t, errs[1], &pe)
						require.Equal(t, "target", pe.Peer)
						require.NoError(t, errs[2])
					})
				}
			}
			require.Zero(t, whole[2<<20+4096], "nothing landed outside the regions")
			require.NoError(t, ini.t.PeerHealth("target"), "a rejection is not the peer's failure")
		})
	}
}

// TestGPUMemoryGoesToTheFallback: a task whose local or remote range is GPU
// memory is handed to the fallback, whole; host tasks of the same batch are
// not.
func TestGPUMemoryGoesToTheFallback(t *testing.T) {
	testutil.ResourceCheck(t)
	fb := &fakeFallback{}
	tgt, ini := newNode(t, Config{}), newNode(t, Config{Fallback: fb})
	hostR, gpuR := testutil.Mmap(t, 1<<20), testutil.Mmap(t, 1<<20)
	tgt.register(t, hostR, memory.Host)
	tgt.register(t, gpuR, 0) // stands for cuda:0 memory
	hostL, gpuL := testutil.Mmap(t, 1<<20), testutil.Mmap(t, 1<<20)
	ini.register(t, hostL, memory.Host)
	ini.register(t, gpuL, 1)
	fill(hostL, 1)
	reqs := []transport.Request{
		{Opcode: transport.Write, Local: addrOf(hostL), Remote: uint64(addrOf(hostR)), Length: 4096},
		{Opcode: transport.Write, Local: addrOf(gpuL), Remote: uint64(addrOf(hostR)) + 4096, Length: 4096},
		{Opcode: transport.Read, Local: addrOf(hostL), Remote: uint64(addrOf(gpuR)), Length: 4096},
		{Opcode: transport.Write, Local: addrOf(hostL) + 8192, Remote: uint64(addrOf(hostR)) + 8192, Length: 4096},
	}
	requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), tgt.peer("target"), reqs, true))
	require.Equal(t, []transport.Request{reqs[1], reqs[2]}, fb.got())
	requireSame(t, hostL[:4096], hostR[:4096])
	requireSame(t, hostL[8192:12288], hostR[8192:12288])
	require.Zero(t, hostR[4096], "the GPU task did not go through cross-memory attach")

	// Without a fallback they fail with ErrNoPath.
	lone := newNode(t, Config{})
	gpu2 := testutil.Mmap(t, 1<<20)
	lone.register(t, gpu2, 0)
	errs := run(t, lone.t, ctxT(t, 10*time.Second), tgt.peer("target"),
		[]transport.Request{{Opcode: transport.Write, Local: addrOf(gpu2), Remote: uint64(addrOf(hostR)), Length: 4096}}, true)
	require.ErrorIs(t, errs[0], ErrNoPath)
}

// TestSmallSyncCallsSkipTheRing: over the ring, a synchronous call of less
// than ringMinSync bytes goes to the fallback (TCP answers it sooner);
// larger ones and asynchronous ones take the ring. Without a fallback the
// ring takes them all.
func TestSmallSyncCallsSkipTheRing(t *testing.T) {
	testutil.ResourceCheck(t)
	fb := &fakeFallback{}
	tgt, ini := newNode(t, Config{}), newNode(t, Config{Mode: RingOnly, Fallback: fb})
	remote, local := testutil.Mmap(t, 4<<20), testutil.Mmap(t, 4<<20)
	tgt.register(t, remote, memory.Host)
	ini.register(t, local, memory.Host)
	pe := tgt.peer("target")
	fill(local, 9)
	small := []transport.Request{
		{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: 4096},
		{Opcode: transport.Write, Local: addrOf(local) + 8192, Remote: uint64(addrOf(remote)) + 8192, Length: ringMinSync - 4097},
	}
	requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), pe, small, true))
	require.Equal(t, small, fb.got(), "a small synchronous call goes to the fallback")
	require.Equal(t, "shm", ini.t.pathOf("target"))
	require.Zero(t, remote[0], "the FAKE fallback copies nothing")

	for _, c := range []struct {
		name string
		reqs []transport.Request
		sync bool
	}{
		{"large sync", []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: ringMinSync}}, true},
		{"small async", []transport.Request{{Opcode: transport.Write, Local: addrOf(local) + 1<<20, Remote: uint64(addrOf(remote)) + 1<<20, Length: 4096}}, false},
	} {
		requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), pe, c.reqs, c.sync))
		r := c.reqs[0]
		off := int(r.Local - addrOf(local))
		requireSame(t, local[off:off+int(r.Length)], remote[off:off+int(r.Length)], c.name)
	}
	require.Len(t, fb.got(), len(small), "nothing more went to the fallback")

	lone := newNode(t, Config{Mode: RingOnly})
	lone.register(t, local, memory.Host)
	fill(local, 10)
	requireAllOK(t, run(t, lone.t, ctxT(t, 10*time.Second), pe, small[:1], true))
	requireSame(t, local[:4096], remote[:4096], "without a fallback the ring serves it")
}

// TestFaultingRangeFailsAlone: a registered range the target made
// inaccessible without unregistering it (an application's bug) makes the
// kernel fault;
// over cross-memory attach only the tasks into it fail (ErrCopy), their
// neighbours in the same system call complete, and the peer stays healthy.
func TestFaultingRangeFailsAlone(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt, ini := newNode(t, Config{}), newNode(t, Config{})
	remote := testutil.Mmap(t, 1<<20)
	tgt.register(t, remote, memory.Host)
	local := testutil.Mmap(t, 1<<20)
	ini.register(t, local, memory.Host)
	fill(local, 6)
	// The second half becomes inaccessible, as if unmapped (an unmapped
	// hole could be reused by the next mapping of this process).
	require.NoError(t, syscall.Mprotect(remote[512<<10:], syscall.PROT_NONE))
	base := uint64(addrOf(remote))
	var reqs []transport.Request
	for i := range 16 {
		// Every fourth page lies in the unmapped half.
		off := uint64(i) * 4096
		if i%4 == 3 {
			off += 512 << 10
		}
		reqs = append(reqs, transport.Request{Opcode: transport.Write, Local: addrOf(local) + uintptr(i*4096), Remote: base + off, Length: 4096})
	}
	errs := run(t, ini.t, ctxT(t, 10*time.Second), tgt.peer("target"), reqs, true)
	for i, err := range errs {
		if i%4 == 3 {
			require.ErrorIs(t, err, ErrCopy, "task %d", i)
			require.NotErrorIs(t, err, ErrPeer)
			continue
		}
		require.NoError(t, err, "task %d", i)
		requireSame(t, local[i*4096:(i+1)*4096], remote[i*4096:(i+1)*4096])
	}
	require.NoError(t, ini.t.PeerHealth("target"))
}

// TestSetupFailureIsReportedBeforeTheCallReturns: a synchronous call that
// failed because the peer's control socket is gone is followed at once by
// PeerHealth saying so. The failure used to be recorded after the waiters
// woke, and a caller that read PeerHealth (or retried) right away could
// see the peer healthy, or see its later success undone by the late record.
func TestSetupFailureIsReportedBeforeTheCallReturns(t *testing.T) {
	testutil.ResourceCheck(t)
	ini, pe, w := closedPeer(t, Config{}, "gone")
	for i := 0; i < 200; i++ {
		errs := run(t, ini.t, ctxT(t, 5*time.Second), pe, w, true)
		require.ErrorIs(t, errs[0], ErrPeer)
		require.ErrorIs(t, ini.t.PeerHealth(pe.Name), ErrPeer, "round %d", i)
		ini.t.ClosePeer(pe.Name) // forgets the record; the next call dials afresh
		require.NoError(t, ini.t.PeerHealth(pe.Name))
	}
}

// TestConnectionLimit: the control socket serves Config.MaxConns
// initiators; the next one is told the target is busy and reaches it
// through its fallback, a flood of silent connections holds at most
// maxRefusing goroutines, and a freed slot is served again.
func TestConnectionLimit(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt := newNode(t, Config{MaxConns: 1, DialTimeout: 500 * time.Millisecond})
	remote := testutil.Mmap(t, 1<<20)
	tgt.register(t, remote, memory.Host)
	pe := tgt.peer("target")
	write := func(ini *node, local []byte) []error {
		return run(t, ini.t, ctxT(t, 10*time.Second), pe,
			[]transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: 4096}}, true)
	}

	first := newNode(t, Config{})
	local := testutil.Mmap(t, 4096)
	first.register(t, local, memory.Host)
	fill(local, 1)
	requireAllOK(t, write(first, local))
	require.Equal(t, "cma", first.t.pathOf("target"))
	requireSame(t, local, remote[:4096])

	fb := &fakeFallback{}
	second := newNode(t, Config{Fallback: fb})
	second.register(t, local, memory.Host)
	requireAllOK(t, write(second, local))
	require.Equal(t, "fallback", second.t.pathOf("target"), "the busy target is reached through the fallback")
	require.Len(t, fb.got(), 1)
	require.NoError(t, second.t.PeerHealth("target"), "a busy target is not a failed peer")

	// Silent connections beyond the limit: the server answers at most
	// maxRefusing of them at a time and closes the rest.
	ep, err := parseEndpoint(pe.Desc)
	require.NoError(t, err)
	var flood []net.Conn
	for range 4 * maxRefusing {
		c, err := net.Dial("unixpacket", ep.Socket)
		require.NoError(t, err)
		flood = append(flood, c)
	}
	require.Eventually(t, func() bool {
		tgt.t.srv.mu.Lock()
		defer tgt.t.srv.mu.Unlock()
		return tgt.t.srv.refusing == maxRefusing
	}, 5*time.Second, 5*time.Millisecond)
	for _, c := range flood {
		c.Close()
	}
	require.Eventually(t, func() bool {
		tgt.t.srv.mu.Lock()
		defer tgt.t.srv.mu.Unlock()
		return tgt.t.srv.refusing == 0
	}, 5*time.Second, 5*time.Millisecond, "the busy answers end with their connections")

	// The busy answer holds for refusedRetry; then the initiator asks
	// again (made due here), and gets the slot once the first lets it go.
	first.t.ClosePeer("target")
	require.Eventually(t, func() bool {
		tgt.t.srv.mu.Lock()
		defer tgt.t.srv.mu.Unlock()
		return len(tgt.t.srv.conns) == 0
	}, 5*time.Second, 5*time.Millisecond, "the target saw the first lease end")
	for _, p := range (*second.t.peers.Load())["target"] {
		p.retryAt.Store(time.Now().UnixNano())
	}
	require.Eventually(t, func() bool {
		errs := write(second, local)
		return errs[0] == nil && second.t.pathOf("target") == "cma"
	}, 5*time.Second, 20*time.Millisecond, "asked again after the busy answer")
	second.t.ClosePeer("target")

	// The first initiator lets its slot go; a new one gets it once the
	// target has seen the lease end.
	third := newNode(t, Config{Fallback: &fakeFallback{}})
	third.register(t, local, memory.Host)
	fill(local, 3)
	require.Eventually(t, func() bool {
		third.t.ClosePeer("target")
		errs := write(third, local)
		return errs[0] == nil && third.t.pathOf("target") == "cma"
	}, 5*time.Second, 20*time.Millisecond)
	requireSame(t, local, remote[:4096])
}

// TestCloseDuringSetupIsNoFailure: a peer closed here while its setup
// waits (the target accepted and answers nothing) is not reported failed:
// the user closed it.
func TestCloseDuringSetupIsNoFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	ini, pe, w := closedPeer(t, Config{DialTimeout: 5 * time.Second}, "silent")
	ep, err := parseEndpoint(pe.Desc)
	require.NoError(t, err)
	// A stand-in target that accepts and never answers.
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: ep.Socket, Net: "unixpacket"})
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	g := transport.NewGroup()
	task := &transport.Task{}
	task.Init(w[0], g)
	g.Add(1)
	ini.t.Submit(context.Background(), pe, []*transport.Task{task}, transport.SubmitOptions{})
	c := <-accepted
	t.Cleanup(func() { c.Close() })
	ini.t.ClosePeer(pe.Name)
	require.NoError(t, g.Wait(ctxT(t, 5*time.Second)))
	require.ErrorIs(t, task.Err(), ErrClosed)
	require.Never(t, func() bool { return ini.t.PeerHealth(pe.Name) != nil }, 300*time.Millisecond, 10*time.Millisecond,
		"closing a peer is not its failure")
}

// closedPeer is an initiator built from cfg and the peer called name whose
// transport has closed (its control socket is free), with a 4 KiB write
// from the initiator's registered memory to the peer's.
func closedPeer(t *testing.T, cfg Config, name string) (*node, transport.Peer, []transport.Request) {
	t.Helper()
	ini := newNode(t, cfg)
	local := testutil.Mmap(t, 4096)
	ini.register(t, local, memory.Host)
	gone := newNode(t, Config{})
	remote := testutil.Mmap(t, 4096)
	gone.register(t, remote, memory.Host)
	pe := gone.peer(name)
	require.NoError(t, gone.t.Close())
	return ini, pe, []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: 4096}}
}
