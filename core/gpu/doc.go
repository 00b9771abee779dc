// Package gpu is the engine's seam to a GPU driver: the few operations the
// engine needs to move bytes to and from GPU memory, behind the Driver
// interface, and the staging pool built on them.
//
// A Driver says which device holds an address (Locate), copies between
// device memory and page-locked host memory on queues of its own (Copier),
// allocates that host memory (AllocHost), holds a CUDA stream at a point
// until the engine lets it go (Gate), and exports device memory as a
// dma-buf for RDMA NICs (ExportDmaBuf); CopyAsync and Copier.Copy copy
// between any two addresses the device reaches (unified addressing). A
// driver that also implements IPC shares device memory with the other
// processes of the host: it exports allocations (legacy CUDA IPC handles,
// VMM file descriptors), maps those of other processes, and records events
// on streams. Every handle, mapping and event it returns is closed by the
// caller. The real driver is core/gpu/cuda, which loads libcuda at run
// time; core/gpu/fake is a fake that simulates device memory with host
// memory the process cannot touch directly (and IPC between fake drivers
// of one test process), so that the logic above it is tested where there
// is no GPU. A fake never proves that hardware works.
//
// Staging lends Stages: a copier plus a few page-locked buffers of one
// device, through which the TCP transport pipelines GPU memory with its
// socket I/O. Whoever creates a Staging closes it, after every Stage it
// lent has been released; a Stage is released exactly once. BouncePool
// lends the page-locked buffers that stream-ordered transfers (Mooncake's
// *_on_cuda) move GPU memory through; the engine owns it and registers
// each buffer with the transports that need local memory registered.
//
// This package is pure Go: the transports and the engine depend on it
// without needing cgo. Errors: ErrInvalidRange for a range that is not
// wholly in one kind of memory; ErrClosed for a closed Staging;
// ErrNotSupported for what the driver or device cannot do.
package gpu
