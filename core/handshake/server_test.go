package handshake

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// testTimeout bounds every wait in these tests; nothing should come close.
const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startServer serves handlers on a loopback port until the test ends.
func startServer(t *testing.T, cfg ServerConfig, handlers map[MsgType]Handler) *Server {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	s := NewServer(ln, cfg, handlers)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// dialRaw opens a plain TCP connection to s, closed when the test ends.
func dialRaw(t *testing.T, s *Server) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp4", s.Addr().String(), testTimeout)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(testTimeout)))
	return c.(*net.TCPConn)
}

// exchangeRaw writes wire on a new connection, half-closes it and returns
// everything the server sent until it closed.
func exchangeRaw(t *testing.T, s *Server, wire string) []byte {
	t.Helper()
	c := dialRaw(t, s)
	// The server may have closed (and reset) already, so write errors are
	// not failures; what matters is what comes back.
	_, _ = c.Write([]byte(wire))
	_ = c.CloseWrite()
	got, _ := io.ReadAll(c) // a reset after unread input is a close too
	return got
}

// typedFrame builds a frame by hand: u64 little-endian length, type, body.
func typedFrame(typ byte, body string) string {
	return string(binary.LittleEndian.AppendUint64(nil, uint64(len(body)+1))) + string(typ) + body
}

// engineHandlers answers as a P2P TCP engine would, recording notifies.
type engineHandlers struct {
	mu       sync.Mutex
	notifies []NotifyMsg
	conns    []MsgType
}

const testSegmentDesc = `{"name":"127.0.0.1:16000","protocol":"tcp","tcp_data_port":15000}` + "\n"

func (e *engineHandlers) handlers() map[MsgType]Handler {
	return map[MsgType]Handler{
		Connection: func(_ context.Context, t MsgType, payload []byte) []byte {
			req, err := DecodeHandShakeDesc(payload)
			if err != nil {
				return nil
			}
			e.mu.Lock()
			e.conns = append(e.conns, t)
			e.mu.Unlock()
			reply, _ := HandShakeDesc{LocalNICPath: req.PeerNICPath, PeerNICPath: req.LocalNICPath, QPNum: []uint32{7, 8}}.Marshal()
			return reply
		},
		Metadata: func(context.Context, MsgType, []byte) []byte { return []byte(testSegmentDesc) },
		Notify: func(_ context.Context, _ MsgType, payload []byte) []byte {
			n, err := DecodeNotifyMsg(payload)
			if err != nil {
				return nil
			}
			e.mu.Lock()
			e.notifies = append(e.notifies, n)
			e.mu.Unlock()
			return NotifyAck()
		},
		Probe: func(context.Context, MsgType, []byte) []byte { return ProbeReply() },
	}
}

func TestServerClientAllTypes(t *testing.T) {
	testutil.ResourceCheck(t)
	var e engineHandlers
	s := startServer(t, ServerConfig{}, e.handlers())
	ctx := testCtx(t)
	addr := s.Addr().String()
	var c Client

	req, err := HandShakeDesc{LocalNICPath: "a:1@mlx5_0", PeerNICPath: "b:2@mlx5_1", QPNum: []uint32{1, 2}}.Marshal()
	require.NoError(t, err)
	want := HandShakeDesc{LocalNICPath: "b:2@mlx5_1", PeerNICPath: "a:1@mlx5_0", QPNum: []uint32{7, 8}}
	for _, typ := range []MsgType{Connection, Legacy} {
		t.Run(typ.String(), func(t *testing.T) {
			reply, err := c.Call(ctx, addr, typ, req)
			require.NoError(t, err)
			got, err := DecodeHandShakeDesc(reply)
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
	require.Equal(t, []MsgType{Connection, Legacy}, e.conns, "legacy goes to the connection handler, typed as legacy")

	desc, err := c.FetchMetadata(ctx, addr, []byte(testSegmentDesc))
	require.NoError(t, err)
	require.Equal(t, testSegmentDesc, string(desc))

	require.NoError(t, c.SendNotify(ctx, addr, NotifyMsg{Name: "job1", Msg: "hello"}))
	require.Equal(t, []NotifyMsg{{Name: "job1", Msg: "hello"}}, e.notifies)

	require.NoError(t, c.Probe(ctx, addr))
}

// qpReply is engineHandlers' Connection reply to an empty desc.
const qpReply = `{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[7,8],"reply_msg":""}` + "\n"

// Replies on the wire: the request's type byte, untyped for legacy, then the
// server half-closes.
func TestServerRawReplies(t *testing.T) {
	testutil.ResourceCheck(t)
	var e engineHandlers
	s := startServer(t, ServerConfig{}, e.handlers())
	for _, tc := range []struct{ name, req, want string }{
		{"probe", "\x04\x00\x00\x00\x00\x00\x00\x00\x03{}\n", "\x16\x00\x00\x00\x00\x00\x00\x00\x03" + `{"status":"success"}` + "\n"},
		{"notify", "\x26\x00\x00\x00\x00\x00\x00\x00\x02" + notifyJob1, "\x24\x00\x00\x00\x00\x00\x00\x00\x02" + `{"name":"","notify_msg":"success"}` + "\n"},
		{"metadata", "\x04\x00\x00\x00\x00\x00\x00\x00\x01{}\n", typedFrame(1, testSegmentDesc)},
		{"legacy", "\x44\x00\x00\x00\x00\x00\x00\x00" + emptyDescPR, "\x71\x00\x00\x00\x00\x00\x00\x00" + qpReply},
		{"connection", "\x45\x00\x00\x00\x00\x00\x00\x00\x00" + emptyDescPR, "\x72\x00\x00\x00\x00\x00\x00\x00\x00" + qpReply},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, string(exchangeRaw(t, s, tc.req)))
		})
	}
}

