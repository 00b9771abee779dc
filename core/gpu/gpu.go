package gpu

import (
	"context"
	"fmt"
	"os"
)

// Host is what Driver.Locate returns for memory the CPU addresses directly:
// pageable, page-locked or managed host memory.
const Host = -1

// Driver is the part of a GPU driver the engine uses. Implementations are
// safe for concurrent use.
type Driver interface {
	// Name says which driver this is, for logs.
	Name() string
	// Locate returns the ordinal of the device whose memory holds
	// [addr, addr+n), or Host. A range that is not wholly in host memory or
	// wholly in one device allocation is an error matching ErrInvalidRange.
	Locate(addr uintptr, n uint64) (int, error)
	// NewCopier creates a copy queue on device ord with slots completion
	// marks. The caller closes it.
	NewCopier(ord, slots int) (Copier, error)
	// AllocHost returns n bytes of page-locked host memory that every
	// copier of device ord may copy to and from asynchronously. The caller
	// frees it with FreeHost.
	AllocHost(ord, n int) (uintptr, error)
	// FreeHost frees memory from AllocHost.
	FreeHost(addr uintptr) error
	// CopyOnStream queues on the stream (as Gate names it) a copy of n
	// bytes between device memory and page-locked host memory from
	// AllocHost: to the device when toDevice, else to the host. It runs in
	// the stream's order, like the caller's own work.
	CopyOnStream(stream uintptr, ord int, toDevice bool, dst, src uintptr, n int) error
	// CopyAsync queues on the stream (as Gate names it) a copy of n bytes
	// from src to dst, any two addresses of this process that the device
	// reaches through unified addressing: host memory (pageable or
	// page-locked), device memory of any device, memory mapped from
	// another process (IPC). It runs in the stream's order, like the
	// caller's own work, and makes no host round trip; the caller keeps
	// both ranges valid until the stream has run it.
	CopyAsync(stream uintptr, ord int, dst, src uintptr, n int) error
	// Gate holds the stream (a CUDA stream handle; 0 is the legacy default
	// stream of device ord) at this point of its queue: work queued before
	// the gate runs first, work queued after waits until the gate is
	// opened. The caller opens every gate it got.
	Gate(stream uintptr, ord int) (Gate, error)
	// ExportDmaBuf exports the device memory [addr, addr+n) as a dma-buf,
	// which an RDMA NIC registers (ibv_reg_dmabuf_mr) where nvidia-peermem
	// is not loaded. The export covers at least the pages holding the
	// range; the caller closes the DmaBuf once it has registered it (the
	// registration keeps its own reference). Host memory is an error
	// matching ErrInvalidRange; a driver or device that cannot export, one
	// matching ErrNotSupported.
	ExportDmaBuf(addr uintptr, n uint64) (DmaBuf, error)
	// Close releases the driver's own resources. Copiers, host memory and
	// gates must have been released first.
	Close() error
}

// DmaBuf is a dma-buf exported for a range of device memory.
type DmaBuf struct {
	// FD is the dma-buf's file descriptor, owned by the DmaBuf's holder.
	FD int
	// Offset is where the exported range's first byte lies in the dma-buf.
	Offset uint64
}

// Close closes the dma-buf's file descriptor.
func (b DmaBuf) Close() error {
	if err := os.NewFile(uintptr(b.FD), "dma-buf").Close(); err != nil {
		return fmt.Errorf("gpu: close dma-buf fd %d: %w", b.FD, err)
	}
	return nil
}

// Copier queues copies between device memory and page-locked host memory
// in order. Each copy marks a slot; Wait on a slot returns once the last
// copy that marked it, and every copy queued before, has run. A Copier is
// used by one goroutine at a time.
type Copier interface {
	// ToHost queues a copy of n bytes from device address src to host
	// address dst (page-locked, from AllocHost) and marks slot.
	ToHost(slot int, dst, src uintptr, n int) error
	// ToDevice queues a copy of n bytes from host address src
	// (page-locked) to device address dst and marks slot.
	ToDevice(slot int, dst, src uintptr, n int) error
	// Copy queues a copy of n bytes from src to dst, any two addresses the
	// device reaches through unified addressing (as Driver.CopyAsync), and
	// marks slot.
	Copy(slot int, dst, src uintptr, n int) error
	// Wait blocks until the copies up to slot's last mark have run and
	// returns their error, if any.
	Wait(slot int) error
	// Close destroys the queue; queued copies finish first.
	Close() error
}

// Gate holds a stream at one point until it is opened.
type Gate interface {
	// Reached blocks until the stream has run everything queued before the
	// gate, or ctx ends (then it returns ctx's error).
	Reached(ctx context.Context) error
	// Open lets the stream go on past the gate. It is idempotent and must
	// be called once the gate is no longer needed, whether or not it was
	// reached.
	Open()
}
