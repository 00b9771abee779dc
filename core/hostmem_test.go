package core

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// The engine-level tests of the same-host transport (hostmem): which
// transport and path the root builds and the engine picks for each
// PYMOONCAKE_SAME_HOST, data through each, GPU memory through the fallback,
// target processes killed and restarted under their name.

// observed is a logger that feeds both the test's log and an observer.
func observed(tb testing.TB) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(testLogger(tb).Core(), core)), logs
}

// chosen returns the transport the engine logged for peer, and the path
// hostmem logged ("" where none was logged).
func chosen(logs *observer.ObservedLogs, peer string) (xport, path string) {
	for _, e := range logs.All() {
		f := e.ContextMap()
		if f["peer"] != peer {
			continue
		}
		switch e.Message {
		case "transport chosen for peer":
			xport, _ = f["transport"].(string)
		case "same-host path chosen":
			path, _ = f["path"].(string)
		}
	}
	return xport, path
}

func startEngine(tb testing.TB, env map[string]string, log *zap.Logger, d gpu.Driver) *engine.Engine {
	tb.Helper()
	cfg := configOf(tb, env)
	if log != nil {
		cfg.Logger = log
	}
	if d != nil {
		cfg.GPU, cfg.NoGPU, cfg.Staging = d, false, gpu.StagingConfig{Chunk: 256 << 10}
	}
	e, err := New(context.Background(), cfg)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, e.Close()) })
	return e
}

// TestSameHostPaths: two engines of this process, for each
// PYMOONCAKE_SAME_HOST, pick the transport and path it says and move a
// scattered batch both ways, every byte checked.
func TestSameHostPaths(t *testing.T) {
	for _, c := range []struct{ value, xport, path string }{
		{"", "hostmem", "cma"},
		{"cma", "hostmem", "cma"},
		{"shm", "hostmem", "shm"},
		{"0", "tcp", ""},
	} {
		t.Run("PYMOONCAKE_SAME_HOST="+c.value, func(t *testing.T) {
			testutil.ResourceCheck(t)
			env := map[string]string{}
			if c.value != "" {
				env["PYMOONCAKE_SAME_HOST"] = c.value
			}
			log, logs := observed(t)
			tgt := startEngine(t, env, nil, nil)
			ini := startEngine(t, env, log, nil)
			const size = 8 << 20
			local, remote := testutil.Mmap(t, size), testutil.Mmap(t, size)
			require.NoError(t, ini.RegisterMemory(addr(local), size, "cpu:0"))
			require.NoError(t, tgt.RegisterMemory(addr(remote), size, "*"))
			fill(local, 1)
			const page = 32 << 10
			var w, r []engine.Request
			for i := range size / 2 / page {
				slot := (i*7919)%(size/page-1) + 1 // scattered, never slot 0
				w = append(w, engine.Request{Opcode: transport.Write, Local: addr(local) + uintptr(i*page), Remote: uint64(addr(remote)) + uint64(slot*page), Length: page})
				r = append(r, engine.Request{Opcode: transport.Read, Local: addr(local) + uintptr(size/2+i*page), Remote: uint64(addr(remote)) + uint64(slot*page), Length: page})
			}
			require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), w, nil))
			require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), r, nil))
			requireSame(t, local[:size/2], local[size/2:])
			xport, path := chosen(logs, tgt.Name())
			require.Equal(t, c.xport, xport)
			require.Equal(t, c.path, path)
		})
	}
}

// TestSameHostBadValueFailsInitialize: PYMOONCAKE_SAME_HOST is parsed
// strictly.
func TestSameHostBadValueFailsInitialize(t *testing.T) {
	_, err := FromEnv(func(k string) (string, bool) {
		if k == "PYMOONCAKE_SAME_HOST" {
			return "yes-please", true
		}
		return "", false
	})
	require.ErrorContains(t, err, "PYMOONCAKE_SAME_HOST")
}

