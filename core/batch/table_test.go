package batch

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/metrics"
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
	tasks, err := b.Add(make([]transport.Request, 2), func() error { calls++; return nil }, runOf(2))
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	_, err = b.Add(make([]transport.Request, 2), nil, runOf(2))
	require.ErrorIs(t, err, ErrTooManyRequests)
	_, err = b.Add(make([]transport.Request, 1), func() error { return nil }, runOf(1))
	require.ErrorIs(t, err, ErrInvalidArgument, "a second notify")
	_, err = b.Add(make([]transport.Request, 1), nil, runOf(2))
	require.ErrorIs(t, err, ErrInvalidArgument, "runs that do not cover the requests")
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

func runOf(n int) []Run { return []Run{{Tasks: n}} }

// Runs attribute every task, in order, across Adds.
func TestRuns(t *testing.T) {
	var tb Table
	b, err := tb.Alloc(10)
	require.NoError(t, err)
	require.Equal(t, 1, tb.Len())
	s := metrics.New(metrics.Config{})
	a, c := s.Link("a", "tcp"), s.Link("c", "tcp")
	_, err = b.Add(make([]transport.Request, 3), nil, []Run{{Tasks: 1, Link: a, Start: 1}, {Tasks: 2, Link: c, Start: 1}})
	require.NoError(t, err)
	_, err = b.Add(make([]transport.Request, 4), nil, []Run{{Tasks: 4, Link: a, Start: 2}})
	require.NoError(t, err)
	tasks, runs := b.Runs()
	require.Len(t, tasks, 7)
	require.Equal(t, []Run{{1, a, 1}, {2, c, 1}, {4, a, 2}}, runs)
	require.True(t, tb.Release(b))
	require.Zero(t, tb.Len())
	require.False(t, tb.Release(b))
	require.Zero(t, tb.Len(), "released once")
}
