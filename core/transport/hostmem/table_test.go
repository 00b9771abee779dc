//go:build linux

package hostmem

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPinProtocol runs the table's two sides in one process: an exported
// region is found and pinned; its removal waits for the pin; once it has
// begun no new pin is granted; a reused slot does not honour an old
// snapshot; an initiator whose pin area is dropped stops delaying removals.
func TestPinProtocol(t *testing.T) {
	x, err := newExportTable(4)
	require.NoError(t, err)
	defer x.close()
	area, pinsFD, err := x.newArea()
	require.NoError(t, err)
	defer closeFD(pinsFD)
	mem, err := mapShared(x.fd, tableBytes(4), false)
	require.NoError(t, err)
	pins, err := mapShared(pinsFD, pinsBytes(4), true)
	require.NoError(t, err)
	m, err := openImportTable(mem, pins, 4)
	require.NoError(t, err)
	defer m.close()
	require.Equal(t, x.nonce[:], m.nonce())

	require.True(t, x.add(0x10000, 0x1000))
	require.True(t, x.add(0x20000, 0x1000))
	s, err := m.current()
	require.NoError(t, err)
	e, ok := s.find(0x10800, 0x800)
	require.True(t, ok)
	_, ok = s.find(0x10800, 0x801)
	require.False(t, ok, "past the region's end")
	_, ok = s.find(0x30000, 1)
	require.False(t, ok)
	require.True(t, m.pin(e))

	// The removal waits for the pin.
	var removed atomic.Bool
	done := make(chan error, 1)
	go func() {
		err := x.remove(context.Background(), time.Minute, 0x10000)
		removed.Store(true)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	require.False(t, removed.Load(), "remove returned while a copy held the region")
	require.False(t, m.pin(e), "no pin once the removal began")
	m.unpin(e.slot)
	require.NoError(t, <-done)
	s, err = m.current()
	require.NoError(t, err)
	_, ok = s.find(0x10800, 0x800)
	require.False(t, ok)

	// The slot is reused with a new epoch: the old snapshot's entry is
	// refused.
	require.True(t, x.add(0x50000, 0x1000))
	require.False(t, m.pin(e), "a stale entry must not pin the slot's new region")
	s, err = m.current()
	require.NoError(t, err)
	e2, ok := s.find(0x50000, 0x1000)
	require.True(t, ok)
	require.Equal(t, e.slot, e2.slot)

	// Removal times out while a pin is held, and the slot is not reused.
	require.True(t, m.pin(e2))
	require.ErrorIs(t, x.remove(context.Background(), 30*time.Millisecond, 0x50000), context.DeadlineExceeded)
	// Dropping the initiator's area (its connection closed) releases it.
	x.drop(area)
	require.True(t, x.add(0x60000, 0x1000))
	require.True(t, x.add(0x70000, 0x1000))
	require.False(t, x.add(0x80000, 0x1000), "4 slots: one leaked, three used")
	s, err = m.current()
	require.NoError(t, err)
	require.EqualValues(t, 1, s.unexported)
	require.NoError(t, x.remove(context.Background(), time.Minute, 0x80000))
	s, err = m.current()
	require.NoError(t, err)
	require.EqualValues(t, 0, s.unexported)
}

// TestTableStuckMidWrite: a table left mid-update (its writer stopped)
// makes the reader give up instead of spinning forever.
func TestTableStuckMidWrite(t *testing.T) {
	x, err := newExportTable(4)
	require.NoError(t, err)
	defer x.close()
	m := &importTable{mem: x.mem, capacity: 4}
	atomic.AddUint64(word(x.mem, 8*wGen), 1)
	_, err = m.current()
	require.ErrorIs(t, err, errTableStuck)
}
