package memory

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAddRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Region
		want error
	}{
		{"zero length", Region{Addr: 0x1000, Location: "*"}, ErrInvalid},
		{"null address", Region{Length: 1, Location: "*"}, ErrInvalid},
		{"wraps", Region{Addr: 1 << 63, Length: 1 << 63, Location: "*"}, ErrInvalid},
		{"bad location", Region{Addr: 0x1000, Length: 1, Location: "gpu:0"}, ErrInvalid},
		{"negative ordinal", Region{Addr: 0x1000, Length: 1, Location: "cpu:-1"}, ErrInvalid},
		{"overlaps below", Region{Addr: 0x1fff, Length: 2, Location: "*"}, ErrOverlapped},
		{"overlaps above", Region{Addr: 0x2fff, Length: 2, Location: "*"}, ErrOverlapped},
		{"same start", Region{Addr: 0x2000, Length: 1, Location: "*"}, ErrOverlapped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := New()
			require.NoError(t, tb.Add([]Region{{Addr: 0x2000, Length: 0x1000, Location: "*"}}))
			require.ErrorIs(t, tb.Add([]Region{{Addr: 0x9000, Length: 1, Location: "*"}, tc.r}), tc.want)
			require.Equal(t, 1, tb.Len(), "a failed batch adds nothing")
		})
	}
}

func TestFindContainsDevice(t *testing.T) {
	tb := New()
	require.NoError(t, tb.Add([]Region{
		{Addr: 0x5000, Length: 0x1000, Location: "cuda:1", Device: 1},
		{Addr: 0x1000, Length: 0x1000, Location: "cpu:0", Device: Host},
		{Addr: 0x2000, Length: 0x1000, Location: "*", Device: Host}, // touches the one before
	}))
	require.True(t, tb.Contains(0x1000, 0x1000))
	require.True(t, tb.Contains(0x1fff, 1))
	require.False(t, tb.Contains(0x1fff, 2), "touching regions are two regions")
	require.False(t, tb.Contains(0x1000, 0), "empty ranges are not inside anything")
	require.False(t, tb.Contains(0xfff, 2))
	require.False(t, tb.Contains(0x6000, 1))
	require.False(t, tb.Contains(^uint64(0), 2), "wrapping ranges")
	require.Equal(t, 1, tb.Device(0x5800, 16))
	require.Equal(t, Host, tb.Device(0x1000, 16))
	require.Equal(t, Host, tb.Device(0x9000, 16))
	var order []uint64
	for _, r := range tb.Regions() {
		order = append(order, r.Addr)
	}
	require.Equal(t, []uint64{0x5000, 0x1000, 0x2000}, order, "registration order")
}

func TestRemove(t *testing.T) {
	tb := New()
	var rs []Region
	for i := range 8 {
		rs = append(rs, Region{Addr: uint64(0x10000 * (i + 1)), Length: 0x100, Location: "*"})
	}
	require.NoError(t, tb.Add(rs))
	_, err := tb.Remove([]uint64{0x10000, 0x10001})
	require.ErrorIs(t, err, ErrNotRegistered, "only start addresses")
	_, err = tb.Remove([]uint64{0x20000, 0x30000, 0x20000})
	require.ErrorIs(t, err, ErrInvalid, "listed twice")
	require.Equal(t, 8, tb.Len(), "a failed removal removes nothing")

	starts := func(rs []Region) (out []uint64) {
		for _, r := range rs {
			out = append(out, r.Addr)
		}
		return out
	}
	got, err := tb.Remove([]uint64{0x50000})
	require.NoError(t, err)
	require.Equal(t, []uint64{0x50000}, starts(got))
	got, err = tb.Remove([]uint64{0x80000, 0x10000, 0x30000})
	require.NoError(t, err)
	require.Equal(t, []uint64{0x80000, 0x10000, 0x30000}, starts(got))
	require.Equal(t, []uint64{0x20000, 0x40000, 0x60000, 0x70000}, starts(tb.Regions()))
	require.False(t, tb.Contains(0x50000, 1))
	require.True(t, tb.Contains(0x60000, 0x100))
}

// BenchmarkRemoveOneByOne is unregister_memory called once per buffer, as
// KV connectors do per layer at shutdown.
func BenchmarkRemoveOneByOne(b *testing.B) {
	const n = 2048
	rs := make([]Region, n)
	for i := range rs {
		rs[i] = Region{Addr: uint64(i+1) << 20, Length: 1 << 16, Location: "*"}
	}
	b.ReportAllocs()
	for b.Loop() {
		tb := New()
		if err := tb.Add(rs); err != nil {
			b.Fatal(err)
		}
		for i := range rs {
			if _, err := tb.Remove([]uint64{rs[i].Addr}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// Remove refuses new pins at once; Wait returns when the pins held are
// released, or when its timeout or its context ends first.
func TestRemoveWaitsForPins(t *testing.T) {
	tbl := New()
	rs := []Region{{Addr: 0x1000, Length: 0x1000, Location: "*"}, {Addr: 0x4000, Length: 0x1000, Location: "*"}}
	require.NoError(t, tbl.Add(rs))

	// Nobody holds it: Wait returns at once, whatever the timeout.
	_, err := tbl.Remove([]uint64{0x4000})
	require.NoError(t, err)
	require.NoError(t, tbl.Wait(context.Background(), 0, []uint64{0x4000}))

	p, ok := tbl.Pin(0x1800, 0x100)
	require.True(t, ok)
	_, err = tbl.Remove([]uint64{0x1000})
	require.NoError(t, err)
	_, ok = tbl.Pin(0x1800, 0x100)
	require.False(t, ok, "a removed region grants no pin")

	// Held past the timeout.
	start := time.Now()
	err = tbl.Wait(context.Background(), 20*time.Millisecond, []uint64{0x1000})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)

	// Held while the context is cancelled.
	require.NoError(t, tbl.Restore([]Region{rs[0]}))
	p2, ok := tbl.Pin(0x1800, 0x100)
	require.True(t, ok)
	_, err = tbl.Remove([]uint64{0x1000})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, tbl.Wait(ctx, time.Minute, []uint64{0x1000}), context.Canceled)

	// Released while waiting.
	require.NoError(t, tbl.Restore([]Region{rs[0]}))
	p3, ok := tbl.Pin(0x1800, 0x100)
	require.True(t, ok)
	_, err = tbl.Remove([]uint64{0x1000})
	require.NoError(t, err)
	time.AfterFunc(10*time.Millisecond, p3.Unpin)
	require.NoError(t, tbl.Wait(context.Background(), time.Minute, []uint64{0x1000}))
	p.Unpin()
	p2.Unpin()
	require.Zero(t, tbl.Len())
}
