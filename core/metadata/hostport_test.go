package metadata

import (
	"testing"

	"github.com/stretchr/testify/require"
)

var hostPortTests = []struct {
	name     string
	in       string
	wantHost string
	wantPort int
}{
	{"IPv4 with port", "10.0.0.1:15873", "10.0.0.1", 15873},
	{"bracketed IPv6 with port", "[::1]:1234", "::1", 1234},
	{"bracketed IPv6 without port", "[::1]", "::1", DefaultHandshakePort},
	{"bracketed IPv6 empty port", "[::1]:", "::1", DefaultHandshakePort},
	{"bracketed IPv6 with scope", "[fe80::1%eth0]:1234", "fe80::1%eth0", 1234},
	{"bare IPv6", "::1", "::1", DefaultHandshakePort},
	{"bare IPv6 that looks like it has a port", "fe80::1:1234", "fe80::1:1234", DefaultHandshakePort},
	{"IPv6 with scope and port", "fe80::1%eth0:1234", "fe80::1%eth0", 1234},
	{"IPv6 with scope, no port", "fe80::1%eth0", "fe80::1%eth0", DefaultHandshakePort},
	{"IPv4-mapped IPv6", "[::ffff:10.0.0.1]:80", "::ffff:10.0.0.1", 80},
	{"host alone", "host", "host", DefaultHandshakePort},
	{"host with port", "host:15000", "host", 15000},
	{"port 0 is invalid", "host:0", "host", DefaultHandshakePort},
	{"port too big", "host:99999", "host", DefaultHandshakePort},
	{"port 65535", "host:65535", "host", 65535},
	{"empty port", "host:", "host", DefaultHandshakePort},
	{"signed port", "host:+80", "host", DefaultHandshakePort},
	{"port with space", "host: 80", "host", DefaultHandshakePort},
	{"port with junk", "host:80x", "host", DefaultHandshakePort},
	{"leading zeros", "host:0080", "host", 80},
	{"split at last colon", "a:b:80", "a:b", 80},
	{"bad bracket falls back", "[bad]:80", "[bad]", 80},
	{"scope without IPv6", "host%x:80", "host%x", 80},
	{"empty", "", "", DefaultHandshakePort},
	{"port only", ":80", "", 80},
}

func TestParseHostPort(t *testing.T) {
	for _, tc := range hostPortTests {
		t.Run(tc.name, func(t *testing.T) {
			host, port := ParseHostPort(tc.in, DefaultHandshakePort)
			require.Equal(t, tc.wantHost, host)
			require.Equal(t, tc.wantPort, port)
		})
	}
	t.Run("custom default", func(t *testing.T) {
		host, port := ParseHostPort("h", 6379)
		require.Equal(t, "h", host)
		require.Equal(t, 6379, port)
	})
}

func TestJoinHostPort(t *testing.T) {
	tests := []struct {
		name, host string
		port       int
		want       string
	}{
		{"IPv4", "10.0.0.1", 15873, "10.0.0.1:15873"},
		{"hostname", "host", 1, "host:1"},
		{"IPv6", "::1", 15873, "[::1]:15873"},
		{"IPv6 with scope", "fe80::1%eth0", 1234, "[fe80::1%eth0]:1234"},
		{"already bracketed", "[::1]", 1, "[::1]:1"},
		{"IPv4-mapped", "::ffff:10.0.0.1", 2, "[::ffff:10.0.0.1]:2"},
		{"empty", "", 3, ":3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := JoinHostPort(tc.host, tc.port)
			require.Equal(t, tc.want, got)
			if tc.name != "already bracketed" {
				host, port := ParseHostPort(got, DefaultHandshakePort)
				require.Equal(t, tc.host, host)
				require.Equal(t, tc.port, port)
			}
		})
	}
}
