package tcp

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
)

func lookupOf(env map[string]string) config.LookupFunc {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Config
		bad  string // the variable the error names
	}{
		{name: "defaults", want: Config{}},
		{name: "v1", env: map[string]string{"MC_TCP_PROTO": "1"}, want: Config{ForceV1: true}},
		{name: "v2", env: map[string]string{"MC_TCP_PROTO": "2"}, want: Config{}},
		{name: "bad proto", env: map[string]string{"MC_TCP_PROTO": "3"}, bad: "MC_TCP_PROTO"},
		{name: "timeout", env: map[string]string{"MC_TCP_STATUS_TIMEOUT_SEC": "7"},
			want: Config{StatusTimeout: 7 * time.Second, IOTimeout: 7 * time.Second}},
		{name: "bad timeout", env: map[string]string{"MC_TCP_STATUS_TIMEOUT_SEC": "0"}, bad: "MC_TCP_STATUS_TIMEOUT_SEC"},
		{name: "lanes", env: map[string]string{"MC_TCP_LANES_PER_PEER": "8"}, want: Config{Lanes: 8}},
		{name: "old lanes name", env: map[string]string{"MC_TCP_MAX_CONNECTIONS_PER_PEER": "2"}, want: Config{Lanes: 2}},
		{name: "new name wins", env: map[string]string{"MC_TCP_LANES_PER_PEER": "3", "MC_TCP_MAX_CONNECTIONS_PER_PEER": "2"}, want: Config{Lanes: 3}},
		{name: "too many lanes", env: map[string]string{"MC_TCP_LANES_PER_PEER": "17"}, bad: "MC_TCP_LANES_PER_PEER"},
		{name: "poll", env: map[string]string{"PYMOONCAKE_TCP_POLL_US": "20"}, want: Config{PollBudget: 20 * time.Microsecond}},
		{name: "no poll", env: map[string]string{"PYMOONCAKE_TCP_POLL_US": "0"}, want: Config{PollBudget: -1}},
		{name: "window", env: map[string]string{"PYMOONCAKE_TCP_WINDOW": "64"}, want: Config{Window: 64}},
		{name: "window too big", env: map[string]string{"PYMOONCAKE_TCP_WINDOW": "1025"}, bad: "PYMOONCAKE_TCP_WINDOW"},
		{name: "no scatter-gather", env: map[string]string{"PYMOONCAKE_TCP_SG": "0"}, want: Config{NoScatterGather: true}},
		{name: "scatter-gather", env: map[string]string{"PYMOONCAKE_TCP_SG": "1"}, want: Config{}},
		{name: "bad scatter-gather", env: map[string]string{"PYMOONCAKE_TCP_SG": "maybe"}, bad: "PYMOONCAKE_TCP_SG"},
		{name: "poll spaces", env: map[string]string{"PYMOONCAKE_TCP_POLL_US": " 120 "}, want: Config{PollBudget: 120 * time.Microsecond}},
		{name: "negative poll", env: map[string]string{"PYMOONCAKE_TCP_POLL_US": "-1"}, bad: "PYMOONCAKE_TCP_POLL_US"},
		{name: "poll too long", env: map[string]string{"PYMOONCAKE_TCP_POLL_US": "10001"}, bad: "PYMOONCAKE_TCP_POLL_US"},
		{name: "poll with a unit", env: map[string]string{"PYMOONCAKE_TCP_POLL_US": "50us"}, bad: "PYMOONCAKE_TCP_POLL_US"},
		{name: "max conns", env: map[string]string{"PYMOONCAKE_TCP_MAX_CONNS": "100", "PYMOONCAKE_TCP_MAX_CONNS_PER_PEER": "40"},
			want: Config{MaxConns: 100, MaxConnsPerPeer: 40}},
		{name: "max conns alone", env: map[string]string{"PYMOONCAKE_TCP_MAX_CONNS": "100"}, want: Config{MaxConns: 100}},
		{name: "per peer alone", env: map[string]string{"PYMOONCAKE_TCP_MAX_CONNS_PER_PEER": "64"}, want: Config{MaxConnsPerPeer: 64}},
		{name: "max conns below lanes room", env: map[string]string{"PYMOONCAKE_TCP_MAX_CONNS": "31"}, bad: "PYMOONCAKE_TCP_MAX_CONNS"},
		{name: "per peer below lanes room", env: map[string]string{"PYMOONCAKE_TCP_MAX_CONNS_PER_PEER": "8"}, bad: "PYMOONCAKE_TCP_MAX_CONNS_PER_PEER"},
		{name: "per peer above max conns", env: map[string]string{"PYMOONCAKE_TCP_MAX_CONNS": "64", "PYMOONCAKE_TCP_MAX_CONNS_PER_PEER": "65"},
			bad: "PYMOONCAKE_TCP_MAX_CONNS_PER_PEER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFromEnv(lookupOf(tc.env))
			if tc.bad != "" {
				require.ErrorIs(t, err, config.ErrInvalid)
				require.ErrorContains(t, err, tc.bad)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			_, err = got.withDefaults()
			require.NoError(t, err, "what the environment allows, New accepts")
		})
	}
}
