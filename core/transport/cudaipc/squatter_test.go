//go:build linux

package cudaipc

import (
	"bufio"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

const squatterEnv = "PYMOONCAKE_CUDAIPC_TEST_SQUAT"

// TestSquatterHelper is the other user's process of TestSocketOfAnotherUser:
// it binds the abstract socket named in squatterEnv, says so, accepts and
// answers nothing until its stdin closes.
func TestSquatterHelper(t *testing.T) {
	name := os.Getenv(squatterEnv)
	if name == "" {
		t.Skip("run by TestSocketOfAnotherUser")
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: name, Net: "unixpacket"})
	if err != nil {
		os.Exit(3)
	}
	os.Stdout.WriteString("listening\n")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			os.Stdout.WriteString("accepted\n")
		}
	}()
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	os.Exit(0)
}

// TestSocketOfAnotherUser: when a process of another user holds the
// socket a peer's descriptor names (it bound the abstract name after the
// peer's endpoint closed), the initiator neither opens nor writes anything
// there: the request goes to the fallback.
func TestSocketOfAnotherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a helper as another user")
	}
	testutil.ResourceCheck(t)
	tgt, ini := pair(t, Config{OpenTimeout: 2 * time.Second})
	const n = 4096
	remote := tgt.alloc(0, n)
	ihost := ini.host(n)
	peer := tgt.peer()
	socket := tgt.x.srv.ln.Addr().String()
	require.NoError(t, tgt.x.Close())

	// The test binary's directory is the building user's alone: the
	// helper runs from a copy that user nobody may read.
	dir, err := os.MkdirTemp("", "cudaipc-squat")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	bin, err := os.ReadFile(os.Args[0])
	require.NoError(t, err)
	exe := filepath.Join(dir, "helper.test")
	require.NoError(t, os.WriteFile(exe, bin, 0o755))
	cmd := exec.Command(exe, "-test.run=^TestSquatterHelper$")
	cmd.Env = append(os.Environ(), squatterEnv+"="+socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	if err := cmd.Start(); errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		t.Skipf("cannot run a process as another user here: %v", err)
	} else {
		require.NoError(t, err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	lines := bufio.NewReader(out)
	line, err := lines.ReadString('\n')
	require.NoError(t, err, "the helper could not bind %s", socket)
	require.Equal(t, "listening\n", line)
	var squatted atomic.Int64
	go func() {
		for {
			line, err := lines.ReadString('\n')
			if err != nil {
				return
			}
			if line == "accepted\n" {
				squatted.Add(1)
			}
		}
	}()

	copy(ihost, pattern(n, 3))
	start := time.Now()
	tasks := ini.run(peer, transport.SubmitOptions{Sync: true},
		transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: n})
	require.NoError(t, tasks[0].Err())
	require.Less(t, time.Since(start), time.Second, "refused at connect, not after the open timed out")
	require.Len(t, ini.fb.requests(), 1, "the write went to the fallback")
	mappings, _, imports := ini.d.LiveIPC()
	require.Zero(t, mappings)
	require.Zero(t, imports)

	// The peer's socket is not dialled again: the next requests go
	// straight to the fallback.
	for range 3 {
		require.NoError(t, ini.run(peer, transport.SubmitOptions{Sync: true},
			transport.Request{Opcode: transport.Write, Local: addrOf(ihost), Remote: uint64(remote), Length: n})[0].Err())
	}
	require.Len(t, ini.fb.requests(), 4)
	require.Eventually(t, func() bool { return squatted.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	require.Never(t, func() bool { return squatted.Load() > 1 }, 200*time.Millisecond, 10*time.Millisecond,
		"one connection reached the squatter")
}
