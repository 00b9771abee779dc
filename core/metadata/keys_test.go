package metadata

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestKeys(t *testing.T) {
	tests := []struct {
		name      string
		clusterID string
		segment   string
		wantSeg   string
		wantRPC   string
	}{
		{"default", "", "127.0.0.1:12345", "mooncake/ram/127.0.0.1:12345", "mooncake/rpc_meta/127.0.0.1:12345"},
		{"cluster id", "c1", "h:1", "mooncake/c1/ram/h:1", "mooncake/c1/rpc_meta/h:1"},
		{"cluster id with slash", "c1/", "h:1", "mooncake/c1/ram/h:1", "mooncake/c1/rpc_meta/h:1"},
		{"nested cluster id", "a/b", "h:1", "mooncake/a/b/ram/h:1", "mooncake/a/b/rpc_meta/h:1"},
		{"name with path", "", "nvmeof/seg0", "mooncake/nvmeof/seg0", "mooncake/rpc_meta/nvmeof/seg0"},
		{"IPv6 name", "", "[::1]:15000", "mooncake/ram/[::1]:15000", "mooncake/rpc_meta/[::1]:15000"},
		{"empty name", "", "", "mooncake/ram/", "mooncake/rpc_meta/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := KeyPrefix(tc.clusterID)
			require.Equal(t, tc.wantSeg, SegmentKey(p, tc.segment))
			require.Equal(t, tc.wantRPC, RPCMetaKey(p, tc.segment))
		})
	}
}