func TestServerWithoutHandlersRepliesNull(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{}, map[MsgType]Handler{
		Notify: func(context.Context, MsgType, []byte) []byte { return nil },
	})
	ctx := testCtx(t)
	var c Client

	reply, err := c.FetchMetadata(ctx, s.Addr().String(), []byte("{}"))
	require.NoError(t, err)
	require.Equal(t, "null\n", string(reply))
	require.NoError(t, c.Probe(ctx, s.Addr().String()), "any JSON reply of type probe is success")
	require.ErrorIs(t, c.SendNotify(ctx, s.Addr().String(), NotifyMsg{Name: "n", Msg: "m"}), ErrNotifyRejected, "nil reply is null")
	require.Equal(t, "\x05\x00\x00\x00\x00\x00\x00\x00null\n", string(exchangeRaw(t, s, "\x03\x00\x00\x00\x00\x00\x00\x00{}\n")))
}

func TestSendNotifyRejected(t *testing.T) {
	testutil.ResourceCheck(t)
	for _, tc := range []struct{ name, reply string }{
		{"empty notify_msg", `{"name":"x","notify_msg":""}` + "\n"},
		{"no notify_msg", "{}\n"},
		{"null", "null\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, ServerConfig{}, map[MsgType]Handler{
				Notify: func(context.Context, MsgType, []byte) []byte { return []byte(tc.reply) },
			})
			var c Client
			require.ErrorIs(t, c.SendNotify(testCtx(t), s.Addr().String(), NotifyMsg{Name: "n"}), ErrNotifyRejected)
		})
	}
	t.Run("refusal with a reason", func(t *testing.T) {
		s := startServer(t, ServerConfig{}, map[MsgType]Handler{
			Notify: func(context.Context, MsgType, []byte) []byte {
				return NotifyRefusal("queue full: " + strings.Repeat("r", 1000))
			},
		})
		var c Client
		err := c.SendNotify(testCtx(t), s.Addr().String(), NotifyMsg{Name: "n"})
		require.ErrorIs(t, err, ErrNotifyRejected)
		require.ErrorContains(t, err, "queue full: rrr")
		require.Less(t, len(err.Error()), 400, "a peer's reason is clipped")
	})
	t.Run("not an object", func(t *testing.T) {
		s := startServer(t, ServerConfig{}, map[MsgType]Handler{
			Notify: func(context.Context, MsgType, []byte) []byte { return []byte("[1]\n") },
		})
		var c Client
		require.ErrorIs(t, c.SendNotify(testCtx(t), s.Addr().String(), NotifyMsg{Name: "n"}), ErrMalformed)
	})
}

// Bad requests are dropped without a reply, and the server goes on serving.
func TestServerSurvivesBadInput(t *testing.T) {
	testutil.ResourceCheck(t)
	var e engineHandlers
	s := startServer(t, ServerConfig{MaxFrame: 1 << 10}, e.handlers())
	hdr := func(n uint64) string { return string(binary.LittleEndian.AppendUint64(nil, n)) }
	for _, tc := range []struct{ name, wire string }{
		{"nothing", ""},
		{"malformed json", hdr(3) + "\x00{x"},
		{"empty typed body", hdr(1) + "\x03"},
		{"zero length", hdr(0)},
		{"over max frame", hdr(1<<10+1) + "\x03" + strings.Repeat(" ", 1<<10)},
		{"huge length", hdr(1<<62) + "\x03{}"},
		{"negative char type", hdr(3) + "\x80{}"},
		{"truncated length", "\x04\x00"},
		{"truncated body", hdr(100) + "\x00{\"local"},
		{"http", "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"},
		{"tls", "\x16\x03\x01\x05\xc2\x01\x00\x05\x03\x03"},
		{"legacy garbage", hdr(4) + "abcd"},
		{"typed garbage", hdr(5) + "\x01\xff\xfe\x00\x01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Empty(t, exchangeRaw(t, s, tc.wire))
			var c Client
			require.NoError(t, c.Probe(testCtx(t), s.Addr().String()), "server still serves")
		})
	}
}

