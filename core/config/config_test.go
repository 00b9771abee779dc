package config

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zapcore"
)

func lookupMap(m map[string]string) LookupFunc {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFromEnvDefaults(t *testing.T) {
	e, err := FromEnv(lookupMap(nil))
	require.NoError(t, err)
	d := Defaults()
	require.Equal(t, d.MinPort, e.MinPort)
	require.Equal(t, 17000, e.MaxPort)
	require.Equal(t, uint64(1<<20), e.HandshakeMaxFrame)
	require.Equal(t, 30*time.Second, e.TransferTimeout)
	require.Equal(t, 1<<16, e.NotifyMaxCount)
	require.Equal(t, int64(64<<20), e.NotifyMaxBytes)
	require.Equal(t, 1<<14, e.NotifyMaxCountPerPeer)
	require.Equal(t, int64(16<<20), e.NotifyMaxBytesPerPeer)
	require.Equal(t, 256, e.HandshakeMaxConns)
	require.Equal(t, 64, e.HandshakeMaxConnsPerPeer)
	require.Equal(t, time.Second, e.HandshakeHeaderTimeout)
	require.Empty(t, e.SortedSet())
}

func TestFromEnvValues(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, e Env)
	}{
		{"rpc ports", map[string]string{"MC_MIN_RPC_PORT": "20000", "MC_MAX_RPC_PORT": "20010"},
			func(t *testing.T, e Env) { require.Equal(t, 20000, e.MinPort); require.Equal(t, 20010, e.MaxPort) }},
		{"misspelled prc ports", map[string]string{"MC_MIN_PRC_PORT": "20000", "MC_MAX_PRC_PORT": "20010"},
			func(t *testing.T, e Env) { require.Equal(t, 20000, e.MinPort); require.Equal(t, 20010, e.MaxPort) }},
		{"rpc spelling wins", map[string]string{"MC_MIN_RPC_PORT": "21000", "MC_MIN_PRC_PORT": "20000", "MC_MAX_RPC_PORT": "21001"},
			func(t *testing.T, e Env) { require.Equal(t, 21000, e.MinPort) }},
		{"force tcp presence", map[string]string{"MC_FORCE_TCP": ""}, func(t *testing.T, e Env) { require.True(t, e.ForceTCP) }},
		{"force tcp false", map[string]string{"MC_FORCE_TCP": "0"}, func(t *testing.T, e Env) { require.False(t, e.ForceTCP) }},
		{"log level", map[string]string{"MC_LOG_LEVEL": "warning"}, func(t *testing.T, e Env) { require.Equal(t, zapcore.WarnLevel, e.LogLevel) }},
		{"timeout", map[string]string{"MC_TRANSFER_TIMEOUT": "7"}, func(t *testing.T, e Env) { require.Equal(t, 7*time.Second, e.TransferTimeout) }},
		{"max frame", map[string]string{"MC_HANDSHAKE_MAX_LENGTH": "4096"}, func(t *testing.T, e Env) { require.Equal(t, uint64(4096), e.HandshakeMaxFrame) }},
		{"force hca", map[string]string{"MC_FORCE_HCA": "1"}, func(t *testing.T, e Env) { require.True(t, e.ForceHCA) }},
		{"use barex", map[string]string{"USE_BAREX": "2"}, func(t *testing.T, e Env) { require.True(t, e.UseBarex) }},
		{"notify limits", map[string]string{"PYMOONCAKE_NOTIFY_MAX_COUNT": "100", "PYMOONCAKE_NOTIFY_MAX_BYTES": "1048576",
			"PYMOONCAKE_NOTIFY_MAX_COUNT_PER_PEER": "10", "PYMOONCAKE_NOTIFY_MAX_BYTES_PER_PEER": "4096"}, func(t *testing.T, e Env) {
			require.Equal(t, 100, e.NotifyMaxCount)
			require.Equal(t, int64(1<<20), e.NotifyMaxBytes)
			require.Equal(t, 10, e.NotifyMaxCountPerPeer)
			require.Equal(t, int64(4096), e.NotifyMaxBytesPerPeer)
		}},
		{"notify per-peer follows a lower total", map[string]string{"PYMOONCAKE_NOTIFY_MAX_COUNT": "100", "PYMOONCAKE_NOTIFY_MAX_BYTES": "1000"},
			func(t *testing.T, e Env) {
				require.Equal(t, 100, e.NotifyMaxCountPerPeer)
				require.Equal(t, int64(1000), e.NotifyMaxBytesPerPeer)
			}},
		{"notify per-peer keeps its default under a higher total", map[string]string{"PYMOONCAKE_NOTIFY_MAX_COUNT": "1000000"},
			func(t *testing.T, e Env) { require.Equal(t, DefaultNotifyMaxCountPerPeer, e.NotifyMaxCountPerPeer) }},
		{"handshake limits", map[string]string{"PYMOONCAKE_HANDSHAKE_MAX_CONNS": "32", "PYMOONCAKE_HANDSHAKE_HEADER_TIMEOUT_MS": "250"},
			func(t *testing.T, e Env) {
				require.Equal(t, 32, e.HandshakeMaxConns)
				require.Equal(t, 32, e.HandshakeMaxConnsPerPeer, "follows the total down")
				require.Equal(t, 250*time.Millisecond, e.HandshakeHeaderTimeout)
			}},
		{"metrics off by default", nil, func(t *testing.T, e Env) {
			require.Empty(t, e.MetricsAddr)
			require.False(t, e.MetricsReport)
			require.Equal(t, 5*time.Second, e.MetricsInterval)
			require.Equal(t, 64, e.MetricsMaxPeers)
		}},
		{"metrics port", map[string]string{"PYMOONCAKE_METRICS_PORT": "9100"}, func(t *testing.T, e Env) { require.Equal(t, ":9100", e.MetricsAddr) }},
		{"metrics any port", map[string]string{"PYMOONCAKE_METRICS_PORT": "0"}, func(t *testing.T, e Env) { require.Equal(t, ":0", e.MetricsAddr) }},
		{"metrics host", map[string]string{"PYMOONCAKE_METRICS_PORT": "9100", "PYMOONCAKE_METRICS_HOST": "::1"},
			func(t *testing.T, e Env) { require.Equal(t, "[::1]:9100", e.MetricsAddr) }},
		{"metrics max peers", map[string]string{"PYMOONCAKE_METRICS_MAX_PEERS": "3"}, func(t *testing.T, e Env) { require.Equal(t, 3, e.MetricsMaxPeers) }},
		{"mooncake metric report", map[string]string{"MC_TE_METRIC": "TRUE", "MC_TE_METRIC_INTERVAL_SECONDS": "2"}, func(t *testing.T, e Env) {
			require.True(t, e.MetricsReport)
			require.Equal(t, 2*time.Second, e.MetricsInterval)
		}},
		{"mooncake metric off", map[string]string{"MC_TE_METRIC": "0"}, func(t *testing.T, e Env) { require.False(t, e.MetricsReport) }},
		{"set recorded", map[string]string{"MC_USE_IPV6": "1"}, func(t *testing.T, e Env) {
			require.True(t, e.IPv6)
			require.Equal(t, []string{"MC_USE_IPV6=1"}, e.SortedSet())
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := FromEnv(lookupMap(tc.env))
			require.NoError(t, err)
			tc.check(t, e)
		})
	}
}

