package batch

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/transport"
)

func TestIDsAreValidated(t *testing.T) {
	var tb Table
	b, err := tb.Alloc(2)
	require.NoError(t, err)
	require.NotZero(t, b.ID())
	require.Less(t, uint64(b.ID()), uint64(1)<<63)
	got, err := tb.Get(b.ID())
	require.NoError(t, err)
	require.Same(t, b, got)
	for _, bad := range []ID{0, b.ID() + 1, b.ID() ^ 1<<32, 1 << 63, ID(^uint64(0))} {
		_, err := tb.Get(bad)
		require.ErrorIs(t, err, ErrUnknownBatch, "id %#x", uint64(bad))
	}
	require.True(t, tb.Release(b))
	_, err = tb.Get(b.ID())
	require.ErrorIs(t, err, ErrUnknownBatch, "a freed id is unknown")
	require.False(t, tb.Release(b), "released twice")
	b2, err := tb.Alloc(1)
	require.NoError(t, err)
	require.NotEqual(t, b.ID(), b2.ID(), "a reused slot gets a new generation")
	_, err = tb.Alloc(MaxCapacity + 1)
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = tb.Alloc(-1)
	require.ErrorIs(t, err, ErrInvalidArgument)
}

func TestAddStatusNotify(t *testing.T) {
	var tb Table
	b, err := tb.Alloc(3)
	require.NoError(t, err)
	require.Equal(t, transport.Completed, b.Status(), "an empty batch is complete")
	calls := 0
	tasks, err := b.Add(make([]transport.Request, 2), func() error { calls++; return nil })
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	_, err = b.Add(make([]transport.Request, 2), nil)
	require.ErrorIs(t, err, ErrTooManyRequests)
	_, err = b.Add(make([]transport.Request, 1), func() error { return nil })
	require.ErrorIs(t, err, ErrInvalidArgument, "a second notify")
	require.Len(t, b.Tasks(), 2, "a refused Add adds nothing")
	require.Equal(t, transport.Waiting, b.Status())

	tasks[0].Fail(errors.New("boom"))
	require.Equal(t, transport.Waiting, b.Status(), "failed only once nothing is pending")
	tasks[1].Start(1)
	tasks[1].PartDone(8, nil)
	require.NoError(t, b.Wait(context.Background()))
	require.Equal(t, transport.Failed, b.Status())
	require.ErrorContains(t, b.FirstError(), "task 0: boom")
	require.NoError(t, b.Notify())
	require.NoError(t, b.Notify())
	require.Equal(t, 1, calls, "the notify runs once")
}
