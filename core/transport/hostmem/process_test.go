//go:build linux

package hostmem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/transport"
)

// pattern is what a fresh target's buffer holds at offset i.
func pattern(i int) byte { return byte(i * 7) }

// TestTwoProcesses moves data to and from a target process over each path
// (cross-memory attach; the ring, with cross-memory attach turned off),
// checks it on both sides, and checks that ranges outside the target's
// registration are rejected there.
func TestTwoProcesses(t *testing.T) {
	for _, c := range []struct {
		mode Mode
		path string
	}{{Auto, "cma"}, {RingOnly, "shm"}} {
		t.Run(c.path, func(t *testing.T) {
			testutil.ResourceCheck(t)
			tg := startTarget(t, nil, nil)
			ini := newNode(t, Config{Mode: c.mode})
			const size = 64 << 20
			local := testutil.Mmap(t, size)
			ini.register(t, local, memory.Host)
			pe := tg.peer()
			base := tg.hello.Addr
			ctx := ctxT(t, 30*time.Second)

			// Read the whole buffer: the target's pattern arrives.
			requireAllOK(t, run(t, ini.t, ctx, pe, []transport.Request{{Opcode: transport.Read, Local: addrOf(local), Remote: base, Length: size}}, true))
			for _, i := range []int{0, 1, 4095, 1 << 20, size - 1} {
				require.Equal(t, pattern(i), local[i], "byte %d", i)
			}
			require.Equal(t, ini.t.pathOf(pe.Name), c.path)

			// Write it all, then a scattered batch of 4 KiB pages.
			fill(local, 11)
			requireAllOK(t, run(t, ini.t, ctx, pe, []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: base, Length: size}}, false))
			require.Equal(t, strconv.FormatUint(checksum(local), 10), tg.sum(t, 0, size))
			r := rand.New(rand.NewPCG(3, 4))
			const page = 4096
			slots := r.Perm(size / page)[:2000]
			fill(local[:len(slots)*page], 12)
			var reqs []transport.Request
			want := make([]byte, size)
			copy(want, local) // what the target holds now, before the pages
			fill(want[:0], 0)
			for i, s := range slots {
				reqs = append(reqs, transport.Request{Opcode: transport.Write, Local: addrOf(local) + uintptr(i*page), Remote: base + uint64(s*page), Length: page})
			}
			requireAllOK(t, run(t, ini.t, ctx, pe, reqs, true))
			// Read the pages back to the upper half, one batch.
			for i := range reqs {
				reqs[i].Opcode, reqs[i].Local = transport.Read, addrOf(local)+uintptr(size/2+i*page)
			}
			requireAllOK(t, run(t, ini.t, ctx, pe, reqs, false))
			requireSame(t, local[:len(slots)*page], local[size/2:size/2+len(slots)*page])

			// Outside the registration: rejected by the target's table (or
			// its server), the batch's other tasks done.
			errs := run(t, ini.t, ctx, pe, []transport.Request{
				{Opcode: transport.Write, Local: addrOf(local), Remote: base + size - 100, Length: 200},
				{Opcode: transport.Read, Local: addrOf(local), Remote: base - 4096, Length: 4096},
				{Opcode: transport.Read, Local: addrOf(local), Remote: base, Length: 4096},
			}, true)
			require.ErrorIs(t, errs[0], ErrRejected)
			require.ErrorIs(t, errs[1], ErrRejected)
			require.NoError(t, errs[2])
			require.NoError(t, ini.t.PeerHealth(pe.Name))
		})
	}
}

// TestRingWhenCMAIsRefused lets the kernel refuse cross-memory attach for
// real: the target is not dumpable, and the initiator runs in a user
// namespace of its own, so it holds no CAP_SYS_PTRACE over the target.
// Auto then serves the peer over the ring; CMAOnly hands its tasks to the
// fallback. Skipped only where user namespaces cannot be created.
func TestRingWhenCMAIsRefused(t *testing.T) {
	testutil.ResourceCheck(t)
	tg := startTarget(t, []string{"PYMOONCAKE_HOSTMEM_TEST_NODUMP=1", "PYMOONCAKE_HOSTMEM_TEST_DIAL_MS=200"}, nil)
	raw, err := tg.desc.Marshal(false)
	require.NoError(t, err)
	want := make([]byte, 1<<20)
	fill(want, 42)
	for _, c := range []struct{ mode, path string }{{"auto", "shm"}, {"cma", "fallback"}} {
		t.Run(c.mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), roleEnv+"=initiator", "PYMOONCAKE_HOSTMEM_TEST_DESC="+string(raw), "PYMOONCAKE_HOSTMEM_TEST_MODE="+c.mode)
			cmd.SysProcAttr = &syscall.SysProcAttr{
				Cloneflags:  syscall.CLONE_NEWUSER,
				UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
				GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
			}
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EACCES) {
				t.Skipf("no user namespace here: %v", err)
			}
			require.NoError(t, err, string(out))
			var rep initiatorReport
			require.NoError(t, json.Unmarshal(out, &rep), string(out))
			require.Equal(t, c.path, rep.Path)
			require.Empty(t, rep.Errors)
			require.True(t, rep.Healthy, "the path holds past the target's handshake deadline")
			if c.path == "shm" {
				require.True(t, rep.Same)
				require.Equal(t, strconv.FormatUint(checksum(want), 10), tg.sum(t, 0, len(want)))
				require.Zero(t, rep.Fallback)
			} else {
				require.Equal(t, 3, rep.Fallback, "every task went to the fallback")
			}
		})
	}
}