// TestSameHostGPUMemoryGoesOverTCP: with a (FAKE) GPU, tasks whose local or
// remote range is GPU memory go to the TCP fallback and its staging; host
// memory goes over cross-memory attach; one batch mixes them.
func TestSameHostGPUMemoryGoesOverTCP(t *testing.T) {
	testutil.ResourceCheck(t)
	d := fake.New(2)
	t.Cleanup(func() { require.NoError(t, d.Close(), "fake GPU resources leaked") })
	log, logs := observed(t)
	tgt := startEngine(t, nil, nil, d)
	ini := startEngine(t, nil, log, d)
	host, remote := testutil.Mmap(t, 1<<20), testutil.Mmap(t, 1<<20)
	dev, err := d.Alloc(0, 1<<20)
	require.NoError(t, err)
	t.Cleanup(func() { d.Free(dev) })
	rdev, err := d.Alloc(1, 1<<20)
	require.NoError(t, err)
	t.Cleanup(func() { d.Free(rdev) })
	require.NoError(t, ini.RegisterMemory(addr(host), 1<<20, "*"))
	require.NoError(t, ini.RegisterMemory(dev, 1<<20, "*"))
	require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<20, "*"))
	require.NoError(t, tgt.RegisterMemory(rdev, 1<<20, "*"))
	fill(host, 4)
	want := make([]byte, 64<<10)
	fill(want, 5)
	require.NoError(t, d.Write(dev, want))
	reqs := []engine.Request{
		{Opcode: transport.Write, Local: addr(host), Remote: uint64(addr(remote)), Length: 64 << 10},                   // host to host
		{Opcode: transport.Write, Local: dev, Remote: uint64(addr(remote)) + 64<<10, Length: 64 << 10},                 // GPU to host
		{Opcode: transport.Write, Local: addr(host) + 128<<10, Remote: uint64(rdev), Length: 64 << 10},                 // host to GPU
		{Opcode: transport.Read, Local: addr(host) + 256<<10, Remote: uint64(addr(remote)) + 64<<10, Length: 64 << 10}, // host from host
	}
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), reqs[:3], nil))
	require.NoError(t, ini.TransferTo(ctxT(t), tgt.Name(), reqs[3:], nil))
	requireSame(t, host[:64<<10], remote[:64<<10])
	requireSame(t, want, remote[64<<10:128<<10])
	got := make([]byte, 64<<10)
	require.NoError(t, d.Read(rdev, got))
	requireSame(t, host[128<<10:192<<10], got)
	requireSame(t, want, host[256<<10:320<<10])
	xport, path := chosen(logs, tgt.Name())
	require.Equal(t, "hostmem", xport)
	require.Equal(t, "cma", path)
}

// ---------------------------------------------------------------- processes

// TestMain runs this test binary again as a target engine for the
// two-process tests.
func TestMain(m *testing.M) {
	if os.Getenv("PYMOONCAKE_CORE_TEST_TARGET") == "1" {
		os.Exit(runTarget())
	}
	os.Exit(m.Run())
}

// runTarget starts an engine from this process's environment (named by
// PYMOONCAKE_CORE_TEST_NAME in the metadata service
// PYMOONCAKE_CORE_TEST_META, else P2P), registers 16 MiB of i*7 and prints
// its name and buffer address; it answers "sum" with the buffer's checksum.
func runTarget() int {
	cfg, err := FromEnv(os.LookupEnv)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	cfg.LocalName, cfg.Metadata, cfg.NoGPU = "127.0.0.1", "P2PHANDSHAKE", true
	if name := os.Getenv("PYMOONCAKE_CORE_TEST_NAME"); name != "" {
		cfg.LocalName, cfg.Metadata = name, os.Getenv("PYMOONCAKE_CORE_TEST_META")
		cfg.Env.TCPBindAddress = "127.0.0.1"
	}
	cfg.Logger = zap.NewNop()
	e, err := New(context.Background(), cfg)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer e.Close()
	b, err := syscall.Mmap(-1, 0, 16<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := e.RegisterMemory(addr(b), uint64(len(b)), "*"); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	fmt.Printf("%s %d\n", e.Name(), addr(b))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "sum":
			fmt.Println(checksum(b))
		case "quit":
			return 0
		}
	}
	return 0
}

func checksum(b []byte) uint64 {
	var s uint64
	for _, c := range b {
		s = s*31 + uint64(c)
	}
	return s
}

type targetProc struct {
	cmd   *exec.Cmd
	name  string
	base  uint64
	stdin *os.File
	out   *bufio.Scanner
	once  sync.Once
}

func startTargetProc(tb testing.TB, env ...string) *targetProc {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "PYMOONCAKE_CORE_TEST_TARGET=1"), env...)
	pr, pw, err := os.Pipe()
	require.NoError(tb, err)
	cmd.Stdin = pr
	stdout, err := cmd.StdoutPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	pr.Close()
	p := &targetProc{cmd: cmd, stdin: pw, out: bufio.NewScanner(stdout)}
	tb.Cleanup(p.kill)
	require.True(tb, p.out.Scan(), "target printed nothing")
	_, err = fmt.Sscanf(p.out.Text(), "%s %d", &p.name, &p.base)
	require.NoError(tb, err, p.out.Text())
	return p
}

func (p *targetProc) kill() {
	p.once.Do(func() {
		p.stdin.Close()
		p.cmd.Process.Kill()
		p.cmd.Wait()
	})
}

