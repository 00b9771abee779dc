//go:build unix

package testutil

import (
	"syscall"
	"testing"
)

// Mmap returns n bytes of anonymous memory outside the Go heap, as the
// memory that engines register is (Python buffers, torch tensors): tests
// hand its address to transports and peers. It is unmapped at cleanup.
func Mmap(tb testing.TB, n int) []byte {
	tb.Helper()
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		tb.Fatalf("mmap %d bytes: %v", n, err)
	}
	tb.Cleanup(func() {
		if err := syscall.Munmap(b); err != nil {
			tb.Errorf("munmap: %v", err)
		}
	})
	return b
}
