package handshake

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/stretchr/testify/require"
)

// rawServer accepts on a loopback port and runs serve on each connection, in
// goroutines that end with the test. It returns the address and a count of
// accepted connections.
func rawServer(t *testing.T, serve func(net.Conn)) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	var accepted atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(testTimeout))
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), &accepted
}

// replyWith reads one request, answers with wire and half-closes, as
// Mooncake's daemon does, then waits for the client to close.
func replyWith(wire string) func(net.Conn) {
	return func(c net.Conn) {
		if _, _, err := ReadFrame(c, 0); err != nil {
			return
		}
		_, _ = c.Write([]byte(wire))
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	}
}

// neverReply reads the request, then waits for the client to go.
func neverReply(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

func TestClientReplyChecks(t *testing.T) {
	testutil.ResourceCheck(t)
	for _, tc := range []struct {
		name  string
		typ   MsgType
		reply string
		want  error
	}{
		{"probe answered as metadata", Probe, typedFrame(1, `{"status":"success"}`), ErrUnexpectedType},
		{"probe answered untyped", Probe, "\x03\x00\x00\x00\x00\x00\x00\x00{}\n", ErrUnexpectedType},
		{"legacy answered typed", Legacy, typedFrame(0, "{}"), ErrUnexpectedType},
		{"unknown reply type", Probe, typedFrame(0x80, "{}"), ErrUnknownType},
		{"reply not json", Probe, typedFrame(3, "{status"), ErrMalformed},
		{"reply empty", Probe, typedFrame(3, ""), ErrMalformed},
		{"reply too large", Probe, "\x01\x00\x00\x00\x00\x00\x00\x01\x03", ErrFrameTooLarge},
		{"reply zero length", Probe, "\x00\x00\x00\x00\x00\x00\x00\x00", ErrEmptyFrame},
		{"reply truncated", Probe, "\x10\x00\x00\x00\x00\x00\x00\x00\x03{", ErrTruncated},
		{"no reply", Probe, "", io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := rawServer(t, replyWith(tc.reply))
			var c Client
			reply, err := c.Call(testCtx(t), addr, tc.typ, []byte("{}\n"))
			require.ErrorIs(t, err, tc.want)
			require.ErrorContains(t, err, addr, "errors name the peer")
			require.Nil(t, reply)
		})
	}
}

func TestClientLegacyCall(t *testing.T) {
	testutil.ResourceCheck(t)
	var e engineHandlers
	s := startServer(t, ServerConfig{}, e.handlers())
	var c Client
	reply, err := c.Call(testCtx(t), s.Addr().String(), Legacy, []byte(emptyDescPR))
	require.NoError(t, err)
	require.Equal(t, qpReply, string(reply))
}

func TestClientRefusesBadRequests(t *testing.T) {
	testutil.ResourceCheck(t)
	addr, accepted := rawServer(t, neverReply)
	for _, tc := range []struct {
		name    string
		typ     MsgType
		payload string
		want    error
	}{
		{"body not json", Metadata, "{", ErrMalformed},
		{"empty body", Metadata, "", ErrMalformed},
		{"unknown type", MsgType(9), "{}", ErrUnknownType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Client
			_, err := c.Call(testCtx(t), addr, tc.typ, []byte(tc.payload))
			require.ErrorIs(t, err, tc.want)
		})
	}
	var c Client
	_, err := c.FetchMetadata(testCtx(t), addr, nil)
	require.ErrorIs(t, err, ErrMalformed)
	require.Zero(t, accepted.Load(), "nothing was sent")
}

func TestClientInvalidAddress(t *testing.T) {
	for _, tc := range []struct{ name, addr string }{
		{"no port", "127.0.0.1"},
		{"empty port", "127.0.0.1:"},
		{"port zero", "127.0.0.1:0"},
		{"port too big", "127.0.0.1:65536"},
		{"named port", "127.0.0.1:http"},
		{"no host", ":15000"},
		{"bare ipv6", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Client
			_, err := c.Call(testCtx(t), tc.addr, Probe, ProbeRequest())
			require.ErrorIs(t, err, ErrInvalidAddress)
		})
	}
}

func TestClientAddressFamily(t *testing.T) {
	var v4, v6 Client
	v6.IPv6 = true
	_, err := v4.resolve(testCtx(t), "[::1]:15000")
	require.Error(t, err, "MC_USE_IPV6 off: IPv4 only")
	_, err = v6.resolve(testCtx(t), "127.0.0.1:15000")
	require.Error(t, err, "MC_USE_IPV6 on: IPv6 only")

	got, err := v4.resolve(testCtx(t), "127.0.0.1:15000")
	require.NoError(t, err)
	require.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15000")}, got)
	got, err = v6.resolve(testCtx(t), "[::1]:15000")
	require.NoError(t, err)
	require.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("[::1]:15000")}, got)
}

