package rdma

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
)

func lookupMap(m map[string]string) config.LookupFunc {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want Config
	}{
		{name: "nothing set", want: Config{}},
		// The RDMA case of core/config's tests, moved here with the parsing.
		{name: "rdma knobs", env: map[string]string{"MC_MTU": "1024", "NCCL_IB_GID_INDEX": "0", "MC_ENDPOINT_STORE_TYPE": "fifo", "MC_SLICE_SIZE": "131072"},
			want: Config{MTU: 1024, GIDIndexSet: true, EndpointStore: StoreFIFO, SliceSize: 131072}},
		{name: "every variable", env: map[string]string{
			"MC_IB_PORT": "2", "MC_GID_INDEX": "3", "MC_NUM_CQ_PER_CTX": "4", "MC_NUM_COMP_CHANNELS_PER_CTX": "5",
			"MC_MAX_CQE_PER_CTX": "1048576", "MC_MAX_EP_PER_CTX": "1048576", "MC_NUM_QP_PER_EP": "6", "MC_MAX_SGE": "8",
			"MC_MAX_WR": "512", "MC_MAX_INLINE": "0", "MC_MTU": "2048", "MC_SLICE_SIZE": "32768", "MC_FRAGMENT_RATIO": "8",
			"MC_RETRY_CNT": "5", "MC_PKEY_INDEX": "1", "MC_IB_TC": "0", "MC_IB_SL": "3", "MC_MAX_MR_SIZE": "1048576",
			"MC_IB_PCI_RELAXED_ORDERING": "1", "MC_ENDPOINT_STORE_TYPE": " SIEVE ", "MC_PATH_ROUNDROBIN": "",
			"MC_ENABLE_DEST_DEVICE_AFFINITY": "yes",
		}, want: Config{Port: 2, GIDIndex: 3, GIDIndexSet: true, NumCQPerCtx: 4, NumCompChannelsPerCtx: 5,
			MaxCQE: 1 << 20, MaxEPPerCtx: 1 << 20, NumQPPerEP: 6, MaxSGE: 8, MaxWR: 512, MTU: 2048, SliceSize: 32768,
			FragmentLimit: 4096, RetryCnt: 5, PKeyIndex: 1, TrafficClassSet: true, ServiceLevel: 3, MaxMRSize: 1 << 20,
			RelaxedOrdering: true, EndpointStore: StoreSIEVE, PathRoundRobin: true, DestDeviceAffinity: true}},
		{name: "MC_GID_INDEX wins over NCCL_IB_GID_INDEX", env: map[string]string{"MC_GID_INDEX": "2", "NCCL_IB_GID_INDEX": "5"},
			want: Config{GIDIndex: 2, GIDIndexSet: true}},
		{name: "fragment ratio of the default slice size", env: map[string]string{"MC_FRAGMENT_RATIO": "2"},
			want: Config{FragmentLimit: 32768}},
		{name: "presence switched off", env: map[string]string{"MC_PATH_ROUNDROBIN": "0", "MC_IB_PCI_RELAXED_ORDERING": "off"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFromEnv(lookupMap(tc.env))
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			_, err = got.withDefaults()
			require.NoError(t, err, "what the environment allows, New accepts")
		})
	}
}

func TestConfigFromEnvRejects(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string // what the error names: variable=value
	}{
		// The RDMA cases of core/config's tests, moved here with the parsing.
		{name: "bad mtu", env: map[string]string{"MC_MTU": "1500"}, want: []string{`MC_MTU="1500"`}},
		{name: "bad store", env: map[string]string{"MC_ENDPOINT_STORE_TYPE": "LRU"}, want: []string{`MC_ENDPOINT_STORE_TYPE="LRU"`}},
		{name: "port 0", env: map[string]string{"MC_IB_PORT": "0"}, want: []string{`MC_IB_PORT="0"`}},
		{name: "gid index not a number", env: map[string]string{"NCCL_IB_GID_INDEX": "x"}, want: []string{`NCCL_IB_GID_INDEX="x"`}},
		{name: "service level 16", env: map[string]string{"MC_IB_SL": "16"}, want: []string{`MC_IB_SL="16"`}},
		{name: "retry count 128", env: map[string]string{"MC_RETRY_CNT": "128"}, want: []string{`MC_RETRY_CNT="128"`}},
		{name: "slice size 2 GiB", env: map[string]string{"MC_SLICE_SIZE": "2147483648"}, want: []string{`MC_SLICE_SIZE="2147483648"`}},
		{name: "fragment ratio 0", env: map[string]string{"MC_FRAGMENT_RATIO": "0"}, want: []string{`MC_FRAGMENT_RATIO="0"`}},
		{name: "max mr size 0", env: map[string]string{"MC_MAX_MR_SIZE": "0"}, want: []string{`MC_MAX_MR_SIZE="0"`}},
		{name: "more endpoints than New takes", env: map[string]string{"MC_MAX_EP_PER_CTX": "1048577"}, want: []string{`MC_MAX_EP_PER_CTX="1048577"`}},
		{name: "more work requests than New takes", env: map[string]string{"MC_MAX_WR": "65536"}, want: []string{`MC_MAX_WR="65536"`}},
		{name: "bad presence", env: map[string]string{"MC_PATH_ROUNDROBIN": "maybe"}, want: []string{`MC_PATH_ROUNDROBIN="maybe"`}},
		{name: "every bad variable is reported", env: map[string]string{"MC_MTU": "9000", "MC_NUM_QP_PER_EP": "256", "MC_MAX_WR": "-1"},
			want: []string{`MC_MTU="9000"`, `MC_NUM_QP_PER_EP="256"`, `MC_MAX_WR="-1"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFromEnv(lookupMap(tc.env))
			require.ErrorIs(t, err, config.ErrInvalid)
			for _, w := range tc.want {
				require.ErrorContains(t, err, w)
			}
			require.Equal(t, Config{}, got, "a bad environment yields no configuration")
		})
	}
}
