package metadata

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Descriptors captured from a real Mooncake 0.3.13.post1 engine (see
// testdata/mooncake/0.3.13.post1/README.md; `make golden` recaptures them)
// decode, and re-encode to the same bytes: our encoder writes what
// Mooncake writes, field for field.
func TestMooncakeCapturedDescriptors(t *testing.T) {
	root := filepath.Join("..", "..", "testdata", "mooncake", "0.3.13.post1")
	var files []string
	for _, pattern := range []string{"server/metadata*.reply.bin", "client/*/metadata.request.bin", "etcd/mooncake_ram_*.bin", "http/*_PUT_mooncake_ram_*.bin"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		require.NoError(t, err)
		files = append(files, m...)
	}
	require.GreaterOrEqual(t, len(files), 8, "golden captures missing: run make golden")
	for _, f := range files {
		t.Run(filepath.Base(filepath.Dir(f))+"/"+filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			require.NoError(t, err)
			body := raw
			if len(raw) > 9 && raw[8] == 1 && raw[9] == '{' {
				body = raw[9:] // a handshake frame: u64 length, type byte 1
			}
			d, err := DecodeSegmentDesc(body)
			require.NoError(t, err)
			require.Equal(t, ProtocolTCP, d.Protocol)
			require.Equal(t, 2, d.TCPProtoVersion)
			require.NotEmpty(t, d.TCPDataHost, "0.3.13 publishes tcp_data_host")
			newline := body[len(body)-1] == '\n'
			out, err := d.Marshal(newline)
			require.NoError(t, err)
			require.Equal(t, string(body), string(out))
		})
	}
}