func TestFromEnvRejects(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"not a number", map[string]string{"MC_MIN_RPC_PORT": "abc"}},
		{"min above max", map[string]string{"MC_MIN_RPC_PORT": "16000", "MC_MAX_RPC_PORT": "15000"}},
		{"privileged", map[string]string{"MC_MIN_RPC_PORT": "80", "MC_MAX_RPC_PORT": "90"}},
		{"ephemeral", map[string]string{"MC_MIN_RPC_PORT": "40000", "MC_MAX_RPC_PORT": "40010"}},
		{"port too big", map[string]string{"MC_MAX_RPC_PORT": "70000"}},
		{"transfer timeout below 5", map[string]string{"MC_TRANSFER_TIMEOUT": "2"}},
		{"max frame too large", map[string]string{"MC_HANDSHAKE_MAX_LENGTH": "999999999"}},
		{"max frame zero", map[string]string{"MC_HANDSHAKE_MAX_LENGTH": "0"}},
		{"bad bool", map[string]string{"MC_USE_IPV6": "maybe"}},
		{"bad use barex", map[string]string{"USE_BAREX": "yes"}},
		{"bad log level", map[string]string{"MC_LOG_LEVEL": "loud"}},
		{"notify count zero", map[string]string{"PYMOONCAKE_NOTIFY_MAX_COUNT": "0"}},
		{"notify bytes not a number", map[string]string{"PYMOONCAKE_NOTIFY_MAX_BYTES": "1G"}},
		{"notify per-peer count above the total", map[string]string{"PYMOONCAKE_NOTIFY_MAX_COUNT": "10", "PYMOONCAKE_NOTIFY_MAX_COUNT_PER_PEER": "11"}},
		{"notify per-peer bytes above the default total", map[string]string{"PYMOONCAKE_NOTIFY_MAX_BYTES_PER_PEER": "1099511627776"}},
		{"handshake conns zero", map[string]string{"PYMOONCAKE_HANDSHAKE_MAX_CONNS": "0"}},
		{"handshake per-peer above the total", map[string]string{"PYMOONCAKE_HANDSHAKE_MAX_CONNS_PER_PEER": "257"}},
		{"handshake header timeout too short", map[string]string{"PYMOONCAKE_HANDSHAKE_HEADER_TIMEOUT_MS": "1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromEnv(lookupMap(tc.env))
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
}

// A bad metrics variable fails with its name, and the endpoint stays off.
func TestMetricsVariablesRejected(t *testing.T) {
	tests := []struct {
		name, bad string
		env       map[string]string
	}{
		{"port not a number", "PYMOONCAKE_METRICS_PORT", map[string]string{"PYMOONCAKE_METRICS_PORT": "ninety"}},
		{"port too big", "PYMOONCAKE_METRICS_PORT", map[string]string{"PYMOONCAKE_METRICS_PORT": "65536"}},
		{"port negative", "PYMOONCAKE_METRICS_PORT", map[string]string{"PYMOONCAKE_METRICS_PORT": "-1"}},
		{"host without port", "PYMOONCAKE_METRICS_HOST", map[string]string{"PYMOONCAKE_METRICS_HOST": "127.0.0.1"}},
		{"host empty", "PYMOONCAKE_METRICS_HOST", map[string]string{"PYMOONCAKE_METRICS_PORT": "9100", "PYMOONCAKE_METRICS_HOST": " "}},
		{"max peers zero", "PYMOONCAKE_METRICS_MAX_PEERS", map[string]string{"PYMOONCAKE_METRICS_MAX_PEERS": "0"}},
		{"report not a bool", "MC_TE_METRIC", map[string]string{"MC_TE_METRIC": "sometimes"}},
		{"interval zero", "MC_TE_METRIC_INTERVAL_SECONDS", map[string]string{"MC_TE_METRIC_INTERVAL_SECONDS": "0"}},
		{"interval with a unit", "MC_TE_METRIC_INTERVAL_SECONDS", map[string]string{"MC_TE_METRIC_INTERVAL_SECONDS": "5s"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := FromEnv(lookupMap(tc.env))
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorContains(t, err, tc.bad)
			require.Empty(t, e.MetricsAddr)
		})
	}
}
