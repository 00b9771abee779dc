//go:build cgo && linux

package allocator

/*
#cgo CFLAGS: -I${SRCDIR}/../core/gpu/cuda/include -O2 -Wall
#include <stdlib.h>
#include "alloc.h"
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/gpu/cuda"
)

// ptr turns an address owned outside Go into a pointer without tripping
// vet's unsafeptr check.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

var bound struct {
	mu  sync.Mutex
	drv *cuda.Driver // kept for the life of the process once bound
}

// Bind loads the CUDA driver (once) and hands its function table to the C
// allocators. It is idempotent. An absent driver or device is an error
// matching cuda.ErrUnavailable.
func Bind() error {
	bound.mu.Lock()
	defer bound.mu.Unlock()
	if bound.drv != nil {
		return nil
	}
	d, err := cuda.Open(cuda.Options{})
	if err != nil {
		return fmt.Errorf("allocator: %w", err)
	}
	C.mc_alloc_bind(d.Table())
	bound.drv = d
	return nil
}

// Symbols are the C functions this package exports, by name, with their
// addresses: what torch's CUDAPluggableAllocator looks up in the extension.
func Symbols() map[string]uintptr {
	return map[string]uintptr{
		"mc_stream_alloc":     uintptr(unsafe.Pointer(C.mc_stream_alloc)),
		"mc_stream_free":      uintptr(unsafe.Pointer(C.mc_stream_free)),
		"mc_nvlink_malloc":    uintptr(unsafe.Pointer(C.mc_nvlink_malloc)),
		"mc_nvlink_free":      uintptr(unsafe.Pointer(C.mc_nvlink_free)),
		"mc_allocator_malloc": uintptr(unsafe.Pointer(C.mc_allocator_malloc)),
		"mc_allocator_free":   uintptr(unsafe.Pointer(C.mc_allocator_free)),
		"mc_allocator_probe":  uintptr(unsafe.Pointer(C.mc_allocator_probe)),
	}
}

// LastError describes the last failure of an allocator function, or "".
func LastError() string {
	var op *C.char
	code := C.mc_alloc_last_error(&op)
	if code == 0 {
		return ""
	}
	return fmt.Sprintf("%s: %v", C.GoString(op), cuda.Result(code))
}

// ClearError forgets the last failure (LastError then returns "").
func ClearError() { C.mc_alloc_clear_error() }

// Trim waits for device's work and returns the stream pool's cached memory
// to the driver.
func Trim(device int) error {
	if r := C.mc_stream_trim(C.int(device)); r != 0 {
		return fmt.Errorf("allocator: trim the pool of device %d: %w", device, cuda.Result(r))
	}
	return nil
}

// PoolStats describes device's allocators: its stream pool and the NVLink
// allocator's live mappings.
type PoolStats struct {
	// Reserved is the memory the pool holds from the driver; Used what is
	// allocated from it.
	Reserved, Used uint64
	// RDMA says whether the pool was made GPUDirect-RDMA capable.
	RDMA bool
	// NVLinkBytes and NVLinkAllocs count what mc_nvlink_malloc mapped and
	// mc_nvlink_free has not unmapped yet.
	NVLinkBytes, NVLinkAllocs uint64
}

// Stats reports device's allocators (zero before their first allocation).
func Stats(device int) (PoolStats, error) {
	var reserved, used, nvBytes, nvCount C.ulonglong
	var rdma C.int
	if r := C.mc_stream_stats(C.int(device), &reserved, &used, &rdma); r != 0 {
		return PoolStats{}, fmt.Errorf("allocator: stats of device %d: %w", device, cuda.Result(r))
	}
	if r := C.mc_nvlink_live(C.int(device), &nvBytes, &nvCount); r != 0 {
		return PoolStats{}, fmt.Errorf("allocator: NVLink stats of device %d: %w", device, cuda.Result(r))
	}
	return PoolStats{
		Reserved: uint64(reserved), Used: uint64(used), RDMA: rdma != 0,
		NVLinkBytes: uint64(nvBytes), NVLinkAllocs: uint64(nvCount),
	}, nil
}

// RDMAInfo says whether the allocation holding ptr is GPUDirect-RDMA
// capable by the driver's pointer attribute, and whether a dma-buf can be
// exported for it (1 yes, 0 no, -1 not asked).
func RDMAInfo(p uintptr) (capable, dmabuf int, err error) {
	var c, d C.int
	if r := C.mc_alloc_rdma_info(ptr(p), &c, &d); r != 0 {
		return 0, 0, fmt.Errorf("allocator: rdma info of %#x: %w", p, cuda.Result(r))
	}
	return int(c), int(d), nil
}

// Fabric says whether device's NVLink allocations get FABRIC handles: 1
// yes, 0 the device offers none, 2 the driver refused them (POSIX fd
// handles are used instead), -1 not known yet.
func Fabric(device int) int { return int(C.mc_nvlink_fabric(C.int(device))) }

// Probe is mc_allocator_probe.
func Probe(device int) int { return int(C.mc_allocator_probe(C.int(device))) }

// The allocators as Go calls, for tests and benchmarks (torch calls the C
// symbols directly).

// StreamAlloc is mc_stream_alloc.
func StreamAlloc(size, device int, stream uintptr) uintptr {
	return uintptr(C.mc_stream_alloc(C.ssize_t(size), C.int(device), C.CUstream(ptr(stream))))
}

// StreamFree is mc_stream_free.
func StreamFree(p uintptr, size, device int, stream uintptr) {
	C.mc_stream_free(ptr(p), C.ssize_t(size), C.int(device), C.CUstream(ptr(stream)))
}

// NVLinkAlloc is mc_nvlink_malloc.
func NVLinkAlloc(size, device int, stream uintptr) uintptr {
	return uintptr(C.mc_nvlink_malloc(C.ssize_t(size), C.int(device), C.CUstream(ptr(stream))))
}

// NVLinkFree is mc_nvlink_free.
func NVLinkFree(p uintptr, size, device int, stream uintptr) {
	C.mc_nvlink_free(ptr(p), C.ssize_t(size), C.int(device), C.CUstream(ptr(stream)))
}
