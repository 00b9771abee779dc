//go:build cgo && linux

// mc_stream_alloc / mc_stream_free: a stream-ordered allocator on one CUDA
// memory pool per device (cuMemAllocFromPoolAsync / cuMemFreeAsync). The
// pool's release threshold is unlimited, so freed memory stays cached in
// the pool for reuse; mc_stream_trim gives it back. Pools ask for
// GPUDirect-RDMA-capable memory where the device supports GPUDirect RDMA
// and the driver accepts the pool property (CUDA 13.x); otherwise a plain
// pool is made.
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"

struct pool {
	CUmemoryPool pool; // set once made
	int rdma_flag;     // the pool was made with gpuDirectRDMACapable
};

static struct pool pools[MC_MAX_DEVICES];
static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;

static CUresult make_pool(const struct pymc_cu *cu, int device, struct pool *p) {
	if (cu->cuMemPoolCreate == NULL || cu->cuMemAllocFromPoolAsync == NULL || cu->cuMemFreeAsync == NULL ||
	    cu->cuMemPoolSetAttribute == NULL)
		return CUDA_ERROR_NOT_SUPPORTED;
	CUdevice dev;
	CUresult r = cu->cuDeviceGet(&dev, device);
	if (r != CUDA_SUCCESS) return r;
	int supported = 0, rdma = 0, count = 0;
	r = cu->cuDeviceGetAttribute(&supported, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, dev);
	if (r != CUDA_SUCCESS) return r;
	if (!supported) return CUDA_ERROR_NOT_SUPPORTED;
	if (cu->cuDeviceGetAttribute(&rdma, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED, dev) != CUDA_SUCCESS) rdma = 0;

	CUmemPoolProps props;
	memset(&props, 0, sizeof props);
	props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
	props.handleTypes = CU_MEM_HANDLE_TYPE_NONE;
	props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	props.location.id = device;
	CUmemoryPool pool = NULL;
	r = CUDA_ERROR_NOT_SUPPORTED;
	if (rdma) {
		props.gpuDirectRDMACapable = 1;
		r = cu->cuMemPoolCreate(&pool, &props);
		p->rdma_flag = r == CUDA_SUCCESS;
	}
	if (r != CUDA_SUCCESS) {
		// Drivers before the property require the byte to be zero.
		props.gpuDirectRDMACapable = 0;
		r = cu->cuMemPoolCreate(&pool, &props);
	}
	if (r != CUDA_SUCCESS) return r;
	unsigned long long keep = UINT64_MAX;
	r = cu->cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep);
	if (r != CUDA_SUCCESS) {
		if (cu->cuMemPoolDestroy) cu->cuMemPoolDestroy(pool);
		return r;
	}
	// Let every device with peer access to this one read and write it.
	if (cu->cuMemPoolSetAccess && cu->cuDeviceGetCount(&count) == CUDA_SUCCESS) {
		CUmemAccessDesc desc[MC_MAX_DEVICES];
		size_t k = 0;
		for (int d = 0; d < count && d < MC_MAX_DEVICES; d++) {
			CUdevice other;
			int can = 0;
			if (d == device || cu->cuDeviceGet(&other, d) != CUDA_SUCCESS) continue;
			if (cu->cuDeviceCanAccessPeer(&can, other, dev) != CUDA_SUCCESS || !can) continue;
			desc[k].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
			desc[k].location.id = d;
			desc[k].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
			k++;
		}
		if (k > 0) cu->cuMemPoolSetAccess(pool, desc, k); // best effort
	}
	__atomic_store_n(&p->pool, pool, __ATOMIC_RELEASE);
	return CUDA_SUCCESS;
}

// get_pool returns device's pool, making it on first use. The caller has
// made the device's context current.
static CUmemoryPool get_pool(const struct pymc_cu *cu, int device) {
	struct pool *p = &pools[device];
	CUmemoryPool pool = __atomic_load_n(&p->pool, __ATOMIC_ACQUIRE);
	if (pool != NULL) return pool;
	pthread_mutex_lock(&pools_mu);
	CUresult r = CUDA_SUCCESS;
	if (p->pool == NULL) r = make_pool(cu, device, p);
	pthread_mutex_unlock(&pools_mu);
	if (r != CUDA_SUCCESS) {
		mc_set_error("cuMemPoolCreate", r);
		return NULL;
	}
	return __atomic_load_n(&p->pool, __ATOMIC_ACQUIRE);
}

