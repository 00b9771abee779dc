package bindings

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core"
)

// An async batch whose peer died ends FAILED, and the failure runs core's
// recovery: the dead segment's handle is dropped, so the next call
// re-resolves the peer (Mooncake checks only failed submits).
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
			b, err := NewEngine("127.0.0.1", "P2PHANDSHAKE", "", "tcp", "", environ(t))
			require.NoError(t, err)
			ma, mb := newMem(1<<16), newMem(1<<16)
			defer runtime.KeepAlive(ma)
			defer runtime.KeepAlive(mb)
			_, err = a.RegisterMemory(ma.addr(), ma.size(), "*")
			require.NoError(t, err)
			_, err = b.RegisterMemory(mb.addr(), mb.size(), "*")
			require.NoError(t, err)
			seg, err := b.Name()
			require.NoError(t, err)

			id, err := a.TransferAsync(seg, 1, ma.addr(), mb.addr(), 4096)
			require.NoError(t, err)
			require.NoError(t, tc.poll(t, a, id))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h, err := a.eng.OpenSegment(ctx, seg)
			require.NoError(t, err)
			require.NoError(t, a.eng.CheckSegmentStatus(h))

			_, err = b.Close()
			require.NoError(t, err)
			id, err = a.TransferAsync(seg, 1, ma.addr(), mb.addr(), 4096)
			require.NoError(t, err, "the cached descriptor still allows the range")
			code, kind, _ := parse(t, tc.poll(t, a, id))
			require.Equal(t, -102, code)
			require.Equal(t, kindSocket, kind)
			require.ErrorIs(t, a.eng.CheckSegmentStatus(h), core.ErrUnknownSegment, "the failed segment was dropped")
		})
	}
}

func TestNumGoroutine(t *testing.T) {
	n, err := NumGoroutine()
	require.NoError(t, err)
	require.Positive(t, n)
}
