package memreg

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// keys is a test registrar: it gives each chunk keys from a counter,
// fails the chunk at failAt, and remembers what is registered.
type keys struct {
	next   uint32
	failAt uint64
	live   map[uint64]bool
}

func (k *keys) reg(c *Chunk[string]) error {
	if c.Addr == k.failAt {
		return errors.New("injected")
	}
	k.next++
	c.LKeys, c.RKeys = []uint32{k.next, k.next + 100}, []uint32{k.next + 200, k.next + 300}
	c.Native = "mr"
	k.live[c.Addr] = true
	return nil
}

func (k *keys) dereg(cs []*Chunk[string]) error {
	for _, c := range cs {
		delete(k.live, c.Addr)
	}
	return nil
}

func TestTable(t *testing.T) {
	var tb Table[string]
	k := &keys{live: map[uint64]bool{}}
	_, _, ok := tb.Find(0x1000)
	require.False(t, ok, "an empty table finds nothing")

	r, err := tb.Register(0x10000, 0x2800, 0x1000, "cpu:0", k.reg, k.dereg)
	require.NoError(t, err)
	require.Len(t, r.Chunks, 3)
	require.Equal(t, []uint64{0x1000, 0x1000, 0x800}, []uint64{r.Chunks[0].Length, r.Chunks[1].Length, r.Chunks[2].Length})
	require.Len(t, k.live, 3)

	tests := []struct {
		name string
		addr uint64
		want uint64 // the chunk's address; 0 for none
	}{
		{name: "first byte", addr: 0x10000, want: 0x10000},
		{name: "inside the second chunk", addr: 0x11fff, want: 0x11000},
		{name: "last byte", addr: 0x127ff, want: 0x12000},
		{name: "one past the end", addr: 0x12800},
		{name: "below", addr: 0xffff},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, end, ok := tb.Find(tc.addr)
			if tc.want == 0 {
				require.False(t, ok)
				require.Nil(t, c)
				return
			}
			require.True(t, ok)
			require.Equal(t, tc.want, c.Addr)
			require.Equal(t, c.End(), end)
		})
	}

	t.Run("overlap", func(t *testing.T) {
		_, err := tb.Register(0x12000, 0x1000, 0x1000, "cpu:0", k.reg, k.dereg)
		require.ErrorIs(t, err, ErrRegistered)
		require.Len(t, k.live, 3, "reg was not called")
	})
	t.Run("adjacent", func(t *testing.T) {
		_, err := tb.Register(0x12800, 0x800, 0x1000, "cuda:1", k.reg, k.dereg)
		require.NoError(t, err)
		c, _, ok := tb.Find(0x12800)
		require.True(t, ok)
		require.Equal(t, "cuda:1", c.Location)
	})
	t.Run("a failed chunk rolls back the region", func(t *testing.T) {
		k.failAt = 0x22000
		_, err := tb.Register(0x20000, 0x4000, 0x1000, "cpu:0", k.reg, k.dereg)
		require.ErrorContains(t, err, "injected")
		require.Len(t, k.live, 4, "the first two chunks were deregistered")
		_, _, ok := tb.Find(0x20000)
		require.False(t, ok)
		_, ok = tb.Region(0x20000)
		require.False(t, ok)
	})
	t.Run("empty or wrapping", func(t *testing.T) {
		_, err := tb.Register(0x30000, 0, 0x1000, "cpu:0", k.reg, k.dereg)
		require.Error(t, err)
		_, err = tb.Register(^uint64(0)-5, 10, 0x1000, "cpu:0", k.reg, k.dereg)
		require.Error(t, err)
	})

	bufs, missing := tb.Buffers([]metadata.BufferDesc{{Addr: 0x10000, Name: "engine"}, {Addr: 0x42}, {Addr: 0x12800}})
	require.Equal(t, []uint64{0x42}, missing)
	require.Len(t, bufs, 4)
	require.Equal(t, metadata.BufferDesc{Name: "cpu:0", Addr: 0x10000, Length: 0x1000, LKey: []uint32{1, 101}, RKey: []uint32{201, 301}}, bufs[0])
	require.Equal(t, "cuda:1", bufs[3].Name)
	bufs[0].RKey[0] = 9
	c, _, _ := tb.Find(0x10000)
	require.EqualValues(t, 201, c.RKeys[0], "published keys are copies")

	r, err = tb.Unregister(0x10000)
	require.NoError(t, err)
	require.Len(t, r.Chunks, 3)
	_, _, ok = tb.Find(0x10000)
	require.False(t, ok)
	_, err = tb.Unregister(0x10000)
	require.ErrorIs(t, err, ErrNotRegistered)

	all := tb.Take()
	require.Len(t, all, 1)
	require.Equal(t, uint64(0x12800), all[0].Addr)
	_, _, ok = tb.Find(0x12800)
	require.False(t, ok)
}

func TestPublished(t *testing.T) {
	in := []metadata.BufferDesc{
		{Name: "c", Addr: 0x3000, Length: 0x1000, RKey: []uint32{3}},
		{Name: "a", Addr: 0x1000, Length: 0x1000, RKey: []uint32{1}},
		{Name: "nested", Addr: 0x1800, Length: 0x100, RKey: []uint32{9}},
		{Name: "no keys", Addr: 0x5000, Length: 0x1000},
		{Name: "empty", Addr: 0x7000, Length: 0, RKey: []uint32{7}},
		{Name: "wraps", Addr: ^uint64(0) - 10, Length: 100, RKey: []uint32{8}},
	}
	var end uint64
	p := Publish(in, func(b *metadata.BufferDesc) bool {
		if len(b.RKey) == 0 || b.Addr < end {
			return false
		}
		end = b.Addr + b.Length
		return true
	})
	require.Equal(t, 2, p.Len())
	require.Equal(t, "c", in[0].Name, "the caller's slice is not reordered")

	tests := []struct {
		name string
		addr uint64
		want string
		end  uint64
	}{
		{name: "start", addr: 0x1000, want: "a", end: 0x2000},
		{name: "inside the dropped nested buffer", addr: 0x1850, want: "a", end: 0x2000},
		{name: "gap", addr: 0x2000},
		{name: "last byte", addr: 0x3fff, want: "c", end: 0x4000},
		{name: "buffer without keys", addr: 0x5000},
		{name: "below every buffer", addr: 0x10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, e, ok := p.Find(tc.addr)
			if tc.want == "" {
				require.False(t, ok)
				return
			}
			require.True(t, ok)
			require.Equal(t, tc.want, b.Name)
			require.Equal(t, tc.end, e)
		})
	}
}
