package bindings

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/handshake"
)

// fakeRPC listens on 127.0.0.1 and answers every connection with reply
// after reading the request, then closes it (nil: read, then hold the
// connection until the test ends; reply of length 0: close at once). It
// returns "host:port".
func fakeRPC(t *testing.T, reply []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if reply != nil && len(reply) == 0 {
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 4096)); err != nil {
					return
				}
				if reply == nil {
					<-done
					return
				}
				_, _ = c.Write(reply) // then close: a short reply ends early
			}()
		}
	}()
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// frame is a handshake frame: length (type byte + body), type, body.
func frame(t handshake.MsgType, body string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(body)+1))
	return append(append(b, byte(t)), body...)
}

// TestClassifyHandshakeFailures checks the codes of failures a real
// handshake client meets, against what Mooncake 0.3.13.post1's send_probe
// returned for the same peer behaviour (python/tests/interop/test_return_codes.py
// compares the two engines end to end).
func TestClassifyHandshakeFailures(t *testing.T) {
	leakCheck(t)
	refused := func() string {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	tests := []struct {
		name string
		addr string
		code int
		kind string
	}{
		{"unknown host", "nosuchhost.invalid:15000", codeDNS, kindDNS},
		{"ipv6 literal, ipv4 only", "[::1]:15000", codeDNS, kindDNS},
		{"no host", ":15000", codeDNS, kindDNS},
		{"host with a colon", "127.0.0.1:1:15000", codeDNS, kindDNS},
		{"connection refused", refused(), codeSocket, kindSocket},
		{"closed before the reply", fakeRPC(t, []byte{}), codeSocket, kindSocket},
		{"reply of another type", fakeRPC(t, frame(handshake.Metadata, `{"status":"success"}`)), codeSocket, kindSocket},
		{"reply length 0", fakeRPC(t, make([]byte, 8)), codeSocket, kindSocket},
		{"reply too large", fakeRPC(t, binary.LittleEndian.AppendUint64(nil, 1<<40)), codeSocket, kindSocket},
		{"reply truncated", fakeRPC(t, binary.LittleEndian.AppendUint64(nil, 100)), codeSocket, kindSocket},
		{"reply not JSON", fakeRPC(t, frame(handshake.Probe, "nope")), codeMalformedJSON, kindMalformed},
		{"no reply in time", fakeRPC(t, nil), codeSocket, kindTimeout},
	}
	c := &handshake.Client{ConnectTimeout: time.Second, RecvTimeout: 200 * time.Millisecond}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.Probe(ctx, tc.addr)
			require.Error(t, err)
			code, kind := classify(err)
			require.Equal(t, tc.code, code, "%v", err)
			require.Equal(t, tc.kind, kind, "%v", err)
		})
	}
}

func TestClassifyDeadlines(t *testing.T) {
	sockTimeout := &net.OpError{Op: "read", Net: "tcp4", Err: os.ErrDeadlineExceeded}
	tests := []struct {
		name string
		err  error
		code int
		kind string
	}{
		{"deadline alone", fmt.Errorf("wait: %w", context.DeadlineExceeded), codeInvalidArgument, kindTimeout},
		{"socket deadline", fmt.Errorf("%w after 5s: %w", context.DeadlineExceeded, sockTimeout), codeSocket, kindTimeout},
		{"context ended a read", fmt.Errorf("%w (%w)", context.DeadlineExceeded, sockTimeout), codeSocket, kindTimeout},
		{"store timed out", fmt.Errorf("publish: %w: %w", engine.ErrMetadata, context.DeadlineExceeded), codeMetadata, kindTimeout},
		{"notify rejected", fmt.Errorf("notify: %w", handshake.ErrNotifyRejected), codeMetadata, kindMetadata},
		{"dns error", &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, codeDNS, kindDNS},
		{"invalid beats a deadline", fmt.Errorf("%w: %w", engine.ErrInvalidArgument, context.DeadlineExceeded), codeInvalidArgument, kindInvalid},
		{"closed beats a deadline", fmt.Errorf("%w: %w", engine.ErrClosed, context.DeadlineExceeded), codeInvalidArgument, kindClosed},
		{"other", errors.New("x"), codeInvalidArgument, kindFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, kind := classify(tc.err)
			require.Equal(t, tc.code, code)
			require.Equal(t, tc.kind, kind)
		})
	}
}
