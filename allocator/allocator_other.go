//go:build !cgo || !linux

package allocator

import (
	"fmt"

	"github.com/pymooncake/pymooncake/core/gpu/cuda"
)

var errNoCgo = fmt.Errorf("allocator: built without cgo or for a system other than Linux: %w", cuda.ErrUnavailable)

// Bind fails: this build has no allocator.
func Bind() error { return errNoCgo }

// Symbols is empty in this build.
func Symbols() map[string]uintptr { return nil }

// LastError is always "".
func LastError() string { return "" }

// ClearError does nothing in this build.
func ClearError() {}

// Trim fails: this build has no allocator.
func Trim(int) error { return errNoCgo }

// PoolStats describes a stream pool.
type PoolStats struct {
	Reserved, Used            uint64
	RDMA                      bool
	NVLinkBytes, NVLinkAllocs uint64
}

// Stats fails: this build has no allocator.
func Stats(int) (PoolStats, error) { return PoolStats{}, errNoCgo }

// RDMAInfo fails: this build has no allocator.
func RDMAInfo(uintptr) (int, int, error) { return 0, 0, errNoCgo }

// Fabric is unknown in this build.
func Fabric(int) int { return -1 }

// Probe is unknown in this build.
func Probe(int) int { return -1 }

// StreamAlloc returns 0 in this build.
func StreamAlloc(int, int, uintptr) uintptr { return 0 }

// StreamFree does nothing in this build.
func StreamFree(uintptr, int, int, uintptr) {}

// NVLinkAlloc returns 0 in this build.
func NVLinkAlloc(int, int, uintptr) uintptr { return 0 }

// NVLinkFree does nothing in this build.
func NVLinkFree(uintptr, int, int, uintptr) {}
