//go:build linux

package hostmem

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
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

func ctxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

func testLogger(tb testing.TB) *zap.Logger {
	if _, ok := tb.(*testing.B); ok {
		return zap.NewNop()
	}
	return zaptest.NewLogger(tb)
}

// node is a transport with its memory table, as an engine holds them.
type node struct {
	t   *Transport
	mem *memory.Table
}

func newNode(tb testing.TB, cfg Config) *node {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(tb)
	}
	mem := memory.New()
	t, err := New(cfg, mem)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, t.Close()) })
	return &node{t: t, mem: mem}
}

// register registers b as the engine does: the table, then the transport.
func (n *node) register(tb testing.TB, b []byte, device int) {
	tb.Helper()
	r := memory.Region{Addr: uint64(addrOf(b)), Length: uint64(len(b)), Location: "*", Device: device}
	if device != memory.Host {
		r.Location = "cuda:" + strconv.Itoa(device)
	}
	require.NoError(tb, n.mem.Add([]memory.Region{r}))
	require.NoError(tb, n.t.RegisterMemory(r.Addr, r.Length, r.Location))
}

// unregister unregisters as the engine does: the table (refusing new pins,
// waiting for those held), then the transport.
func (n *node) unregister(ctx context.Context, addr uint64) error {
	if _, err := n.mem.Remove([]uint64{addr}); err != nil {
		return err
	}
	if err := n.mem.Wait(ctx, time.Minute, []uint64{addr}); err != nil {
		return err
	}
	return n.t.UnregisterMemory(addr)
}

// desc is n's descriptor as its peers see it.
func (n *node) desc(name string) *metadata.SegmentDesc {
	d := &metadata.SegmentDesc{Name: name, Protocol: metadata.ProtocolTCP, TCPDataPort: 1, Extra: map[string]json.RawMessage{}}
	var locs []string
	gpu := false
	for _, r := range n.mem.Regions() {
		d.Buffers = append(d.Buffers, metadata.BufferDesc{Name: name, Addr: r.Addr, Length: r.Length})
		locs = append(locs, r.Location)
		gpu = gpu || r.Device != memory.Host
	}
	if gpu {
		raw, _ := json.Marshal(locs)
		d.Extra[LocationsKey] = raw
	}
	n.t.Describe(d)
	return d
}

func (n *node) peer(name string) transport.Peer {
	return transport.Peer{Name: name, Host: "127.0.0.1", Desc: n.desc(name)}
}

// run submits reqs to pe and waits; it returns each task's error.
func run(tb testing.TB, x transport.Transport, ctx context.Context, pe transport.Peer, reqs []transport.Request, sync bool) []error {
	tb.Helper()
	g := transport.NewGroup()
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	x.Submit(ctx, pe, tasks, transport.SubmitOptions{Sync: sync})
	require.NoError(tb, g.Wait(context.Background()))
	errs := make([]error, len(tasks))
	for i, task := range tasks {
		errs[i] = task.Err()
		if errs[i] == nil {
			require.Equal(tb, transport.Completed, task.Status())
			require.Equal(tb, task.Length, task.Transferred())
		} else {
			require.Equal(tb, transport.Failed, task.Status())
		}
	}
	return errs
}

func requireAllOK(tb testing.TB, errs []error) {
	tb.Helper()
	for i, err := range errs {
		require.NoError(tb, err, "task %d", i)
	}
}

// fakeFallback stands in for the TCP transport: it records the tasks it
// gets and completes them without moving anything.
type fakeFallback struct {
	mu     sync.Mutex
	tasks  []transport.Request
	refuse error
}

func (f *fakeFallback) Name() string                       { return "fake-fallback" }
func (f *fakeFallback) Accept(*metadata.SegmentDesc) error { return f.refuse }
func (f *fakeFallback) ClosePeer(string)                   {}
func (f *fakeFallback) Close() error                       { return nil }
func (f *fakeFallback) Submit(_ context.Context, _ transport.Peer, tasks []*transport.Task, _ transport.SubmitOptions) {
	f.mu.Lock()
	for _, t := range tasks {
		f.tasks = append(f.tasks, t.Request)
	}
	f.mu.Unlock()
	for _, t := range tasks {
		t.Start(1)
		t.PartDone(t.Length, nil)
	}
}