// TestKilledPeer kills the target in the middle of a large batch: every
// task finishes at once, those that did not complete with ErrPeer; the
// peer's health says so; a later call to the dead peer fails fast; a new
// target process is served.
func TestKilledPeer(t *testing.T) {
	for _, c := range []struct {
		mode Mode
		path string
	}{{Auto, "cma"}, {RingOnly, "shm"}} {
		t.Run(c.path, func(t *testing.T) {
			testutil.ResourceCheck(t)
			tg := startTarget(t, nil, nil)
			ini := newNode(t, Config{Mode: c.mode})
			local := testutil.Mmap(t, 64<<20)
			ini.register(t, local, memory.Host)
			pe := tg.peer()
			requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), pe, []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: tg.hello.Addr, Length: 4096}}, true))
			closes := ini.t.PeerCloses(pe)

			g := transport.NewGroup()
			tasks := make([]*transport.Task, 256)
			for i := range tasks {
				tasks[i] = &transport.Task{}
				tasks[i].Init(transport.Request{Opcode: transport.Write, Local: addrOf(local), Remote: tg.hello.Addr, Length: 64 << 20}, g)
			}
			g.Add(len(tasks))
			ini.t.Submit(context.Background(), pe, tasks, transport.SubmitOptions{})
			time.Sleep(50 * time.Millisecond)
			require.NotZero(t, g.Pending(), "the batch ended before the kill; make it larger")
			require.NoError(t, tg.cmd.Process.Kill())
			killed := time.Now()
			require.NoError(t, g.Wait(ctxT(t, 10*time.Second)))
			require.Less(t, time.Since(killed), 3*time.Second)
			require.NotZero(t, g.Failed())
			for _, task := range tasks {
				if err := task.Err(); err != nil {
					require.ErrorIs(t, err, ErrPeer, "task error %v", err)
				}
			}
			tg.cmd.Wait()
			require.Eventually(t, func() bool { return errors.Is(ini.t.PeerHealth(pe.Name), ErrPeer) }, 5*time.Second, 10*time.Millisecond)
			require.Greater(t, ini.t.PeerCloses(pe), closes)
			start := time.Now()
			errs := run(t, ini.t, ctxT(t, 10*time.Second), pe, []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: tg.hello.Addr, Length: 4096}}, true)
			require.ErrorIs(t, errs[0], ErrPeer)
			require.Less(t, time.Since(start), 2*time.Second)

			// The peer restarts (a new process, a new descriptor).
			tg2 := startTarget(t, nil, nil)
			requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), tg2.peer(), []transport.Request{{Opcode: transport.Read, Local: addrOf(local), Remote: tg2.hello.Addr, Length: 1 << 20}}, true))
			require.Equal(t, pattern(12345), local[12345])
			require.NoError(t, ini.t.PeerHealth(pe.Name), "a success after the failure clears it")
		})
	}
}

// TestStoppedPeer stops the target (SIGSTOP). Cross-memory attach needs
// nothing of the target's threads: writes land while it is stopped, as
// RDMA writes would. The ring needs its server: calls fail when their
// context ends, the connection is failed once nothing came back for
// IOTimeout, and after SIGCONT calls succeed again.
func TestStoppedPeer(t *testing.T) {
	for _, c := range []struct {
		mode Mode
		path string
	}{{Auto, "cma"}, {RingOnly, "shm"}} {
		t.Run(c.path, func(t *testing.T) {
			testutil.ResourceCheck(t)
			tg := startTarget(t, nil, nil)
			ini := newNode(t, Config{Mode: c.mode, IOTimeout: 2 * time.Second})
			local := testutil.Mmap(t, 16<<20)
			ini.register(t, local, memory.Host)
			pe := tg.peer()
			w := []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: tg.hello.Addr, Length: 16 << 20}}
			requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), pe, w, true))
			tg.stop(t)
			fill(local, 8)
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			errs := run(t, ini.t, ctx, pe, w, true)
			cancel()
			took := time.Since(start)
			if c.path == "cma" {
				require.NoError(t, errs[0])
				require.Less(t, took, time.Second)
			} else {
				require.ErrorIs(t, errs[0], context.DeadlineExceeded)
				require.Less(t, took, 2*time.Second)
				require.Eventually(t, func() bool { return errors.Is(ini.t.PeerHealth(pe.Name), ErrPeer) }, 5*time.Second, 20*time.Millisecond,
					"no reply for IOTimeout fails the connection")
			}
			require.NoError(t, tg.cmd.Process.Signal(syscall.SIGCONT))
			fill(local, 9)
			requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), pe, w, true))
			require.Equal(t, strconv.FormatUint(checksum(local), 10), tg.sum(t, 0, 16<<20))
		})
	}
}

