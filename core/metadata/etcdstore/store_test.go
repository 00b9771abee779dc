package etcdstore

import (
	"bufio"
	"bytes"
	"context"
	"github.com/pymooncake/pymooncake/core/internal/etcdtest"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
)

func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	s, err := New(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPutGetDelete(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, e.Endpoints())
	for _, lease := range []time.Duration{0, 10 * time.Second} {
		t.Run("lease="+lease.String(), func(t *testing.T) {
			s := newStore(t, Config{Endpoints: e.Endpoints(), LeaseTTL: lease})
			ctx := opCtx(t)
			big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
			tests := []struct {
				name  string
				key   string
				value []byte
			}{
				{"segment json", "mooncake/ram/1.2.3.4:5", []byte(`{"name":"1.2.3.4:5","protocol":"tcp","buffers":[]}`)},
				{"rpc meta", "mooncake/rpc_meta/host:1", []byte(`{"ip_or_host_name":"10.0.0.5","rpc_port":15678}` + "\n")},
				{"empty value", "mooncake/empty", []byte{}},
				{"binary", "mooncake/bin", []byte{0, 1, 0xff, 0xfe, '\n', 0, 0x80}},
				{"odd key", "mooncake/ key with spaces?&=%/é", []byte("x")},
				{"one MiB", "mooncake/big", big},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					require.NoError(t, s.Put(ctx, tc.key, tc.value))
					got, err := s.Get(ctx, tc.key)
					require.NoError(t, err)
					require.True(t, bytes.Equal(tc.value, got), "value changed: %q", got)
					stored, leaseID, ok := etcdtest.RawGet(t, raw, tc.key)
					require.True(t, ok)
					require.True(t, bytes.Equal(tc.value, stored))
					require.Equal(t, s.lease.Load(), leaseID)
					require.Equal(t, lease > 0, leaseID != 0)

					require.NoError(t, s.Delete(ctx, tc.key))
					_, err = s.Get(ctx, tc.key)
					require.ErrorIs(t, err, metadata.ErrNotFound)
					require.NoError(t, s.Delete(ctx, tc.key), "deleting a missing key is not an error")
				})
			}
			// The caller's slice may be reused after Put.
			buf := []byte("first")
			require.NoError(t, s.Put(ctx, "mooncake/reuse", buf))
			copy(buf, "xxxxx")
			got, err := s.Get(ctx, "mooncake/reuse")
			require.NoError(t, err)
			require.Equal(t, "first", string(got))
			if lease > 0 {
				require.Equal(t, []byte("first"), s.own["mooncake/reuse"])
			}
			require.NoError(t, s.Delete(ctx, "mooncake/reuse"))
		})
	}
}

func TestGetMissing(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	s := newStore(t, Config{Endpoints: e.Endpoints()})
	_, err := s.Get(opCtx(t), "mooncake/ram/nobody")
	require.ErrorIs(t, err, metadata.ErrNotFound)
	require.Contains(t, err.Error(), "mooncake/ram/nobody")
}

func TestEndpoints(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 2)
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdtest.FreePort(t)))
	live := e.Endpoints()
	tests := []struct {
		name      string
		endpoints []string
	}{
		{"two live", live},
		{"dead then live", []string{dead, live[1]}},
		{"live then dead", []string{"http://" + live[0], dead}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, Config{Endpoints: tc.endpoints, DialTimeout: 3 * time.Second})
			ctx := opCtx(t)
			for i := 0; i < 8; i++ { // spread over the balancer's picks
				key := "mooncake/ep/" + strconv.Itoa(i)
				require.NoError(t, s.Put(ctx, key, []byte(tc.name)))
				got, err := s.Get(ctx, key)
				require.NoError(t, err)
				require.Equal(t, tc.name, string(got))
				require.NoError(t, s.Delete(ctx, key))
			}
		})
	}
}

func TestNewUnreachable(t *testing.T) {
	testutil.ResourceCheck(t)
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdtest.FreePort(t)))
	start := time.Now()
	s, err := New(context.Background(), Config{Endpoints: []string{dead}, DialTimeout: 300 * time.Millisecond, Logger: zaptest.NewLogger(t)})
	require.Nil(t, s)
	require.ErrorIs(t, err, ErrUnreachable)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), dead)
	require.Less(t, time.Since(start), 2*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, err = New(ctx, Config{Endpoints: []string{dead}, DialTimeout: 5 * time.Second})
	require.Nil(t, s)
	require.ErrorIs(t, err, context.Canceled)
}

func TestNewConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no endpoints", Config{}},
		{"empty endpoint", Config{Endpoints: []string{"127.0.0.1:2379", " "}}},
		{"negative dial timeout", Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: -1}},
		{"negative op timeout", Config{Endpoints: []string{"127.0.0.1:2379"}, OpTimeout: -1}},
		{"negative lease ttl", Config{Endpoints: []string{"127.0.0.1:2379"}, LeaseTTL: -time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(context.Background(), tc.cfg)
			require.Nil(t, s)
			require.ErrorIs(t, err, ErrConfig)
		})
	}
}

func TestClosed(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	s, err := New(context.Background(), Config{Endpoints: e.Endpoints(), LeaseTTL: 5 * time.Second, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	ctx := opCtx(t)
	_, err = s.Get(ctx, "k")
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, s.Put(ctx, "k", nil), ErrClosed)
	require.ErrorIs(t, s.Delete(ctx, "k"), ErrClosed)
}

func TestNoLeaseKeysSurviveClose(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, e.Endpoints())
	s, err := New(context.Background(), Config{Endpoints: e.Endpoints(), Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	require.NoError(t, s.Put(opCtx(t), "mooncake/ram/a", []byte("v")))
	require.NoError(t, s.Close())
	v, lease, ok := etcdtest.RawGet(t, raw, "mooncake/ram/a")
	require.True(t, ok)
	require.Equal(t, "v", string(v))
	require.Zero(t, lease)
}

func TestLeaseRevokedOnClose(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, e.Endpoints())
	// Long TTL: the keys can only vanish because Close revokes the lease.
	s, err := New(context.Background(), Config{Endpoints: e.Endpoints(), LeaseTTL: time.Minute, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	ctx := opCtx(t)
	require.NoError(t, s.Put(ctx, "mooncake/ram/a", []byte("a")))
	require.NoError(t, s.Put(ctx, "mooncake/rpc_meta/a", []byte("b")))
	_, lease, ok := etcdtest.RawGet(t, raw, "mooncake/ram/a")
	require.True(t, ok)
	require.NotZero(t, lease)
	require.NoError(t, s.Close())
	for _, key := range []string{"mooncake/ram/a", "mooncake/rpc_meta/a"} {
		_, _, ok = etcdtest.RawGet(t, raw, key)
		require.False(t, ok, "%s survived Close", key)
	}
}

const (
	childEndpointEnv = "ETCDSTORE_TEST_CHILD_ENDPOINT"
	childKey         = "mooncake/ram/child:1"
	childTTL         = 2 * time.Second
)

// runLeaseChild is the child half of TestLeaseExpiresWhenOwnerKilled: it
// puts childKey under a lease, says "ready" and waits to be killed.
func runLeaseChild(t *testing.T, endpoint string) {
	s, err := New(context.Background(), Config{Endpoints: []string{endpoint}, LeaseTTL: childTTL})
	require.NoError(t, err)
	require.NoError(t, s.Put(context.Background(), childKey, []byte("alive")))
	os.Stdout.WriteString("ready\n")
	time.Sleep(time.Minute) // the parent kills us long before
	t.Fatal("child was not killed")
}

func TestLeaseExpiresWhenOwnerKilled(t *testing.T) {
	if ep := os.Getenv(childEndpointEnv); ep != "" {
		runLeaseChild(t, ep)
		return
	}
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, e.Endpoints())

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseExpiresWhenOwnerKilled$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEndpointEnv+"="+e.Endpoints()[0])
	cmd.Stdout, cmd.Stderr = w, w
	require.NoError(t, cmd.Start())
	w.Close()
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	require.NoError(t, r.SetReadDeadline(time.Now().Add(20*time.Second)))
	var out strings.Builder
	sc := bufio.NewScanner(r)
	ready := false
	for !ready && sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		ready = sc.Text() == "ready"
	}
	require.True(t, ready, "child did not get ready (%v):\n%s", sc.Err(), out.String())

	v, lease, ok := etcdtest.RawGet(t, raw, childKey)
	require.True(t, ok)
	require.Equal(t, "alive", string(v))
	require.NotZero(t, lease)

	require.NoError(t, cmd.Process.Kill())
	killed := time.Now()
	_ = cmd.Wait()
	reaped = true
	for {
		if _, _, ok := etcdtest.RawGet(t, raw, childKey); !ok {
			break
		}
		require.Less(t, time.Since(killed), childTTL+3*time.Second, "key of a killed owner still present")
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("key vanished %v after SIGKILL (TTL %v)", time.Since(killed).Round(100*time.Millisecond), childTTL)
}

// waitFor polls cond until it holds or limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLeaseReestablishedAfterEtcdRestart(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	obsCore, logs := observer.New(zapcore.WarnLevel)
	logger := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), obsCore))
	reconnected := make(chan struct{}, 4)
	s := newStore(t, Config{
		Endpoints: e.Endpoints(),
		LeaseTTL:  2 * time.Second,
		OpTimeout: 500 * time.Millisecond,
		Logger:    logger,
		OnReconnect: func(context.Context) {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		},
	})
	ctx := opCtx(t)
	require.NoError(t, s.Put(ctx, "mooncake/ram/mine", []byte("v1")))
	require.NoError(t, s.Put(ctx, "mooncake/ram/mine", []byte("v2")))
	require.NoError(t, s.Put(ctx, "mooncake/rpc_meta/mine", []byte(`{"rpc_port":1}`)))
	require.NoError(t, s.Put(ctx, "mooncake/ram/gone", []byte("x")))
	require.NoError(t, s.Delete(ctx, "mooncake/ram/gone"))
	oldLease := s.lease.Load()

	e.Stop()
	start := time.Now()
	err := s.Put(ctx, "mooncake/ram/during", []byte("x"))
	require.Error(t, err, "put while etcd is down")
	require.Less(t, time.Since(start), 3*time.Second, "put must give up after OpTimeout")
	waitFor(t, 15*time.Second, "the lease to be reported lost", func() bool {
		return logs.FilterMessage("etcd lease lost; re-establishing it when etcd answers").Len() > 0
	})
	require.Empty(t, reconnected)

	e.Restart()
	select {
	case <-reconnected:
	case <-time.After(20 * time.Second):
		t.Fatal("OnReconnect not called after etcd came back")
	}
	newLease := s.lease.Load()
	require.NotEqual(t, oldLease, newLease)
	require.NotZero(t, newLease)

	raw := etcdtest.RawClient(t, e.Endpoints())
	for key, want := range map[string]string{"mooncake/ram/mine": "v2", "mooncake/rpc_meta/mine": `{"rpc_port":1}`} {
		v, lease, ok := etcdtest.RawGet(t, raw, key)
		require.True(t, ok, "%s not re-put", key)
		require.Equal(t, want, string(v))
		require.Equal(t, newLease, lease)
	}
	for _, key := range []string{"mooncake/ram/gone", "mooncake/ram/during"} {
		_, _, ok := etcdtest.RawGet(t, raw, key)
		require.False(t, ok, "%s must not be re-put", key)
	}
	ttl, err := raw.TimeToLive(ctx, clientv3.LeaseID(oldLease))
	require.NoError(t, err)
	require.EqualValues(t, -1, ttl.TTL, "old lease revoked")

	// The store works normally on the new lease.
	require.NoError(t, s.Put(ctx, "mooncake/ram/after", []byte("y")))
	_, lease, ok := etcdtest.RawGet(t, raw, "mooncake/ram/after")
	require.True(t, ok)
	require.Equal(t, newLease, lease)
}

func TestPutRetriesWhenLeaseRevokedByServer(t *testing.T) {
	testutil.ResourceCheck(t)
	e := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, e.Endpoints())
	reconnected := make(chan struct{}, 4)
	s := newStore(t, Config{
		Endpoints: e.Endpoints(),
		LeaseTTL:  30 * time.Second,
		OnReconnect: func(context.Context) {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		},
	})
	ctx := opCtx(t)
	require.NoError(t, s.Put(ctx, "mooncake/ram/a", []byte("a")))
	oldLease := s.lease.Load()
	// Someone else revokes our lease: the key goes, and the next Put finds
	// the lease missing before or after the keeper notices.
	_, err := raw.Revoke(ctx, clientv3.LeaseID(oldLease))
	require.NoError(t, err)
	require.NoError(t, s.Put(ctx, "mooncake/ram/b", []byte("b")))
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("OnReconnect not called")
	}
	for key, want := range map[string]string{"mooncake/ram/a": "a", "mooncake/ram/b": "b"} {
		v, lease, ok := etcdtest.RawGet(t, raw, key)
		require.True(t, ok, key)
		require.Equal(t, want, string(v))
		require.Equal(t, s.lease.Load(), lease)
		require.NotEqual(t, oldLease, lease)
	}
}
