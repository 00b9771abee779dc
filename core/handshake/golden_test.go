package handshake

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/stretchr/testify/require"
)

// Captures from real Mooncake wheels (testdata/mooncake/<version>/README.md
// says how they were made).
const goldenRoot = "../../testdata/mooncake"

func goldenVersions(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(goldenRoot, "*", "server"))
	require.NoError(t, err)
	require.NotEmpty(t, dirs, "no Mooncake captures under %s", goldenRoot)
	for i, d := range dirs {
		dirs[i] = filepath.Dir(d)
	}
	return dirs
}

func readGolden(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// tcpEngineHandlers answer as a TCP-only Mooncake engine does, except for
// Metadata, whose descriptor varies per capture.
func tcpEngineHandlers() map[MsgType]Handler {
	return map[MsgType]Handler{
		Connection: func(context.Context, MsgType, []byte) []byte {
			b, _ := HandShakeDesc{}.Marshal()
			return b
		},
		Notify: func(context.Context, MsgType, []byte) []byte { return NotifyAck() },
		Probe:  func(context.Context, MsgType, []byte) []byte { return ProbeReply() },
	}
}

// Our server answers each request Mooncake's server answered with the very
// bytes Mooncake sent.
func TestGoldenServerReplies(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{}, tcpEngineHandlers())
	for _, dir := range goldenVersions(t) {
		n := 0
		for _, name := range []string{"connection", "notify", "probe", "legacy"} {
			reqPath := filepath.Join(dir, "server", name+".request.bin")
			if _, err := os.Stat(reqPath); err != nil {
				continue
			}
			n++
			t.Run(filepath.Base(dir)+"/"+name, func(t *testing.T) {
				req := readGolden(t, reqPath)
				want := readGolden(t, filepath.Join(dir, "server", name+".reply.bin"))
				require.Equal(t, string(want), string(exchangeRaw(t, s, string(req))))

				// And both frames decode.
				for _, frame := range [][]byte{req, want} {
					typ, body, err := ReadFrame(bytes.NewReader(frame), 0)
					require.NoError(t, err)
					require.Equal(t, name == "legacy", typ == Legacy)
					require.True(t, json.Valid(body))
				}
			})
		}
		require.NotZero(t, n, "no handshake captures in %s", dir)
	}
}

// Requests Mooncake's server dropped without a byte, ours drops too.
func TestGoldenServerDrops(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{}, tcpEngineHandlers())
	for _, dir := range goldenVersions(t) {
		var manifest struct {
			Observations map[string]json.RawMessage `json:"observations"`
		}
		require.NoError(t, json.Unmarshal(readGolden(t, filepath.Join(dir, "manifest.json")), &manifest))
		n := 0
		for key, raw := range manifest.Observations {
			if !strings.HasPrefix(key, "server.rpc.") {
				continue
			}
			var obs struct {
				Request string `json:"request"`
				Reply   string `json:"reply"`
				Closed  bool   `json:"closed"`
			}
			if json.Unmarshal(raw, &obs) != nil || obs.Request == "" {
				continue // a measurement, not an exchange
			}
			n++
			t.Run(filepath.Base(dir)+"/"+key, func(t *testing.T) {
				require.Empty(t, obs.Reply)
				require.True(t, obs.Closed)
				req, err := hex.DecodeString(obs.Request)
				require.NoError(t, err)
				require.Empty(t, exchangeRaw(t, s, string(req)))
			})
		}
		require.NotZero(t, n, "no server.rpc observations in %s/manifest.json", dir)
	}
	var c Client
	require.NoError(t, c.Probe(testCtx(t), s.Addr().String()))
}

// Mooncake's server replies to Metadata with its descriptor in a type-1
// FastWriter frame, which our client reads.
func TestGoldenMetadataFrames(t *testing.T) {
	for _, dir := range goldenVersions(t) {
		paths, err := filepath.Glob(filepath.Join(dir, "*", "*metadata*.bin"))
		require.NoError(t, err)
		sub, err := filepath.Glob(filepath.Join(dir, "*", "*", "*metadata*.bin"))
		require.NoError(t, err)
		paths = append(paths, sub...)
		require.NotEmpty(t, paths)
		for _, p := range paths {
			t.Run(strings.TrimPrefix(p, goldenRoot+"/"), func(t *testing.T) {
				typ, body, err := ReadFrame(bytes.NewReader(readGolden(t, p)), 0)
				require.NoError(t, err)
				require.Equal(t, Metadata, typ)
				require.True(t, json.Valid(body))
				require.True(t, bytes.HasSuffix(body, []byte("}\n")), "FastWriter form")
			})
		}
	}
}

// Our client sends what Mooncake's client sent, and accepts Mooncake's
// replies.
func TestGoldenClientRequests(t *testing.T) {
	testutil.ResourceCheck(t)
	for _, dir := range goldenVersions(t) {
		paths, err := filepath.Glob(filepath.Join(dir, "client", "*", "*.request.bin"))
		require.NoError(t, err)
		n := 0
		for _, reqPath := range paths {
			name := strings.TrimSuffix(filepath.Base(reqPath), ".request.bin")
			if name != "probe" && name != "notify" {
				continue // data-port captures, or a descriptor that varies
			}
			n++
			t.Run(strings.TrimPrefix(reqPath, goldenRoot+"/"), func(t *testing.T) {
				want := readGolden(t, reqPath)
				reply := readGolden(t, strings.TrimSuffix(reqPath, ".request.bin")+".reply.bin")
				got := make(chan []byte, 1)
				addr, _ := rawServer(t, func(c net.Conn) {
					var req bytes.Buffer
					_, _, err := ReadFrame(io.TeeReader(c, &req), 0)
					got <- req.Bytes()
					if err == nil {
						_, _ = c.Write(reply)
						_ = c.(*net.TCPConn).CloseWrite()
					}
					_, _ = io.Copy(io.Discard, c)
				})
				var c Client
				switch name {
				case "probe":
					require.NoError(t, c.Probe(testCtx(t), addr))
				case "notify":
					require.NoError(t, c.SendNotify(testCtx(t), addr, NotifyMsg{Name: "job1", Msg: "hello"}))
				}
				require.Equal(t, string(want), string(<-got))
			})
		}
		require.NotZero(t, n, "no probe/notify client captures in %s", dir)
	}
}
