package connlimit

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeConn is a net.Conn from a given remote IP that records its Close.
type fakeConn struct {
	net.Conn // nil: only RemoteAddr and Close are called
	remote   *net.TCPAddr
	closed   atomic.Bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c *fakeConn) Close() error         { c.closed.Store(true); return nil }

func from(ip string) *fakeConn {
	return &fakeConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
}

func admit(t *testing.T, l *Limiter, c *fakeConn) *Conn {
	t.Helper()
	lc, err := l.Admit(context.Background(), c)
	require.NoError(t, err)
	return lc
}

func TestNewRejectsNonPositive(t *testing.T) {
	for _, tc := range []struct {
		name          string
		max, per      int
		ok            bool
		wantMax, want int
	}{
		{"both", 4, 2, true, 4, 2},
		{"per peer lowered to max", 2, 8, true, 2, 2},
		{"zero max", 0, 1, false, 0, 0},
		{"zero per peer", 1, 0, false, 0, 0},
		{"negative", -1, -1, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.max, tc.per)
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantMax, l.Max())
			require.Equal(t, tc.want, l.PerPeer())
		})
	}
}

// Over the total, the longest-idle connection of the peer holding the most
// is shed; busy ones never are.
func TestShedsLongestIdleOfBiggestPeer(t *testing.T) {
	l, err := New(4, 4)
	require.NoError(t, err)
	a1, a2, a3 := from("10.0.0.1"), from("10.0.0.1"), from("10.0.0.1")
	b1 := from("10.0.0.2")
	la1 := admit(t, l, a1)
	time.Sleep(time.Millisecond)
	admit(t, l, b1) // older than a2, a3 but its peer holds fewer
	time.Sleep(time.Millisecond)
	la2 := admit(t, l, a2)
	time.Sleep(time.Millisecond)
	admit(t, l, a3)
	require.True(t, la1.Busy(), "a1 works: never shed")

	admit(t, l, from("10.0.0.3"))
	require.True(t, a2.closed.Load(), "the longest-idle idle one of the biggest peer")
	require.False(t, la2.Busy(), "a shed connection cannot turn busy")
	require.False(t, a1.closed.Load())
	require.False(t, b1.closed.Load())
	require.Equal(t, 4, l.Len())
	require.Equal(t, 3, l.IdleLen(), "a1 works")
	require.Equal(t, uint64(1), l.Shed())
	la2.Release() // its goroutine's release after the shed changes nothing
	require.Equal(t, 4, l.Len())
}

// Over its own bound a peer loses its longest-idle connection, or is refused
// when all of its connections work; other peers are not touched.
func TestPerPeerBound(t *testing.T) {
	l, err := New(10, 2)
	require.NoError(t, err)
	a1, a2 := from("10.0.0.1"), from("10.0.0.1")
	la1 := admit(t, l, a1)
	la2 := admit(t, l, a2)
	admit(t, l, from("10.0.0.2"))
	require.True(t, la2.Busy())
	admit(t, l, from("10.0.0.1"))
	require.True(t, a1.closed.Load())
	require.False(t, la1.Busy())

	require.Equal(t, 3, l.Len())
	for _, c := range l.peers[PeerOf(a2)].conns {
		require.True(t, c.Busy())
	}
	_, err = l.Admit(context.Background(), from("10.0.0.1"))
	require.ErrorIs(t, err, ErrPeerLimit)
	require.Equal(t, 3, l.Len())
}

// Full with every connection busy, Admit waits until one is released or
// turns idle, or its ctx ends, or the limiter closes.
func TestAdmitWaitsForRoom(t *testing.T) {
	l, err := New(1, 1)
	require.NoError(t, err)
	busy := admit(t, l, from("10.0.0.1"))
	require.True(t, busy.Busy())

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = l.Admit(ctx, from("10.0.0.2"))
	require.ErrorIs(t, err, context.DeadlineExceeded)

	for i, free := range []func(c *Conn){(*Conn).Release, (*Conn).Idle} {
		got := make(chan *Conn, 1)
		go func() {
			lc, err := l.Admit(context.Background(), from(fmt.Sprintf("10.0.1.%d", i)))
			if err != nil {
				lc = nil
			}
			got <- lc
		}()
		time.Sleep(20 * time.Millisecond)
		select {
		case <-got:
			t.Fatalf("admitted while full (%d)", l.Len())
		default:
		}
		free(busy)
		lc := <-got
		require.NotNil(t, lc)
		require.Equal(t, 1, l.Len())
		require.True(t, lc.Busy())
		busy = lc
	}

	done := make(chan error, 1)
	go func() {
		_, err := l.Admit(context.Background(), from("10.0.0.3"))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	l.Close()
	require.ErrorIs(t, <-done, ErrClosed)
	_, err = l.Admit(context.Background(), from("10.0.0.3"))
	require.ErrorIs(t, err, ErrClosed)
}

func TestCloseClosesAdmitted(t *testing.T) {
	l, err := New(4, 4)
	require.NoError(t, err)
	a, b := from("10.0.0.1"), from("::1")
	la := admit(t, l, a)
	admit(t, l, b)
	l.Close()
	require.True(t, a.closed.Load())
	require.True(t, b.closed.Load())
	la.Release()
	require.Equal(t, 1, l.Len())
}

func TestPeerOfUnmaps(t *testing.T) {
	c := &fakeConn{remote: &net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3")}}
	require.Equal(t, "10.1.2.3", PeerOf(c).String())
}
