package core

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/internal/etcdtest"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata/httpserver"
	"github.com/pymooncake/pymooncake/core/transport"
)

func startHTTPMetadata(t *testing.T) string {
	t.Helper()
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return "http://" + srv.Addr() + "/metadata"
}

func httpGet(t *testing.T, base, key string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(base + "?key=" + url.QueryEscape(key))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func newStoreEngine(t *testing.T, name, meta string) *engine.Engine {
	t.Helper()
	env := config.Defaults()
	env.TCPBindAddress = "127.0.0.1"
	e, err := New(context.Background(), Config{LocalName: name, Metadata: meta, Env: env, Logger: testLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

func TestHTTPMetadataMode(t *testing.T) {
	testutil.ResourceCheck(t)
	meta := startHTTPMetadata(t)
	tgt := newStoreEngine(t, "target-a", meta)
	ini := newStoreEngine(t, "initiator-b", meta)
	require.Equal(t, "target-a", tgt.Name(), "store modes keep the given name")

	code, body := httpGet(t, meta, "mooncake/rpc_meta/target-a")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, fmt.Sprintf("{\"ip_or_host_name\":\"127.0.0.1\",\"rpc_port\":%d}", tgt.RPCPort()), string(body))

	remote, local := testutil.Mmap(t, 1<<20), testutil.Mmap(t, 1<<20)
	require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<20, "*"))
	require.NoError(t, ini.RegisterMemory(addr(local), 1<<20, "*"))
	code, body = httpGet(t, meta, "mooncake/ram/target-a")
	require.Equal(t, http.StatusOK, code)
	var d struct {
		Buffers []struct{ Addr, Length uint64 }
	}
	require.NoError(t, json.Unmarshal(body, &d))
	require.Equal(t, uint64(addr(remote)), d.Buffers[0].Addr, "the descriptor is republished on register")
	require.NotEqual(t, byte('\n'), body[len(body)-1], "HTTP bodies are compact JSON without a newline")

	seg, err := ini.OpenSegment(ctxT(t), "target-a")
	require.NoError(t, err)
	fill(local, 21)
	require.NoError(t, ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Write, Local: addr(local), Segment: seg, Remote: uint64(addr(remote)), Length: 1 << 20}}, nil))
	requireSame(t, local, remote)
	require.NoError(t, ini.SendNotify(ctxT(t), "target-a", engine.Notify{Name: "n", Msg: "m"}))
	require.Len(t, tgt.Notifies(), 1)

	_, err = ini.OpenSegment(ctxT(t), "nobody")
	require.ErrorIs(t, err, engine.ErrMetadata)

	// A second engine under the same name is refused: the rpc_meta key
	// exists (Mooncake's server answers 400).
	env := config.Defaults()
	env.TCPBindAddress = "127.0.0.1"
	_, err = New(context.Background(), Config{LocalName: "target-a", Metadata: meta, Env: env})
	require.Error(t, err)
	code, _ = httpGet(t, meta, "mooncake/rpc_meta/target-a")
	require.Equal(t, http.StatusOK, code, "a failed init must not delete the live engine's keys")
	require.NoError(t, ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Write, Local: addr(local), Segment: seg, Remote: uint64(addr(remote)), Length: 1 << 20}}, nil))

	require.NoError(t, tgt.Close())
	code, _ = httpGet(t, meta, "mooncake/ram/target-a")
	require.Equal(t, http.StatusNotFound, code, "keys are deleted on close")
	code, _ = httpGet(t, meta, "mooncake/rpc_meta/target-a")
	require.Equal(t, http.StatusNotFound, code)
}

func TestUnreachableStore(t *testing.T) {
	testutil.ResourceCheck(t)
	start := time.Now()
	_, err := New(context.Background(), Config{LocalName: "x", Metadata: "http://127.0.0.1:1/metadata", Env: config.Defaults()})
	require.ErrorIs(t, err, engine.ErrMetadata)
	require.Less(t, time.Since(start), 10*time.Second)
}

func TestEtcdMode(t *testing.T) {
	testutil.ResourceCheck(t)
	etcd := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, etcd.Endpoints())
	meta := "etcd://" + etcd.Endpoints()[0]
	tgt := newStoreEngine(t, "etcd-target", meta)
	ini := newStoreEngine(t, "etcd-initiator", etcd.Endpoints()[0]) // a bare h:p means etcd
	remote, local := testutil.Mmap(t, 1<<20), testutil.Mmap(t, 1<<20)
	require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<20, "*"))
	require.NoError(t, ini.RegisterMemory(addr(local), 1<<20, "*"))

	v, _, ok := etcdtest.RawGet(t, raw, "mooncake/rpc_meta/etcd-target")
	require.True(t, ok)
	require.Equal(t, fmt.Sprintf("{\"ip_or_host_name\":\"127.0.0.1\",\"rpc_port\":%d}\n", tgt.RPCPort()), string(v), "FastWriter JSON with its newline")
	v, _, ok = etcdtest.RawGet(t, raw, "mooncake/ram/etcd-target")
	require.True(t, ok)
	require.Contains(t, string(v), fmt.Sprintf("\"addr\":%d,\"length\":1048576,\"name\":\"etcd-target\"", addr(remote)))

	seg, err := ini.OpenSegment(ctxT(t), "etcd-target")
	require.NoError(t, err)
	write := func() error {
		return ini.Transfer(ctxT(t), []engine.Request{{Opcode: transport.Write, Local: addr(local), Segment: seg, Remote: uint64(addr(remote)), Length: 1 << 20}}, nil)
	}
	fill(local, 31)
	require.NoError(t, write())
	requireSame(t, local, remote)

	// etcd goes away: peers that already opened each other keep working,
	// new opens fail cleanly.
	etcd.Stop()
	fill(local, 32)
	require.NoError(t, write())
	requireSame(t, local, remote)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	_, err = ini.OpenSegment(ctx, "someone-else")
	cancel()
	require.ErrorIs(t, err, engine.ErrMetadata)
	etcd.Restart()
	require.NoError(t, write())
	_, _, ok = etcdtest.RawGet(t, raw, "mooncake/ram/etcd-target")
	require.True(t, ok)

	require.NoError(t, tgt.Close())
	_, _, ok = etcdtest.RawGet(t, raw, "mooncake/ram/etcd-target")
	require.False(t, ok, "keys are deleted on close")
	_, _, ok = etcdtest.RawGet(t, raw, "mooncake/rpc_meta/etcd-target")
	require.False(t, ok)
}

func TestEtcdLeaseAndClusterID(t *testing.T) {
	testutil.ResourceCheck(t)
	etcd := etcdtest.Start(t, 1)
	raw := etcdtest.RawClient(t, etcd.Endpoints())
	env := config.Defaults()
	env.TCPBindAddress = "127.0.0.1"
	env.ClusterID = "c1"
	env.MetadataLeaseTTL = 10 * time.Second
	e, err := New(context.Background(), Config{LocalName: "leased", Metadata: "etcd://" + etcd.Endpoints()[0], Env: env, Logger: testLogger(t)})
	require.NoError(t, err)
	defer e.Close()
	_, lease, ok := etcdtest.RawGet(t, raw, "mooncake/c1/ram/leased")
	require.True(t, ok)
	require.NotZero(t, lease, "keys are attached to a lease")
	_, lease2, ok := etcdtest.RawGet(t, raw, "mooncake/c1/rpc_meta/leased")
	require.True(t, ok)
	require.Equal(t, lease, lease2)
}
