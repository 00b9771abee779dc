package bindings

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/handshake"
)

// fakeDeadPeer is a P2P peer whose RPC listener answers and whose data
// port refuses connections (a peer whose data side died): every transfer
// to it fails on the connection, without an idle connection ever closing.
func fakeDeadPeer(t *testing.T, buf uintptr) string {
	t.Helper()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadPort := dead.Addr().(*net.TCPAddr).Port
	require.NoError(t, dead.Close())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	name := ln.Addr().String()
	desc := fmt.Sprintf(`{"name":%q,"protocol":"tcp","tcp_data_host":"127.0.0.1","tcp_data_port":%d,"tcp_proto_version":2,`+
		`"buffers":[{"name":"b","addr":%d,"length":65536}]}`, name, deadPort, buf)
	srv := handshake.NewServer(ln, handshake.ServerConfig{}, map[handshake.MsgType]handshake.Handler{
		handshake.Metadata: func(context.Context, handshake.MsgType, []byte) []byte { return []byte(desc) },
	})
	t.Cleanup(func() { srv.Close() })
	return name
}

// An async batch whose peer's connections fail ends FAILED, and the
// failure runs core's recovery: the bad segment's handle is dropped, so the
// next call re-resolves the peer (Mooncake checks only failed submits).
func TestFailedAsyncBatchRecoversItsSegment(t *testing.T) {
	for _, tc := range []struct {
		name string
		poll func(t *testing.T, a *Engine, id int64) error
	}{
		{"transfer_check_status", func(t *testing.T, a *Engine, id int64) error {
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				rc, err := a.CheckStatus(id)
				if err != nil || rc == 1 {
					return err
				}
				time.Sleep(time.Millisecond)
			}
			t.Fatal("the batch did not finish")
			return nil
		}},
		{"get_batch_transfer_status", func(t *testing.T, a *Engine, id int64) error {
			ids := []uint64{uint64(id)}
			defer runtime.KeepAlive(ids)
			_, err := a.WaitBatches(list(ids...), 1)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			a := newEngine(t)
			ma := newMem(1 << 16)
			defer runtime.KeepAlive(ma)
			_, err := a.RegisterMemory(ma.addr(), ma.size(), "*")
			require.NoError(t, err)
			const remote = 1 << 32
			seg := fakeDeadPeer(t, remote)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h, err := a.eng.OpenSegment(ctx, seg)
			require.NoError(t, err)
			require.NoError(t, a.eng.CheckSegmentStatus(h))

			id, err := a.TransferAsync(seg, 1, ma.addr(), remote, 4096)
			require.NoError(t, err, "the submit succeeds: the descriptor allows the range")
			code, kind, _ := parse(t, tc.poll(t, a, id))
			require.Equal(t, -102, code)
			require.Equal(t, kindSocket, kind)
			require.ErrorIs(t, a.eng.CheckSegmentStatus(h), engine.ErrUnknownSegment, "the failed segment was dropped")
		})
	}
}

func TestNumGoroutine(t *testing.T) {
	n, err := NumGoroutine()
	require.NoError(t, err)
	require.Positive(t, n)
}