func (p *targetProc) sum(tb testing.TB) string {
	tb.Helper()
	_, err := fmt.Fprintln(p.stdin, "sum")
	require.NoError(tb, err)
	require.True(tb, p.out.Scan())
	return p.out.Text()
}

// TestSameHostTwoProcesses: an initiator engine and a target process, over
// each path: the whole buffer read, written and checked on both sides.
func TestSameHostTwoProcesses(t *testing.T) {
	for _, c := range []struct{ value, xport, path string }{{"", "hostmem", "cma"}, {"shm", "hostmem", "shm"}, {"0", "tcp", ""}} {
		t.Run("PYMOONCAKE_SAME_HOST="+c.value, func(t *testing.T) {
			testutil.ResourceCheck(t)
			env := map[string]string{}
			if c.value != "" {
				env["PYMOONCAKE_SAME_HOST"] = c.value
			}
			tg := startTargetProc(t)
			log, logs := observed(t)
			ini := startEngine(t, env, log, nil)
			local := testutil.Mmap(t, 16<<20)
			require.NoError(t, ini.RegisterMemory(addr(local), 16<<20, "*"))
			require.NoError(t, ini.TransferTo(ctxT(t), tg.name, []engine.Request{{Opcode: transport.Read, Local: addr(local), Remote: tg.base, Length: 16 << 20}}, nil))
			for _, i := range []int{0, 1, 1 << 20, 16<<20 - 1} {
				require.Equal(t, byte(i*7), local[i])
			}
			fill(local, 21)
			require.NoError(t, ini.TransferTo(ctxT(t), tg.name, []engine.Request{{Opcode: transport.Write, Local: addr(local), Remote: tg.base, Length: 16 << 20}}, nil))
			require.Equal(t, fmt.Sprint(checksum(local)), tg.sum(t))
			xport, path := chosen(logs, tg.name)
			require.Equal(t, c.xport, xport)
			require.Equal(t, c.path, path)
		})
	}
}

// TestSameHostTargetRestarts kills the target process and starts another
// under the same name (HTTP metadata): while it is down, calls fail within
// their deadline; once it is back, the next call re-resolves it and
// succeeds, over the same-host path again.
func TestSameHostTargetRestarts(t *testing.T) {
	for _, value := range []string{"", "shm"} {
		t.Run("PYMOONCAKE_SAME_HOST="+value, func(t *testing.T) {
			testutil.ResourceCheck(t)
			meta := startHTTPMetadata(t)
			env := []string{"PYMOONCAKE_CORE_TEST_NAME=samehost-target", "PYMOONCAKE_CORE_TEST_META=" + meta, "PYMOONCAKE_SAME_HOST=" + value}
			if value == "" {
				env = env[:2]
			}
			log, logs := observed(t)
			iniEnv := map[string]string{}
			if value != "" {
				iniEnv["PYMOONCAKE_SAME_HOST"] = value
			}
			cfg := configOf(t, iniEnv)
			cfg.LocalName, cfg.Metadata, cfg.Logger = "samehost-initiator", meta, log
			cfg.Env.TCPBindAddress = "127.0.0.1"
			ini, err := New(context.Background(), cfg)
			require.NoError(t, err)
			t.Cleanup(func() { ini.Close() })
			local := testutil.Mmap(t, 1<<20)
			require.NoError(t, ini.RegisterMemory(addr(local), 1<<20, "*"))
			for round := range 3 {
				tg := startTargetProc(t, env...)
				require.Equal(t, "samehost-target", tg.name)
				fill(local[:4096], uint64(round))
				require.NoError(t, ini.TransferTo(ctxT(t), tg.name, []engine.Request{{Opcode: transport.Write, Local: addr(local), Remote: tg.base, Length: 4096}}, nil), "round %d", round)
				require.NoError(t, ini.TransferTo(ctxT(t), tg.name, []engine.Request{{Opcode: transport.Read, Local: addr(local) + 4096, Remote: tg.base, Length: 4096}}, nil))
				requireSame(t, local[:4096], local[4096:8192])
				tg.kill()
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := ini.TransferTo(ctx, tg.name, []engine.Request{{Opcode: transport.Write, Local: addr(local), Remote: tg.base, Length: 4096}}, nil)
				cancel()
				require.Error(t, err, "the target is down")
				require.Less(t, time.Since(start), 6*time.Second)
			}
			n := 0
			for _, e := range logs.All() {
				if e.Message == "same-host path chosen" {
					n++
					want := map[string]string{"": "cma", "shm": "shm"}[value]
					require.Equal(t, want, e.ContextMap()["path"])
				}
			}
			require.Equal(t, 3, n, "a path chosen for each incarnation")
		})
	}
}