func TestServerHandlerPanicDropsConnection(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{}, map[MsgType]Handler{
		Connection: func(context.Context, MsgType, []byte) []byte { panic("handler bug") },
		Probe:      func(context.Context, MsgType, []byte) []byte { return ProbeReply() },
	})
	ctx := testCtx(t)
	var c Client
	_, err := c.Call(ctx, s.Addr().String(), Connection, []byte(emptyDescHEAD))
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, c.Probe(ctx, s.Addr().String()))
}

// Unlike Mooncake's single-threaded daemon, a client that connects and sends
// nothing, or a slow handler, does not hold up other clients.
func TestServerSlowPeersDoNotBlockOthers(t *testing.T) {
	testutil.ResourceCheck(t)
	entered := make(chan struct{})
	s := startServer(t, ServerConfig{RecvTimeout: time.Hour}, map[MsgType]Handler{
		Connection: func(ctx context.Context, _ MsgType, _ []byte) []byte {
			close(entered)
			<-ctx.Done() // held until the server closes
			return nil
		},
		Probe: func(context.Context, MsgType, []byte) []byte { return ProbeReply() },
	})
	silent := dialRaw(t, s)
	_, err := silent.Write([]byte("\x10\x00\x00")) // part of a length, then nothing
	require.NoError(t, err)

	ctx := testCtx(t)
	var c Client
	held := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, s.Addr().String(), Connection, []byte("{}"))
		held <- err
	}()
	<-entered

	for range 5 {
		probeCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		require.NoError(t, c.Probe(probeCtx, s.Addr().String()))
		cancel()
	}
	require.NoError(t, s.Close())
	require.ErrorIs(t, <-held, io.EOF, "the server closed under the held call")
}

func TestServerRecvTimeoutDropsSilentClient(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{RecvTimeout: 50 * time.Millisecond}, nil)
	c := dialRaw(t, s)
	start := time.Now()
	n, err := c.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF)
	require.Less(t, time.Since(start), testTimeout/2)
}

// After replying, the server waits for the client to close, bounded by
// RecvTimeout; a client that never closes does not keep its slot.
func TestServerWaitForCloseIsBounded(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{RecvTimeout: 50 * time.Millisecond, MaxConns: 1}, nil)
	c := dialRaw(t, s)
	_, err := c.Write([]byte("\x04\x00\x00\x00\x00\x00\x00\x00\x03{}\n"))
	require.NoError(t, err)
	reply, err := io.ReadAll(c) // server half-closes, then closes after RecvTimeout
	require.NoError(t, err)
	require.Equal(t, "\x06\x00\x00\x00\x00\x00\x00\x00\x03null\n", string(reply))
	require.Eventually(t, func() bool { return liveConns(s) == 0 }, testTimeout, time.Millisecond)
}

func liveConns(s *Server) int { return s.conns.Len() }

func TestServerCloseIsIdempotentAndCancelsHandlers(t *testing.T) {
	testutil.ResourceCheck(t)
	entered := make(chan struct{})
	var cancelled atomic.Bool
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	s := NewServer(ln, ServerConfig{Logger: zaptest.NewLogger(t)}, map[MsgType]Handler{
		Metadata: func(ctx context.Context, _ MsgType, _ []byte) []byte {
			close(entered)
			<-ctx.Done()
			cancelled.Store(true)
			return []byte("{}")
		},
	})
	silent := dialRaw(t, s) // a live connection Close must end
	_ = silent

	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() {
		var c Client
		_, err := c.FetchMetadata(ctx, s.Addr().String(), []byte("{}"))
		done <- err
	}()
	<-entered
	require.NoError(t, s.Close())
	require.True(t, cancelled.Load())
	require.Error(t, <-done)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())

	_, err = net.DialTimeout("tcp4", s.Addr().String(), testTimeout)
	require.Error(t, err, "listener closed")
}

func TestServerConfigDefaults(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, ServerConfig{MaxFrame: MaxFrameLimit + 1}, nil)
	require.Equal(t, uint64(MaxFrameLimit), s.maxFrame)
	require.Equal(t, DefaultServerRecvTimeout, s.recvTimeout)
	s = startServer(t, ServerConfig{}, nil)
	require.Equal(t, uint64(DefaultMaxFrame), s.maxFrame)

	// No logger: a no-op one.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, NewServer(ln, ServerConfig{}, nil).Close())
}
