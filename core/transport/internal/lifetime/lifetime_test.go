package lifetime

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

func TestEndWaitsForEntryPoints(t *testing.T) {
	testutil.ResourceCheck(t)
	l := New()
	require.True(t, l.Enter())
	ended := make(chan struct{})
	go func() {
		l.End()
		close(ended)
	}()
	require.Eventually(t, l.Ended, time.Second, time.Millisecond)
	require.Error(t, l.Context().Err(), "the context ends when End starts")
	select {
	case <-ended:
		t.Fatal("End returned while an entry point was inside")
	case <-time.After(20 * time.Millisecond):
	}
	l.Exit()
	<-ended
	require.False(t, l.Enter(), "no entry after End")
}

func TestGoAndWait(t *testing.T) {
	testutil.ResourceCheck(t)
	l := New()
	var ran atomic.Int32
	release := make(chan struct{})
	require.True(t, l.Go(func() { <-release; ran.Add(1) }))
	l.End()
	require.False(t, l.Go(func() { ran.Add(1) }), "no goroutine after End")
	close(release)
	l.Wait()
	require.EqualValues(t, 1, ran.Load())
}

func TestDrain(t *testing.T) {
	testutil.ResourceCheck(t)
	tests := []struct {
		name      string
		posted    int64
		completed int64
		want      bool
	}{
		{name: "nothing in flight", want: true},
		{name: "completes during the drain", posted: 3, completed: 3, want: true},
		{name: "stays in flight", posted: 3, completed: 2, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := New()
			l.Posted(tc.posted)
			l.End()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for range tc.completed {
					time.Sleep(time.Millisecond)
					l.Completed(1)
				}
			}()
			require.Equal(t, tc.want, l.Drain(time.Now().Add(200*time.Millisecond)))
			<-done
			require.Equal(t, tc.posted-tc.completed, l.InFlight())
		})
	}
}
