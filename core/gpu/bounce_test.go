package gpu_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/gpu/fake"
)

func TestBouncePool(t *testing.T) {
	d := fake.New(1) // a FAKE GPU driver: no hardware involved
	defer func() { require.NoError(t, d.Close(), "page-locked memory leaked") }()
	registered := map[uintptr]int{}
	var p gpu.BouncePool
	p.Register = func(a uintptr, n int) error { registered[a] = n; return nil }
	p.Unregister = func(a uintptr) { delete(registered, a) }

	b, err := p.Get(d, 0, 100)
	require.NoError(t, err)
	require.Equal(t, 2<<20, b.Size, "sizes are rounded up to 2 MiB")
	require.Equal(t, b.Size, registered[b.Addr], "a new buffer is registered")
	require.True(t, p.Contains(uint64(b.Addr)+8, 64))
	require.False(t, p.Contains(uint64(b.Addr)+uint64(b.Size)-8, 64))
	p.Put(b)
	require.False(t, p.Contains(uint64(b.Addr), 1), "a returned buffer is not lent")
	again, err := p.Get(d, 0, 4096)
	require.NoError(t, err)
	require.Equal(t, b.Addr, again.Addr, "returned buffers are reused")
	p.Forget(again) // a stream may still use it: neither reused nor freed
	require.Contains(t, registered, again.Addr)

	p.Register = func(uintptr, int) error { return errors.New("no memory regions left") }
	_, err = p.Get(d, 0, 100)
	require.ErrorContains(t, err, "no memory regions left", "an unregistrable buffer is freed and refused")

	require.NoError(t, p.Close())
	_, err = p.Get(d, 0, 1)
	require.ErrorIs(t, err, gpu.ErrBouncePoolClosed)
	require.NoError(t, d.FreeHost(again.Addr)) // what Forget left behind, freed by its owner
}
