package bindings

import (
	"encoding/json"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMetrics(t *testing.T) {
	leakCheck(t)
	a, b := newEngine(t), newEngine(t)
	ma, mb := newMem(1<<16), newMem(1<<16)
	defer runtime.KeepAlive(ma)
	defer runtime.KeepAlive(mb)
	_, err := a.RegisterMemory(ma.addr(), ma.size(), "*")
	require.NoError(t, err)
	_, err = b.RegisterMemory(mb.addr(), mb.size(), "*")
	require.NoError(t, err)
	seg, err := b.Name()
	require.NoError(t, err)
	_, err = a.TransferSync(seg, 1, ma.addr(), mb.addr(), 1000)
	require.NoError(t, err)

	raw, err := a.Metrics()
	require.NoError(t, err)
	var m struct {
		Transports map[string]struct {
			Write struct {
				Bytes    uint64            `json:"bytes"`
				Requests uint64            `json:"requests"`
				Failures map[string]uint64 `json:"failures"`
			} `json:"write"`
		} `json:"transports"`
		Peers map[string]struct {
			WriteBytes uint64 `json:"write_bytes"`
		} `json:"peers"`
		RegisteredBytes map[string]uint64 `json:"registered_bytes"`
		Endpoint        string            `json:"endpoint"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &m))
	// Whichever transport carried it (the same-host one here, TCP where
	// that is off) counted it, and no other did.
	var bytes, requests uint64
	for _, x := range m.Transports {
		bytes, requests = bytes+x.Write.Bytes, requests+x.Write.Requests
	}
	require.Equal(t, uint64(1000), bytes)
	require.Equal(t, uint64(1), requests)
	require.Equal(t, uint64(1000), m.Peers[seg].WriteBytes)
	require.Equal(t, uint64(1<<16), m.RegisteredBytes["cpu"])
	require.Empty(t, m.Endpoint, "no endpoint unless asked for")

	_, err = a.Close()
	require.NoError(t, err)
	_, err = a.Metrics()
	_, kind, _ := parse(t, err)
	require.Equal(t, kindClosed, kind)
}

func TestMetricsEndpointVariables(t *testing.T) {
	leakCheck(t)
	e := newEngine(t, "PYMOONCAKE_METRICS_PORT", "0", "PYMOONCAKE_METRICS_HOST", "127.0.0.1")
	raw, err := e.Metrics()
	require.NoError(t, err)
	var m struct {
		Endpoint string `json:"endpoint"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &m))
	require.Regexp(t, `^127\.0\.0\.1:[0-9]+$`, m.Endpoint)

	for _, bad := range []string{"PYMOONCAKE_METRICS_PORT", "MC_TE_METRIC_INTERVAL_SECONDS"} {
		_, err := NewEngine("127.0.0.1", "P2PHANDSHAKE", "", "tcp", "", environ(t, bad, "x"))
		code, kind, reason := parse(t, err)
		require.Equal(t, -1, code)
		require.Equal(t, kindInvalid, kind)
		require.Contains(t, reason, bad, "initialize names the variable")
	}
}