void *mc_stream_alloc(ssize_t size, int device, CUstream stream) {
	const struct pymc_cu *cu = mc_cu_or_bind("mc_stream_alloc: bind the allocator to the CUDA driver");
	if (cu == NULL) return NULL;
	if (size < 0) {
		mc_set_error("mc_stream_alloc of a negative size", CUDA_ERROR_INVALID_VALUE);
		return NULL;
	}
	CUcontext ctx, old;
	CUresult r = mc_enter(cu, device, &ctx, &old);
	if (r != CUDA_SUCCESS) {
		mc_set_error("mc_stream_alloc: make the device current", r);
		return NULL;
	}
	void *out = NULL;
	CUmemoryPool pool = get_pool(cu, device);
	if (pool != NULL) {
		CUdeviceptr p = 0;
		r = cu->cuMemAllocFromPoolAsync(&p, size > 0 ? (size_t)size : 1, pool, stream);
		if (r == CUDA_SUCCESS)
			out = (void *)(uintptr_t)p;
		else
			mc_set_error("cuMemAllocFromPoolAsync", r);
	}
	mc_leave(cu, ctx, old);
	return out;
}

// mc_stream_free frees ptr in stream order: the memory returns to the pool
// once the work queued on stream (the one it was allocated on, as torch
// passes) before this call has run.
void mc_stream_free(void *ptr, ssize_t size, int device, CUstream stream) {
	(void)size;
	const struct pymc_cu *cu = mc_cu();
	if (ptr == NULL || cu == NULL) return;
	CUcontext ctx, old;
	CUresult r = mc_enter(cu, device, &ctx, &old);
	if (r != CUDA_SUCCESS) {
		mc_set_error("mc_stream_free: make the device current", r);
		return;
	}
	r = cu->cuMemFreeAsync((CUdeviceptr)(uintptr_t)ptr, stream);
	if (r != CUDA_SUCCESS) mc_set_error("cuMemFreeAsync", r);
	mc_leave(cu, ctx, old);
}

// mc_stream_trim waits for the device's work and gives the pool's cached
// memory back to the driver. Returns a CUresult.
int mc_stream_trim(int device) {
	const struct pymc_cu *cu = mc_cu();
	if (cu == NULL) return CUDA_ERROR_NOT_INITIALIZED;
	if (device < 0 || device >= MC_MAX_DEVICES) return CUDA_ERROR_INVALID_DEVICE;
	CUmemoryPool pool = __atomic_load_n(&pools[device].pool, __ATOMIC_ACQUIRE);
	if (pool == NULL) return CUDA_SUCCESS;
	CUcontext ctx, old;
	CUresult r = mc_enter(cu, device, &ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = cu->cuCtxSynchronize();
	if (r == CUDA_SUCCESS) r = cu->cuMemPoolTrimTo ? cu->cuMemPoolTrimTo(pool, 0) : CUDA_ERROR_NOT_SUPPORTED;
	mc_leave(cu, ctx, old);
	return r;
}

// mc_stream_stats reports the pool's reserved and used bytes and whether it
// was made GPUDirect-RDMA capable; all zero before its first allocation.
int mc_stream_stats(int device, unsigned long long *reserved, unsigned long long *used, int *rdma_flag) {
	*reserved = *used = 0;
	*rdma_flag = 0;
	const struct pymc_cu *cu = mc_cu();
	if (cu == NULL) return CUDA_ERROR_NOT_INITIALIZED;
	if (device < 0 || device >= MC_MAX_DEVICES) return CUDA_ERROR_INVALID_DEVICE;
	CUmemoryPool pool = __atomic_load_n(&pools[device].pool, __ATOMIC_ACQUIRE);
	if (pool == NULL) return CUDA_SUCCESS;
	*rdma_flag = pools[device].rdma_flag;
	if (cu->cuMemPoolGetAttribute == NULL) return CUDA_ERROR_NOT_SUPPORTED;
	CUresult r = cu->cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, reserved);
	if (r == CUDA_SUCCESS) r = cu->cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, used);
	return r;
}
