package segment

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

func peerWith(name string, bufs ...metadata.BufferDesc) transport.Peer {
	return transport.Peer{Name: name, Host: "127.0.0.1", Desc: &metadata.SegmentDesc{Name: name, Protocol: "tcp", TCPDataPort: 1, Buffers: bufs}}
}

func TestTableHandles(t *testing.T) {
	var tb Table
	a := tb.Put("a", peerWith("a"), nil, 0, nil)
	b := tb.Put("b", peerWith("b"), nil, 0, nil)
	require.Equal(t, Handle(1), a.Handle, "handles start at 1: 0 is Mooncake's local segment")
	require.Equal(t, Handle(2), b.Handle)
	a2 := tb.Put("a", peerWith("a"), nil, 3, nil)
	require.Equal(t, a.Handle, a2.Handle, "a refresh keeps the handle")
	got, err := tb.Get(a.Handle)
	require.NoError(t, err)
	require.Same(t, a2, got)
	_, ok := tb.ByPeer("b")
	require.True(t, ok)
	require.ElementsMatch(t, []*Segment{a2, b}, tb.All())

	gone, ok := tb.Remove(a.Handle)
	require.True(t, ok)
	require.Same(t, a2, gone)
	_, err = tb.Get(a.Handle)
	require.ErrorIs(t, err, ErrUnknownSegment)
	_, ok = tb.Lookup("a")
	require.False(t, ok)
	_, ok = tb.Remove(a.Handle)
	require.False(t, ok)
	_, err = tb.Get(0)
	require.ErrorIs(t, err, ErrUnknownSegment)
	require.Equal(t, Handle(3), tb.Put("a", peerWith("a"), nil, 0, nil).Handle, "a closed handle is never reused")
}

func TestRemoteContains(t *testing.T) {
	var tb Table
	s := tb.Put("p", peerWith("p",
		metadata.BufferDesc{Addr: 0x3000, Length: 0x1000},
		metadata.BufferDesc{Addr: 0x1000, Length: 0x1000},
		metadata.BufferDesc{Addr: 0x2000, Length: 0x800},  // touches the one before
		metadata.BufferDesc{Addr: 1<<64 - 16, Length: 32}, // wraps: ignored
	), nil, 0, nil)
	for _, tc := range []struct {
		addr, n uint64
		want    bool
	}{
		{0x1000, 0x1800, true}, // across two touching buffers
		{0x1000, 0x1801, false},
		{0x2800, 1, false}, // the gap
		{0x3000, 0x1000, true},
		{0xfff, 2, false},
		{0x3fff, 2, false},
		{1<<64 - 8, 4, false},
		{0x3000, 1 << 63, false},
	} {
		require.Equal(t, tc.want, s.RemoteContains(tc.addr, tc.n), "[%#x, +%#x)", tc.addr, tc.n)
	}
}

func TestSameIncarnation(t *testing.T) {
	withInstance := func(p transport.Peer, id string) transport.Peer {
		d := *p.Desc
		d.Extra = map[string]json.RawMessage{metadata.InstanceKey: json.RawMessage(`"` + id + `"`)}
		p.Desc = &d
		return p
	}
	buf := metadata.BufferDesc{Addr: 0x1000, Length: 0x1000}
	a := &Segment{Peer: withInstance(peerWith("x", buf), "1")}
	require.True(t, SameIncarnation(a, &Segment{Peer: withInstance(peerWith("x"), "1")}), "the id decides")
	require.False(t, SameIncarnation(a, &Segment{Peer: withInstance(peerWith("x", buf), "2")}))
	require.False(t, SameIncarnation(a, &Segment{Peer: peerWith("x", buf)}), "one carries an id, one does not")
	// Mooncake peers carry none: endpoint and buffers decide.
	m := &Segment{Peer: peerWith("m", buf)}
	require.True(t, SameIncarnation(m, &Segment{Peer: peerWith("m", buf)}))
	require.False(t, SameIncarnation(m, &Segment{Peer: peerWith("m", metadata.BufferDesc{Addr: 0x9000, Length: 0x1000})}))
	require.Len(t, metadata.NewInstanceID(), 16)
	require.NotEqual(t, metadata.NewInstanceID(), metadata.NewInstanceID())
}
