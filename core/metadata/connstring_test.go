package metadata

import (
	"testing"

	"github.com/stretchr/testify/require"
)

var connStringTests = []struct {
	name string
	in   string
	want ConnString
	err  error
}{
	{"p2p", "P2PHANDSHAKE", ConnString{Kind: P2P}, nil},
	{"etcd", "etcd://127.0.0.1:2379", ConnString{Kind: Etcd, Endpoints: []string{"127.0.0.1:2379"}}, nil},
	{"etcd comma", "etcd://h:1,h2:2", ConnString{Kind: Etcd, Endpoints: []string{"h:1", "h2:2"}}, nil},
	{"etcd semicolon", "etcd://h:1;h2:2", ConnString{Kind: Etcd, Endpoints: []string{"h:1", "h2:2"}}, nil},
	{"etcd mixed, spaces, empties", "etcd:// h:1 ;, h2:2,", ConnString{Kind: Etcd, Endpoints: []string{"h:1", "h2:2"}}, nil},
	{"etcd url endpoints", "etcd://http://h:1", ConnString{Kind: Etcd, Endpoints: []string{"http://h:1"}}, nil},
	{"bare host:port is etcd", "127.0.0.1:2379", ConnString{Kind: Etcd, Endpoints: []string{"127.0.0.1:2379"}}, nil},
	{"bare list is etcd", "h:1,h2:2", ConnString{Kind: Etcd, Endpoints: []string{"h:1", "h2:2"}}, nil},
	{"http", "http://127.0.0.1:8080/metadata", ConnString{Kind: HTTP, URL: "http://127.0.0.1:8080/metadata"}, nil},
	{"https", "https://meta.example.com/metadata", ConnString{Kind: HTTP, URL: "https://meta.example.com/metadata"}, nil},
	{"http IPv6", "http://[::1]:8080/metadata", ConnString{Kind: HTTP, URL: "http://[::1]:8080/metadata"}, nil},
	{"redis refused", "redis://127.0.0.1:6379", ConnString{}, ErrUnsupportedBackend},
	{"unknown scheme refused", "foo://x", ConnString{}, ErrUnsupportedBackend},
	{"scheme is case-sensitive", "ETCD://h:1", ConnString{}, ErrUnsupportedBackend},
	{"empty scheme", "://h:1", ConnString{}, ErrUnsupportedBackend},
	{"empty", "", ConnString{}, ErrMalformed},
	{"etcd without endpoints", "etcd://", ConnString{}, ErrMalformed},
	{"etcd only separators", "etcd:// ,;", ConnString{}, ErrMalformed},
	{"bare separators", ",", ConnString{}, ErrMalformed},
	{"http without host", "http:///metadata", ConnString{}, ErrMalformed},
	{"http bad url", "http://h:1/%zz", ConnString{}, ErrMalformed},
}

func TestParseConnString(t *testing.T) {
	for _, tc := range connStringTests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConnString(tc.in)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestRedisRefusalNamesAlternatives(t *testing.T) {
	_, err := ParseConnString("redis://h:6379")
	require.ErrorContains(t, err, "redis metadata is not supported by pymooncake; use etcd or http")
}

func TestConnStringFromType(t *testing.T) {
	tests := []struct {
		name, server, metadataType, want string
	}{
		{"etcd", "127.0.0.1:2379", "etcd", "etcd://127.0.0.1:2379"},
		{"http", "127.0.0.1:8080/metadata", "http", "http://127.0.0.1:8080/metadata"},
		{"server has scheme", "http://h:1/metadata", "etcd", "http://h:1/metadata"},
		{"p2p stays", "P2PHANDSHAKE", "etcd", "P2PHANDSHAKE"},
		{"redis passes through", "h:1", "redis", "redis://h:1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, ConnStringFromType(tc.server, tc.metadataType))
		})
	}
}

func TestKindString(t *testing.T) {
	require.Equal(t, "p2p", P2P.String())
	require.Equal(t, "etcd", Etcd.String())
	require.Equal(t, "http", HTTP.String())
	require.Equal(t, "redis", Redis.String())
	require.Equal(t, "Kind(0)", Kind(0).String())
}
