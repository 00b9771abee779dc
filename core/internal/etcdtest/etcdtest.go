// Package etcdtest runs a real etcd server (Debian's etcd-server binary)
// on loopback for tests, stopped in the test's cleanup.
package etcdtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Server is a real etcd process on 127.0.0.1, started from the `etcd`
// binary on PATH with a data dir under t.TempDir(). It can be stopped and
// started again on the same data dir and ports.
type Server struct {
	t           testing.TB
	bin         string
	dir         string
	logPath     string
	clientPorts []int
	peerPort    int
	cmd         *exec.Cmd
	exited      chan struct{} // closed when cmd has been reaped
}

// RequireBinary returns the etcd binary's path. Without one the test is
// skipped, or fails when the CI variable is set.
func RequireBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		msg := "etcd binary not found on PATH (Debian: apt-get install etcd-server): " + err.Error()
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// Start starts a single-member etcd listening on clientPorts client
// ports, waits until it is healthy and stops it in the test's cleanup.
func Start(t testing.TB, clientPorts int) *Server {
	t.Helper()
	bin := RequireBinary(t)
	base := t.TempDir()
	e := &Server{t: t, bin: bin, dir: filepath.Join(base, "data"), logPath: filepath.Join(base, "etcd.log")}
	t.Cleanup(e.Stop)
	// Ports are probed, then released for etcd to bind: retry on the rare
	// collision with another process.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		e.clientPorts = e.clientPorts[:0]
		for i := 0; i < clientPorts; i++ {
			e.clientPorts = append(e.clientPorts, FreePort(t))
		}
		e.peerPort = FreePort(t)
		if err = e.start(); err == nil {
			return e
		}
		if !strings.Contains(e.LogTail(), "address already in use") {
			break
		}
		require.NoError(t, os.RemoveAll(e.dir))
	}
	t.Fatalf("start etcd: %v\n%s", err, e.LogTail())
	return nil
}

func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return port
}

// Endpoints are the client addresses, "127.0.0.1:port".
func (e *Server) Endpoints() []string {
	var eps []string
	for _, p := range e.clientPorts {
		eps = append(eps, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	return eps
}

// Restart starts the stopped server again on the same data dir and ports.
func (e *Server) Restart() {
	e.t.Helper()
	if err := e.start(); err != nil {
		e.t.Fatalf("restart etcd: %v\n%s", err, e.LogTail())
	}
}

func (e *Server) start() error {
	var clientURLs []string
	for _, ep := range e.Endpoints() {
		clientURLs = append(clientURLs, "http://"+ep)
	}
	peerURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(e.peerPort))
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open etcd log: %w", err)
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := exec.Command(e.bin,
		"--name", "n0",
		"--data-dir", e.dir,
		"--listen-client-urls", strings.Join(clientURLs, ","),
		"--advertise-client-urls", clientURLs[0],
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "n0="+peerURL,
		"--initial-cluster-state", "new",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--logger", "zap",
		"--log-level", "warn",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") { // etcd reads ETCD_* as flags
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", e.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.cmd, e.exited = cmd, exited
	if err := e.waitHealthy(15 * time.Second); err != nil {
		e.Stop()
		return err
	}
	return nil
}

// waitHealthy polls the /health endpoint until etcd reports healthy.
func (e *Server) waitHealthy(limit time.Duration) error {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	url := "http://" + e.Endpoints()[0] + "/health"
	deadline := time.Now().Add(limit)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`) {
				return nil
			}
			err = fmt.Errorf("health %d %s", resp.StatusCode, body)
		}
		select {
		case <-e.exited:
			return fmt.Errorf("etcd exited before becoming healthy")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy within %v: %w", limit, err)
		}
	}
}

// Stop terminates etcd (SIGTERM, then SIGKILL after 10 s) and reaps it.
func (e *Server) Stop() {
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
	case <-time.After(10 * time.Second):
		_ = e.cmd.Process.Kill()
		<-e.exited
	}
	e.cmd = nil
}

func (e *Server) LogTail() string {
	b, _ := os.ReadFile(e.logPath)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// RawClient is a plain etcd client for checking what the Store wrote.
func RawClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// RawGet returns key's value and lease, or ok=false when key is missing.
func RawGet(t testing.TB, cli *clientv3.Client, key string) (value []byte, lease int64, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	require.NoError(t, err)
	if len(resp.Kvs) == 0 {
		return nil, 0, false
	}
	return resp.Kvs[0].Value, resp.Kvs[0].Lease, true
}