func (f *fakeFallback) got() []transport.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transport.Request(nil), f.tasks...)
}

// ---------------------------------------------------------------- processes

// The two-process tests run this test binary again as a target: a
// transport over one registered buffer, driven by lines on stdin.
const roleEnv = "PYMOONCAKE_HOSTMEM_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "target":
		os.Exit(runTarget())
	case "initiator":
		os.Exit(runInitiator())
	}
	os.Exit(m.Run())
}

// initiatorReport is what an initiator process prints.
type initiatorReport struct {
	Path     string   `json:"path"`
	Errors   []string `json:"errors"`
	Fallback int      `json:"fallback"`
	Same     bool     `json:"same"`
	// Healthy: a second later (past the target's handshake deadline), the
	// peer is still healthy and a third transfer succeeds.
	Healthy bool `json:"healthy"`
}

// runInitiator writes 1 MiB of fill(seed 42) to the target whose
// descriptor is in PYMOONCAKE_HOSTMEM_TEST_DESC, reads it back and reports
// the path, the tasks' errors and what its fake fallback got.
func runInitiator() int {
	d, err := metadata.DecodeSegmentDesc([]byte(os.Getenv("PYMOONCAKE_HOSTMEM_TEST_DESC")))
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	mode := Auto
	if os.Getenv("PYMOONCAKE_HOSTMEM_TEST_MODE") == "cma" {
		mode = CMAOnly
	}
	fb := &fakeFallback{}
	mem := memory.New()
	t, err := New(Config{Mode: mode, Fallback: fb}, mem)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer t.Close()
	const n = 1 << 20
	b, err := syscall.Mmap(-1, 0, 2*n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	fill(b[:n], 42)
	pe := transport.Peer{Name: d.Name, Host: "127.0.0.1", Desc: d}
	var rep initiatorReport
	do := func(r transport.Request) error {
		g := transport.NewGroup()
		task := &transport.Task{}
		task.Init(r, g)
		g.Add(1)
		t.Submit(context.Background(), pe, []*transport.Task{task}, transport.SubmitOptions{Sync: true})
		_ = g.Wait(context.Background())
		return task.Err()
	}
	write := transport.Request{Opcode: transport.Write, Local: addrOf(b), Remote: d.Buffers[0].Addr, Length: n}
	for _, r := range []transport.Request{write, {Opcode: transport.Read, Local: addrOf(b) + n, Remote: d.Buffers[0].Addr, Length: n}} {
		if err := do(r); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
	}
	rep.Path = t.pathOf(d.Name)
	rep.Same = string(b[:n]) == string(b[n:])
	time.Sleep(time.Second)
	rep.Healthy = t.PeerHealth(d.Name) == nil && do(write) == nil && t.pathOf(d.Name) == rep.Path
	rep.Fallback = len(fb.got())
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
	return 0
}

// targetHello is the target's first line.
type targetHello struct {
	Desc json.RawMessage `json:"desc"`
	Addr uint64          `json:"addr"`
	Size int             `json:"size"`
	PID  int             `json:"pid"`
}

func runTarget() int {
	size, _ := strconv.Atoi(os.Getenv("PYMOONCAKE_HOSTMEM_TEST_SIZE"))
	if size == 0 {
		size = 64 << 20
	}
	if os.Getenv("PYMOONCAKE_HOSTMEM_TEST_NODUMP") == "1" {
		// Cross-memory attach then needs CAP_SYS_PTRACE over us.
		if err := setNotDumpable(); err != nil {
			fmt.Println("ERR", err)
			return 1
		}
	}
	mem := memory.New()
	var cfg Config
	if ms, _ := strconv.Atoi(os.Getenv("PYMOONCAKE_HOSTMEM_TEST_DIAL_MS")); ms > 0 {
		// A short handshake deadline, for the tests that outlast it.
		cfg.DialTimeout = time.Duration(ms) * time.Millisecond
	}
	t, err := New(cfg, mem)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer t.Close()
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	for i := range b {
		b[i] = byte(i * 7)
	}
	n := &node{t: t, mem: mem}
	addr := uint64(addrOf(b))
	reg := func() error {
		r := memory.Region{Addr: addr, Length: uint64(size), Location: "*", Device: memory.Host}
		if err := mem.Add([]memory.Region{r}); err != nil {
			return err
		}
		return t.RegisterMemory(r.Addr, r.Length, r.Location)
	}
	if err := reg(); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	d, err := n.desc("target").Marshal(false)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	hello, _ := json.Marshal(targetHello{Desc: d, Addr: addr, Size: size, PID: os.Getpid()})
	fmt.Println(string(hello))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "sum": // sum OFF LEN
			off, _ := strconv.Atoi(f[1])
			n, _ := strconv.Atoi(f[2])
			fmt.Println(checksum(b[off : off+n]))
		case "unreg-canary":
			// Unregister as the engine does, then reuse the memory at once
			// (a canary) and report whether anything overwrote it since.
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := n.unregister(ctx, addr)
			cancel()
			took := time.Since(start)
			for i := range b {
				b[i] = 0xA5
			}
			time.Sleep(300 * time.Millisecond)
			intact := true
			for i := range b {
				if b[i] != 0xA5 {
					intact = false
					break
				}
			}
			fmt.Printf("%v %d %v\n", err == nil, took.Microseconds(), intact)
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

// target is a target process.
type target struct {
	cmd   *exec.Cmd
	hello targetHello
	desc  *metadata.SegmentDesc
	stdin *os.File
	out   *bufio.Scanner
}

// startTarget starts a target process; env adds variables to it, and
// sys sets how it is started (nil: as this process).
func startTarget(tb testing.TB, env []string, sys *syscall.SysProcAttr) *target {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), roleEnv+"=target"), env...)
	cmd.SysProcAttr = sys
	cmd.Stderr = os.Stderr
	pr, pw, err := os.Pipe()
	require.NoError(tb, err)
	cmd.Stdin = pr
	stdout, err := cmd.StdoutPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	pr.Close()
	tg := &target{cmd: cmd, stdin: pw, out: bufio.NewScanner(stdout)}
	tb.Cleanup(func() {
		pw.Close()
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	require.True(tb, tg.out.Scan(), "target printed nothing")
	require.NoError(tb, json.Unmarshal(tg.out.Bytes(), &tg.hello), tg.out.Text())
	tg.desc, err = metadata.DecodeSegmentDesc(tg.hello.Desc)
	require.NoError(tb, err)
	return tg
}

func (tg *target) peer() transport.Peer {
	return transport.Peer{Name: tg.desc.Name, Host: "127.0.0.1", Desc: tg.desc}
}

// ask sends a command line and returns the answer line.
func (tg *target) ask(tb testing.TB, line string) string {
	tb.Helper()
	_, err := fmt.Fprintln(tg.stdin, line)
	require.NoError(tb, err)
	require.True(tb, tg.out.Scan(), "target answered nothing to %q", line)
	return tg.out.Text()
}

// stop stops the target and returns once the kernel shows it stopped (the
// signal alone leaves it running on another core for a moment).
func (tg *target) stop(tb testing.TB) {
	tb.Helper()
	require.NoError(tb, tg.cmd.Process.Signal(syscall.SIGSTOP))
	require.Eventually(tb, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tg.cmd.Process.Pid))
		if err != nil {
			return false
		}
		_, rest, _ := strings.Cut(string(b), ") ")
		return strings.HasPrefix(rest, "T") || strings.HasPrefix(rest, "t")
	}, 5*time.Second, time.Millisecond)
}

func (tg *target) sum(tb testing.TB, off, n int) string {
	return tg.ask(tb, fmt.Sprintf("sum %d %d", off, n))
}
