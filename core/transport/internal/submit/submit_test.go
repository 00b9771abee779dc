package submit

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

func TestTarget(t *testing.T) {
	tests := []struct {
		name string
		peer transport.Peer
		want string
	}{
		{name: "no descriptor", peer: transport.Peer{Name: "host:1"}, want: "host:1"},
		{name: "descriptor without a name", peer: transport.Peer{Name: "host:1", Desc: &metadata.SegmentDesc{}}, want: "host:1"},
		{name: "the descriptor's name wins", peer: transport.Peer{Name: "alias", Desc: &metadata.SegmentDesc{Name: "seg"}}, want: "seg"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, Target(tc.peer)) })
	}
}

func TestParts(t *testing.T) {
	g := transport.NewGroup()
	reqs := []transport.Request{
		{Opcode: transport.Write, Length: 0},
		{Opcode: transport.Write, Remote: 0x1000, Length: 30},
		{Opcode: transport.Read, Remote: 0x2000, Length: 7},
	}
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = &transport.Task{}
		tasks[i].Init(r, g)
	}
	g.Add(len(tasks))
	bad := errors.New("not registered")
	parts := Parts("rdma", "b", tasks, func(task *transport.Task) ([]uint64, error) {
		if task.Length == 7 {
			return nil, bad
		}
		return []uint64{10, 10, 10}, nil
	})
	require.Equal(t, []uint64{10, 10, 10}, parts)
	require.Equal(t, transport.Completed, tasks[0].Status(), "zero length completes at once")
	require.Equal(t, transport.Pending, tasks[1].Status(), "started with its parts")
	require.Equal(t, transport.Failed, tasks[2].Status())
	require.ErrorIs(t, tasks[2].Err(), bad)
	require.ErrorContains(t, tasks[2].Err(), `rdma read of 7 bytes at 0x2000 on peer "b"`)
	for range 3 {
		tasks[1].PartDone(10, nil)
	}
	require.Zero(t, g.Pending())

	FailAll(tasks[:1], bad)
	require.ErrorIs(t, tasks[0].Err(), bad)
}

func TestCallWatch(t *testing.T) {
	testutil.ResourceCheck(t)
	t.Run("the context ends with parts unfinished", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c := NewCall(ctx)
		c.Expect(2)
		fired := make(chan struct{})
		c.Watch(func() { close(fired) })
		c.PartDone()
		cancel()
		<-fired
		require.ErrorIs(t, c.Err(), context.Canceled)
		c.PartDone()
	})
	t.Run("the last part releases the watch", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c := NewCall(ctx)
		c.Expect(1)
		var fired atomic.Bool
		c.Watch(func() { fired.Store(true) })
		c.PartDone()
		cancel()
		time.Sleep(10 * time.Millisecond)
		require.False(t, fired.Load())
	})
	t.Run("every part finished before the watch", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c := NewCall(ctx)
		c.Expect(1)
		c.PartDone()
		var fired atomic.Bool
		c.Watch(func() { fired.Store(true) })
		cancel()
		time.Sleep(10 * time.Millisecond)
		require.False(t, fired.Load())
	})
	t.Run("a context that never ends", func(t *testing.T) {
		c := NewCall(context.Background())
		c.Expect(1)
		c.Watch(func() { t.Error("never") })
		c.PartDone()
		require.NoError(t, c.Err())
	})
}
