// Shared by the allocator's C files: the CUDA table it was bound to, the
// device contexts it uses, and the last error.
#ifndef MC_ALLOC_H
#define MC_ALLOC_H
#include <sys/types.h>
#include "pymc_cuda.h"

#define MC_MAX_DEVICES 64

// mc_cu is the bound table, or NULL before mc_alloc_bind.
const struct pymc_cu *mc_cu(void);
int mc_alloc_bind(void *table);
// mc_cu_or_bind is mc_cu for the allocating entry points: before Bind it
// binds (through Go, loading libcuda), so that torch can be handed the
// extension by its path alone. NULL, with the last error set under op's
// name, when that fails.
const struct pymc_cu *mc_cu_or_bind(const char *op);
// mc_enter makes device's primary context current (retaining it once for
// the life of the process) and saves the caller's; mc_leave restores it.
CUresult mc_enter(const struct pymc_cu *cu, int device, CUcontext *ctx, CUcontext *old);
void mc_leave(const struct pymc_cu *cu, CUcontext ctx, CUcontext old);
void mc_set_error(const char *op, CUresult r);
int mc_alloc_last_error(const char **op);
void mc_alloc_clear_error(void);

// The exported allocators (torch's CUDAPluggableAllocator ABI).
void *mc_stream_alloc(ssize_t size, int device, CUstream stream);
void mc_stream_free(void *ptr, ssize_t size, int device, CUstream stream);
int mc_stream_trim(int device);
int mc_stream_stats(int device, unsigned long long *reserved, unsigned long long *used, int *rdma_flag);
void *mc_nvlink_malloc(ssize_t size, int device, CUstream stream);
void mc_nvlink_free(void *ptr, ssize_t size, int device, CUstream stream);
void *mc_allocator_malloc(ssize_t size, int device, CUstream stream);
void mc_allocator_free(void *ptr, ssize_t size, int device, CUstream stream);
int mc_allocator_probe(int device);
int mc_nvlink_fabric(int device);
int mc_nvlink_live(int device, unsigned long long *bytes, unsigned long long *count);
int mc_alloc_rdma_info(void *ptr, int *rdma_capable, int *dmabuf);
#endif
