package bindings

import (
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// notifiesInto is one Notifies call into a fresh buffer of capacity bytes:
// the notifies it took and the count it says is left, or need > 0 when
// the oldest notify needs a buffer of need bytes.
func notifiesInto(t *testing.T, e *Engine, capacity, max int64) (got [][2]string, left uint64, need int64) {
	t.Helper()
	buf := onHeap(make([]byte, capacity))
	n, err := e.Notifies(uintptr(unsafe.Pointer(&buf[0])), capacity, max)
	runtime.KeepAlive(buf)
	require.NoError(t, err)
	if n < 0 {
		return nil, 0, -n
	}
	if n == 0 {
		return nil, 0, 0 // nothing queued
	}
	require.GreaterOrEqual(t, n, int64(notifyHeader))
	taken := binary.LittleEndian.Uint64(buf[0:])
	left = binary.LittleEndian.Uint64(buf[8:])
	at := int64(notifyHeader)
	for range taken {
		nl := int64(binary.LittleEndian.Uint32(buf[at:]))
		ml := int64(binary.LittleEndian.Uint32(buf[at+4:]))
		at += notifyRecord
		got = append(got, [2]string{string(buf[at : at+nl]), string(buf[at+nl : at+nl+ml])})
		at += nl + ml
	}
	require.Equal(t, n, at, "the bytes written are the records")
	return got, left, 0
}

// drainNotifies drains e as get_notifies does: calls into a buffer of
// capacity bytes, grown when a notify needs more, until none is left.
func drainNotifies(t *testing.T, e *Engine, capacity int64) [][2]string {
	t.Helper()
	var all [][2]string
	max := int64(1 << 20)
	for {
		got, left, need := notifiesInto(t, e, capacity, max)
		if need > 0 {
			require.Greater(t, need, capacity)
			capacity = need
			continue
		}
		all = append(all, got...)
		if left == 0 || len(got) == 0 {
			return all
		}
		max = int64(left)
	}
}

// sendNotifies makes one 1-byte write from a to b per notify, each carrying
// one of ns.
func sendNotifies(t *testing.T, a, b *Engine, ns [][2]string) {
	t.Helper()
	ma, mb := newMem(16), newMem(16)
	_, err := a.RegisterMemory(ma.addr(), ma.size(), "*")
	require.NoError(t, err)
	_, err = b.RegisterMemory(mb.addr(), mb.size(), "*")
	require.NoError(t, err)
	seg, err := b.Name()
	require.NoError(t, err)
	for _, n := range ns {
		locals, remotes, lengths := []uint64{uint64(ma.addr())}, []uint64{uint64(mb.addr())}, []uint64{1}
		_, err = a.BatchTransferSyncNotify(seg, 1, list(locals...), list(remotes...), list(lengths...), 1, n[0], n[1])
		require.NoError(t, err)
		runtime.KeepAlive(keep(locals, remotes, lengths))
	}
	runtime.KeepAlive(ma)
	runtime.KeepAlive(mb)
}

// Notifies moves what fits, in order, and says how much room the oldest
// notify needs when it does not fit; draining in pieces loses nothing.
func TestNotifiesInPieces(t *testing.T) {
	leakCheck(t)
	a, b := newEngine(t), newEngine(t)
	ns := [][2]string{{"a", "1"}, {"b", strings.Repeat("2", 100)}, {"", ""}, {"d\x00é", "4\x00"}, {"e", strings.Repeat("5", 3000)}}
	sendNotifies(t, a, b, ns)

	got, left, need := notifiesInto(t, b, notifyHeader, 10)
	require.Empty(t, got, "a bare header holds no notify")
	require.Equal(t, int64(notifyHeader+notifyRecord+2), need)

	got, left, need = notifiesInto(t, b, 64, 10)
	require.Zero(t, need)
	require.Equal(t, ns[:1], got, "the second does not fit")
	require.Equal(t, uint64(4), left)

	got, left, _ = notifiesInto(t, b, 4096, 2)
	require.Equal(t, ns[1:3], got, "at most max")
	require.Equal(t, uint64(2), left)

	require.Equal(t, ns[3:], drainNotifies(t, b, 64))
	buf := onHeap(make([]byte, 64))
	n, err := b.Notifies(uintptr(unsafe.Pointer(&buf[0])), 64, 1)
	runtime.KeepAlive(buf)
	require.NoError(t, err)
	require.Zero(t, n, "an empty queue writes nothing")
}

func TestNotifiesRejectsBadArguments(t *testing.T) {
	leakCheck(t)
	e := newEngine(t)
	buf := onHeap(make([]byte, 64))
	addr := uintptr(unsafe.Pointer(&buf[0]))
	for _, tc := range []struct {
		name     string
		dst      uintptr
		capacity int64
		max      int64
	}{
		{"buffer below the header", addr, notifyHeader - 1, 1},
		{"null buffer", 0, 64, 1},
		{"max zero", addr, 64, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Notifies(tc.dst, tc.capacity, tc.max)
			_, kind, _ := parse(t, err)
			require.Equal(t, kindInvalid, kind)
		})
	}
	runtime.KeepAlive(buf)
}
