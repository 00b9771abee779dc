// Package allocator is pymooncake's CUDA-aware allocator for torch, the
// allocator half of Mooncake's barex PR: C functions with the ABI of
// torch.cuda.memory.CUDAPluggableAllocator, compiled into the same
// extension .so as the engine (bindings imports this package), so that
// torch is handed the extension's own path and one Go runtime is loaded.
//
//   - mc_stream_alloc(ssize_t size, int device, cudaStream_t stream) and
//     mc_stream_free(void *ptr, ssize_t size, int device, cudaStream_t
//     stream): stream-ordered, on one CUDA memory pool per device
//     (cuMemAllocFromPoolAsync, cuMemFreeAsync) whose release threshold
//     keeps freed memory cached; mc_stream_trim returns it to the driver.
//     Pools ask for GPUDirect-RDMA-capable memory where the driver accepts
//     that pool property.
//   - mc_nvlink_malloc / mc_nvlink_free (and Mooncake HEAD's
//     mc_allocator_malloc / mc_allocator_free / mc_allocator_probe): one
//     cuMemCreate allocation per call, GPUDirect-RDMA capable where the
//     device supports it with VMM, with a FABRIC handle where the device
//     offers one (falling back to a POSIX fd handle when the driver refuses
//     it), accessible to every device that can reach it; the free releases
//     the physical memory (Mooncake's leaks it).
//
// The C code calls the CUDA driver through core/gpu/cuda's function table:
// Bind loads libcuda once (through core/internal/dl) and hands the table
// over. An allocating entry point (mc_stream_alloc, mc_nvlink_malloc,
// mc_allocator_malloc, mc_allocator_probe) called before Bind calls Bind
// itself, so that torch can be handed the extension by its path alone
// (CUDAPluggableAllocator(path, "mc_stream_alloc", "mc_stream_free") in a
// process that never imported pymooncake); the extension loads with
// RTLD_NOW for that (core/topology/nvmlgpu/internal/nvmlsym). When Bind
// fails the allocator returns NULL, which torch reports as out of memory,
// and records why. Bind keeps its driver reference for the life of the
// process: torch may call the allocator until exit.
//
// Errors: the C functions cannot return one (torch's ABI), so they record
// the last failure, which LastError reports.
package allocator
