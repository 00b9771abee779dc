package slots

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestTable(t *testing.T) {
	var tab Table[int]
	a, b := 1, 2
	ida := tab.Put(&a)
	ids := tab.PutAll([]*int{&b}, nil)
	require.Len(t, ids, 1)
	require.NotZero(t, ida)
	require.Equal(t, 2, tab.Live())
	require.Same(t, &a, tab.Take(ida))
	require.Nil(t, tab.Take(ida), "taken twice")
	c := 3
	idc := tab.Put(&c) // reuses a's slot with a new generation
	require.Equal(t, uint32(ida), uint32(idc), "slot reused")
	require.NotEqual(t, ida, idc)
	require.Nil(t, tab.Take(ida), "a stale id finds nothing in a reused slot")
	require.Nil(t, tab.Take(1<<40|999), "an out-of-range slot finds nothing")
	got := tab.Drain()
	require.ElementsMatch(t, []*int{&b, &c}, got)
	require.Zero(t, tab.Live())
	require.Nil(t, tab.Take(ids[0]))
}