func TestClientIPv6Loopback(t *testing.T) {
	testutil.ResourceCheck(t)
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback on this host: %v", err)
	}
	s := NewServer(ln, ServerConfig{}, nil)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	c := Client{IPv6: true}
	require.NoError(t, c.Probe(testCtx(t), s.Addr().String()))
}

// Like Mooncake, the client goes on to the next address after a socket error
// but stops at a malformed reply.
func TestClientTriesEachAddress(t *testing.T) {
	testutil.ResourceCheck(t)
	good, goodCount := rawServer(t, replyWith(typedFrame(3, "{}")))
	malformed, _ := rawServer(t, replyWith(typedFrame(3, "{")))
	mismatched, _ := rawServer(t, replyWith(typedFrame(1, "{}")))
	dead := deadAddr(t)
	frame, err := appendFrame(nil, Probe, ProbeRequest())
	require.NoError(t, err)
	ap := netip.MustParseAddrPort
	var c Client

	reply, err := c.callAddrs(testCtx(t), []netip.AddrPort{ap(dead), ap(mismatched), ap(good)}, Probe, frame)
	require.NoError(t, err)
	require.Equal(t, "{}", string(reply))
	require.Equal(t, int32(1), goodCount.Load())

	_, err = c.callAddrs(testCtx(t), []netip.AddrPort{ap(malformed), ap(good)}, Probe, frame)
	require.ErrorIs(t, err, ErrMalformed)
	require.Equal(t, int32(1), goodCount.Load(), "stopped at the malformed reply")

	_, err = c.callAddrs(testCtx(t), []netip.AddrPort{ap(good), ap(dead)}, Probe, frame)
	require.NoError(t, err)

	_, err = c.callAddrs(testCtx(t), []netip.AddrPort{ap(mismatched), ap(dead)}, Probe, frame)
	require.ErrorContains(t, err, dead, "the last error is returned")
	require.NotErrorIs(t, err, ErrUnexpectedType)
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func TestClientRecvTimeout(t *testing.T) {
	testutil.ResourceCheck(t)
	addr, _ := rawServer(t, neverReply)
	c := Client{RecvTimeout: 50 * time.Millisecond}
	start := time.Now()
	err := c.Probe(testCtx(t), addr)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), testTimeout/2)
}

func TestClientContextDeadline(t *testing.T) {
	testutil.ResourceCheck(t)
	addr, _ := rawServer(t, neverReply)
	var c Client // RecvTimeout 60 s: the context's deadline is earlier
	ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Probe(ctx, addr)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), testTimeout/2)
}

func TestClientContextCancel(t *testing.T) {
	testutil.ResourceCheck(t)
	got := make(chan struct{})
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, _, err := ReadFrame(c, 0); err == nil {
			close(got)
		}
		_, _ = io.Copy(io.Discard, c)
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() {
		<-got
		cancel()
	}()
	var c Client
	err := c.Probe(ctx, addr)
	require.ErrorIs(t, err, context.Canceled)

	_, err = c.Call(ctx, addr, Probe, ProbeRequest())
	require.ErrorIs(t, err, context.Canceled, "an ended context stops a call before it starts")
}

// The client closes its connection right after the reply, so a server that
// waits for the close (as Mooncake's does) is not held.
func TestClientClosesAfterReply(t *testing.T) {
	testutil.ResourceCheck(t)
	closed := make(chan error, 1)
	addr, _ := rawServer(t, func(c net.Conn) {
		if _, _, err := ReadFrame(c, 0); err != nil {
			closed <- err
			return
		}
		_, _ = c.Write([]byte(typedFrame(3, "{}")))
		_, err := c.Read(make([]byte, 1))
		closed <- err
	})
	var c Client
	require.NoError(t, c.Probe(testCtx(t), addr))
	require.ErrorIs(t, <-closed, io.EOF)
}

func TestClientLargeReply(t *testing.T) {
	testutil.ResourceCheck(t)
	big := `"` + strings.Repeat("x", 2<<20) + `"`
	s := startServer(t, ServerConfig{}, map[MsgType]Handler{
		Metadata: func(context.Context, MsgType, []byte) []byte { return []byte(big) },
	})
	var c Client
	_, err := c.FetchMetadata(testCtx(t), s.Addr().String(), []byte("{}"))
	require.ErrorIs(t, err, ErrFrameTooLarge)

	c.MaxFrame = 4 << 20
	reply, err := c.FetchMetadata(testCtx(t), s.Addr().String(), []byte("{}"))
	require.NoError(t, err)
	require.Equal(t, big, string(reply))
}
