package core

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

func httpPut(t *testing.T, base, key string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"?key="+url.QueryEscape(key), bytes.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// An engine that died without deleting its keys starts again under its
// name in HTTP mode, although the metadata server refuses to overwrite
// rpc_meta keys (as Mooncake's does); a live engine's name is not taken.
func TestHTTPNameOfADeadEngineIsTakenOver(t *testing.T) {
	testutil.ResourceCheck(t)
	meta := startHTTPMetadata(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadPort := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	stale := []byte(fmt.Sprintf(`{"ip_or_host_name":"127.0.0.1","rpc_port":%d}`, deadPort))
	require.Equal(t, http.StatusOK, httpPut(t, meta, "mooncake/rpc_meta/crashed", stale))
	require.Equal(t, http.StatusBadRequest, httpPut(t, meta, "mooncake/rpc_meta/crashed", stale), "the server refuses overwrites")

	e := newStoreEngine(t, "crashed", meta)
	code, body := httpGet(t, meta, "mooncake/rpc_meta/crashed")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), fmt.Sprintf(`"rpc_port":%d`, e.RPCPort()))
	require.NoError(t, e.Republish(ctxT(t)), "republishing our own key is no conflict")

	env := config.Defaults()
	env.TCPBindAddress = "127.0.0.1"
	_, err = New(context.Background(), Config{LocalName: "crashed", Metadata: meta, Env: env, Logger: testLogger(t)})
	require.ErrorIs(t, err, engine.ErrMetadata, "a live engine keeps its name")
	require.Contains(t, err.Error(), "held by the engine at")
	_, body = httpGet(t, meta, "mooncake/rpc_meta/crashed")
	require.Contains(t, string(body), fmt.Sprintf(`"rpc_port":%d`, e.RPCPort()))
	require.NoError(t, e.Probe(ctxT(t), "crashed"))
}