// TestUnregisterRace unregisters the target's buffer while a large batch
// writes into it: unregister returns only once no copy is in flight, and
// nothing lands after it returns (the target overwrites the buffer with a
// canary at once and finds it intact 300 ms later). Every task either
// completed before, or was rejected.
func TestUnregisterRace(t *testing.T) {
	for _, c := range []struct {
		mode Mode
		path string
	}{{Auto, "cma"}, {RingOnly, "shm"}} {
		t.Run(c.path, func(t *testing.T) {
			testutil.ResourceCheck(t)
			tg := startTarget(t, nil, nil)
			// Big chunks: a copy in flight lasts milliseconds.
			ini := newNode(t, Config{Mode: c.mode, Chunk: 32 << 20})
			local := testutil.Mmap(t, 64<<20)
			fill(local, 3)
			ini.register(t, local, memory.Host)
			pe := tg.peer()
			requireAllOK(t, run(t, ini.t, ctxT(t, 10*time.Second), pe, []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: tg.hello.Addr, Length: 4096}}, true))
			g := transport.NewGroup()
			tasks := make([]*transport.Task, 200)
			for i := range tasks {
				tasks[i] = &transport.Task{}
				tasks[i].Init(transport.Request{Opcode: transport.Write, Local: addrOf(local), Remote: tg.hello.Addr, Length: 64 << 20}, g)
			}
			g.Add(len(tasks))
			ini.t.Submit(context.Background(), pe, tasks, transport.SubmitOptions{})
			time.Sleep(30 * time.Millisecond)
			require.NotZero(t, g.Pending(), "the batch ended before the unregister; make it larger")
			f := strings.Fields(tg.ask(t, "unreg-canary"))
			require.Equal(t, "true", f[0], "unregister succeeded")
			require.Equal(t, "true", f[2], "nothing landed after unregister returned")
			require.NoError(t, g.Wait(ctxT(t, 30*time.Second)))
			rejected := 0
			for _, task := range tasks {
				if err := task.Err(); err != nil {
					require.ErrorIs(t, err, ErrRejected)
					rejected++
				}
			}
			require.NotZero(t, rejected, "some tasks came after the unregister")
			t.Logf("unregister took %s µs; %d of %d tasks rejected", f[1], rejected, len(tasks))
		})
	}
}

// mappings counts this process's mappings of the transport's shared
// memory.
func mappings(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/maps")
	require.NoError(t, err)
	return strings.Count(string(b), "pymooncake-hostmem")
}

// TestNoLeaksOver100Cycles opens and closes 100 targets against one
// initiator, on both paths, half of them closed by the initiator
// (ClosePeer) and half by the target (Close, as a process exit): no
// goroutine, descriptor or mapping is left.
func TestNoLeaksOver100Cycles(t *testing.T) {
	testutil.ResourceCheck(t)
	before := mappings(t)
	ini := newNode(t, Config{})
	ring := newNode(t, Config{Mode: RingOnly})
	local := testutil.Mmap(t, 1<<20)
	ini.register(t, local, memory.Host)
	ring.register(t, local[:1<<19], memory.Host)
	withInitiators := mappings(t)
	for i := range 100 {
		mem := memory.New()
		tgt, err := New(Config{}, mem)
		require.NoError(t, err)
		n := &node{t: tgt, mem: mem}
		remote := testutil.Mmap(t, 1<<20)
		n.register(t, remote, memory.Host)
		name := fmt.Sprintf("target-%d", i)
		pe := n.peer(name)
		for _, x := range []*node{ini, ring} {
			fill(local[:4096], uint64(i))
			requireAllOK(t, run(t, x.t, ctxT(t, 10*time.Second), pe, []transport.Request{{Opcode: transport.Write, Local: addrOf(local), Remote: uint64(addrOf(remote)), Length: 4096}}, i%2 == 0))
			requireSame(t, local[:4096], remote[:4096])
		}
		if i%2 == 0 {
			ini.t.ClosePeer(name)
			ring.t.ClosePeer(name)
		}
		require.NoError(t, tgt.Close())
	}
	require.Eventually(t, func() bool { return mappings(t) == withInitiators }, 5*time.Second, 20*time.Millisecond,
		"mappings: %d with the initiators alone, %d now", withInitiators, mappings(t))
	for _, x := range []*node{ini, ring} {
		require.Eventually(t, func() bool { return len(*x.t.peers.Load()) == 0 }, 5*time.Second, 20*time.Millisecond, "dead peers are forgotten")
	}
	require.NoError(t, ini.t.Close())
	require.NoError(t, ring.t.Close())
	require.Equal(t, before, mappings(t))
}
