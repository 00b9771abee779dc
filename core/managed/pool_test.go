package managed

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/errs"
)

// registry records what the pool registers, as the engine's table would.
type registry map[uintptr]uint64

func (r registry) pool() *Pool {
	return New(func(a uintptr, n uint64) error { r[a] = n; return nil },
		func(a uintptr) error { delete(r, a); return nil })
}

func TestAllocFree(t *testing.T) {
	reg := registry{}
	p := reg.pool()
	a, err := p.Alloc(10000) // the 16 KiB class
	require.NoError(t, err)
	require.Len(t, reg, 1, "the first allocation registers one 2 GiB pool")
	for base, n := range reg {
		require.EqualValues(t, 2<<30, n)
		require.True(t, a >= base && a+16<<10 <= base+uintptr(n))
		require.True(t, p.Holds(base), "the pool's base is held while a buffer is live")
	}
	b := unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&a))), 16<<10) // mmap'd, outside the Go heap
	b[0], b[len(b)-1] = 1, 2                                                   // the memory is usable
	c, err := p.Alloc(10000)
	require.NoError(t, err)
	require.NotEqual(t, a, c)

	require.ErrorIs(t, p.Free(a, 100<<10), errs.InvalidArgument, "freed with another size class")
	require.ErrorIs(t, p.Free(a+8, 10000), errs.InvalidArgument, "not a block")
	require.NoError(t, p.Free(a, 10000))
	require.ErrorIs(t, p.Free(a, 10000), errs.InvalidArgument, "freed twice")
	require.NoError(t, p.Free(c, 10000))
	for base := range reg {
		require.False(t, p.Holds(base), "no buffer is live any more")
	}

	big, err := p.Alloc(300 << 20) // above the largest class: its own registration
	require.NoError(t, err)
	require.Contains(t, reg, big)
	require.NoError(t, p.Free(big, 300<<20))
	require.NotContains(t, reg, big, "a dedicated buffer is unregistered when freed")

	_, err = p.Alloc(0)
	require.ErrorIs(t, err, errs.InvalidArgument)
	require.NoError(t, p.Close())
	_, err = p.Alloc(4096)
	require.ErrorIs(t, err, errs.Closed)
}
