package metadata

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// maxSeed keeps oversized table inputs (the MaxDescriptorSize case) out of
// the fuzz corpus.
const maxSeed = 1 << 16

func FuzzDecodeSegmentDesc(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	require.NoError(f, err)
	require.NotEmpty(f, files)
	for _, file := range files {
		f.Add(readGolden(f, filepath.Base(file)))
	}
	for _, tc := range acceptedDescs(f) {
		f.Add([]byte(tc.input))
	}
	for _, tc := range rejectedDescs() {
		if len(tc.input) <= maxSeed {
			f.Add([]byte(tc.input))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeSegmentDesc(data)
		if err != nil {
			require.Nil(t, d)
			require.True(t, errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupportedProtocol), "%v", err)
			return
		}
		out, err := d.Marshal(true)
		require.NoError(t, err, "a decoded descriptor must encode")
		d2, err := DecodeSegmentDesc(out)
		require.NoError(t, err, "re-decode %q", out)
		if d.Timestamp == "" {
			d.Timestamp = d2.Timestamp // Marshal filled it in
		}
		require.Equal(t, d, d2)

		out2, err := d2.Marshal(true)
		require.NoError(t, err)
		require.Equal(t, string(out), string(out2), "encoding must be stable")
		put, err := d2.Marshal(false)
		require.NoError(t, err)
		require.Equal(t, string(out[:len(out)-1]), string(put))
	})
}

func FuzzDecodeRPCMeta(f *testing.F) {
	f.Add(readGolden(f, "rpc_meta.fast.json"))
	f.Add(readGolden(f, "rpc_meta.put.json"))
	for _, tc := range rpcMetaTests {
		f.Add([]byte(tc.input))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeRPCMeta(data)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			require.Zero(t, m)
			return
		}
		require.NotEmpty(t, m.IPOrHostName)
		require.True(t, m.RPCPort >= 1 && m.RPCPort <= 65535)
		for _, newline := range []bool{true, false} {
			out, err := m.Marshal(newline)
			require.NoError(t, err)
			back, err := DecodeRPCMeta(out)
			require.NoError(t, err)
			require.Equal(t, m, back)
		}
	})
}

func FuzzParseConnString(f *testing.F) {
	for _, tc := range connStringTests {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConnString(s)
		if err != nil {
			require.Zero(t, c)
			require.True(t, errors.Is(err, ErrMalformed) || errors.Is(err, ErrUnsupportedBackend), "%v", err)
			return
		}
		switch c.Kind {
		case P2P:
			require.Equal(t, P2PHandshake, s)
			require.Empty(t, c.Endpoints)
			require.Empty(t, c.URL)
		case Etcd:
			require.NotEmpty(t, c.Endpoints)
			require.Empty(t, c.URL)
			for _, ep := range c.Endpoints {
				require.NotEmpty(t, ep)
				require.Equal(t, strings.TrimSpace(ep), ep)
				require.False(t, strings.ContainsAny(ep, ",;"), ep)
			}
			again, err := ParseConnString("etcd://" + strings.Join(c.Endpoints, ","))
			require.NoError(t, err)
			require.Equal(t, c, again)
		case HTTP:
			require.Equal(t, s, c.URL)
			require.True(t, strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://"))
			require.Empty(t, c.Endpoints)
		default:
			t.Fatalf("kind %v returned without error", c.Kind)
		}
	})
}

func FuzzParseHostPort(f *testing.F) {
	for _, tc := range hostPortTests {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, name string) {
		host, port := ParseHostPort(name, DefaultHandshakePort)
		require.True(t, port >= 1 && port <= 65535, "port %d", port)
		require.LessOrEqual(t, len(host), len(name))
		// Mooncake's format is ambiguous for hosts that are neither plain
		// names nor IPv6 literals ("a:b", "[x"); the rest must round-trip.
		if strings.ContainsAny(host, "[]") || (strings.Contains(host, ":") && !isIPv6(host)) {
			return
		}
		h2, p2 := ParseHostPort(JoinHostPort(host, port), DefaultHandshakePort)
		require.Equal(t, host, h2)
		require.Equal(t, port, p2)
	})
}
