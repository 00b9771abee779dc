package engine

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Once a transfer is reported failed, or its batch freed, no byte of it is
// written into local memory afterwards, even when the peer it read from
// resumes: the application may already reuse the buffer. (Issue 17 item 1:
// an async READ from a SIGSTOPped peer failed at its deadline, the
// application refilled the buffer, the peer resumed, and all of it was
// overwritten; the freed id still polled as in flight.)
func TestNoLateDataAfterFailure(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, e *Engine, name string, reqs []Request) BatchID
	}{
		{"get_batch_transfer_status", func(t *testing.T, e *Engine, name string, reqs []Request) BatchID {
			id, err := e.SubmitAsync(name, reqs)
			require.NoError(t, err)
			start := time.Now()
			require.Error(t, e.WaitAsync([]BatchID{id}))
			require.Less(t, time.Since(start), 5*time.Second)
			return id
		}},
		{"transfer_sync_read", func(t *testing.T, e *Engine, name string, reqs []Request) BatchID {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			require.ErrorIs(t, e.TransferTo(ctx, name, reqs, nil), context.DeadlineExceeded)
			return 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ResourceCheck(t)
			cmd, name, base, _, _ := startTarget(t)
			e := testEngine{envOverride: func(env *config.Env) { env.TransferTimeout = time.Second }}.mustStart(t)
			const page, pages = 4096, 16384
			local := testutil.Mmap(t, page*pages)
			require.NoError(t, e.RegisterMemory(addr(local), uint64(len(local)), "*"))
			reqs := make([]Request, pages) // scattered: the target's pages in reverse order
			for i := range reqs {
				reqs[i] = Request{Opcode: transport.Read, Local: addr(local) + uintptr(i*page), Remote: base + uint64((pages-1-i)*page), Length: page}
			}
			require.NoError(t, e.TransferTo(ctxT(t), name, reqs[:1], nil)) // connected and resolved

			require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
			cont := sync.OnceFunc(func() { _ = cmd.Process.Signal(syscall.SIGCONT) })
			defer cont()
			id := tc.run(t, e, name, reqs)

			// The application reuses the buffer; the peer resumes and the
			// bytes it had queued reach our socket, to be dropped.
			reused := bytes.Repeat([]byte{0xC3}, len(local))
			copy(local, reused)
			if id != 0 {
				_, err := e.PollAsync(id)
				require.ErrorIs(t, err, ErrUnknownBatch, "a freed id is unknown, not in flight")
			}
			cont()
			time.Sleep(500 * time.Millisecond)
			require.True(t, bytes.Equal(reused, local), "bytes of the failed transfer landed after it was reported")
			// The peer is fine again.
			require.NoError(t, e.TransferTo(ctxT(t), name, reqs[:8], nil), fmt.Sprint("after SIGCONT"))
		})
	}
}
