package numa

import (
	"runtime"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNode(t *testing.T) {
	if runtime.GOOS != "linux" {
		_, ok := Node(4096)
		require.False(t, ok, "no node is known without move_pages")
		return
	}
	mem, err := syscall.Mmap(-1, 0, 2*syscall.Getpagesize(), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, syscall.Munmap(mem)) })
	mem[0] = 1 // resident
	addr := uint64(addrOf(mem))

	node, ok := Node(addr + 10)
	require.True(t, ok, "a resident page of this process has a node")
	require.GreaterOrEqual(t, node, 0)

	_, ok = Node(addr + uint64(syscall.Getpagesize()))
	require.False(t, ok, "a page never touched is not resident")
	_, ok = Node(0)
	require.False(t, ok, "page zero is not mapped")
}
