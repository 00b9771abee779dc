//go:build cgo && linux

// mc_nvlink_malloc / mc_nvlink_free: Mooncake's NVLink allocator ABI on the
// CUDA virtual memory API. Each allocation is one cuMemCreate'd physical
// allocation mapped at its own reserved range and made accessible to every
// visible device that can reach it. It asks for GPUDirect-RDMA-capable
// memory where the device supports it with VMM, and for a FABRIC handle
// (multi-node NVLink) where the device advertises it; a driver that refuses
// the FABRIC handle (no IMEX channel: NOT_PERMITTED or NOT_SUPPORTED) gets
// a POSIX file descriptor handle instead, and is not asked again.
//
// Unlike Mooncake's, the creation handle is released as soon as the memory
// is mapped: the mapping then holds the only reference, so unmapping in
// mc_nvlink_free releases the physical memory. (Mooncake keeps the
// creation handle and releases only a retained one, which leaks the
// allocation.)
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"

// fabric[d]: 0 not yet known, 1 ask for FABRIC handles, 2 the device does
// not offer them, 3 it does but the driver refused one (no IMEX channel).
static int fabric[MC_MAX_DEVICES];

// live[d]: bytes and allocations mapped by mc_nvlink_malloc on device d and
// not yet freed, so that a leak (ours, or a caller's that never frees)
// shows in the allocator's stats rather than only in cuMemGetInfo.
static struct {
	unsigned long long bytes, count;
} live[MC_MAX_DEVICES];

static int vmm_present(const struct pymc_cu *cu) {
	return cu->cuMemCreate && cu->cuMemRelease && cu->cuMemAddressReserve && cu->cuMemAddressFree &&
	       cu->cuMemMap && cu->cuMemUnmap && cu->cuMemSetAccess && cu->cuMemGetAllocationGranularity;
}

static void base_prop(CUmemAllocationProp *prop, int device, int rdma) {
	memset(prop, 0, sizeof *prop);
	prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	prop->location.id = device;
	prop->allocFlags.gpuDirectRDMACapable = rdma ? 1 : 0;
}

// create makes the physical allocation, falling back from FABRIC to POSIX
// file descriptor handles to none. *size is rounded to the granularity.
static CUresult create(const struct pymc_cu *cu, int device, CUdevice dev, size_t *size,
                       CUmemGenericAllocationHandle *h, size_t *gran) {
	int rdma = 0;
	if (cu->cuDeviceGetAttribute(&rdma, CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, dev) != CUDA_SUCCESS)
		rdma = 0;
	int f = __atomic_load_n(&fabric[device], __ATOMIC_RELAXED);
	if (f == 0) {
		int v = 0;
		if (cu->cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED, dev) != CUDA_SUCCESS) v = 0;
		f = v ? 1 : 2;
		__atomic_store_n(&fabric[device], f, __ATOMIC_RELAXED);
	}
	const int kinds[] = {CU_MEM_HANDLE_TYPE_FABRIC, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, CU_MEM_HANDLE_TYPE_NONE};
	CUresult r = CUDA_ERROR_NOT_SUPPORTED;
	for (int i = f == 1 ? 0 : 1; i < 3; i++) {
		CUmemAllocationProp prop;
		base_prop(&prop, device, rdma);
		prop.requestedHandleTypes = kinds[i];
		r = cu->cuMemGetAllocationGranularity(gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
		if (r != CUDA_SUCCESS) continue;
		size_t n = (*size + *gran - 1) / *gran * *gran;
		r = cu->cuMemCreate(h, n, &prop, 0);
		if (r == CUDA_SUCCESS) {
			*size = n;
			return r;
		}
		if (r != CUDA_ERROR_NOT_PERMITTED && r != CUDA_ERROR_NOT_SUPPORTED && r != CUDA_ERROR_INVALID_VALUE) return r;
		if (i == 0) __atomic_store_n(&fabric[device], 3, __ATOMIC_RELAXED);
	}
	return r;
}

void *mc_nvlink_malloc(ssize_t size, int device, CUstream stream) {
	(void)stream; // mapping is not stream ordered
	const struct pymc_cu *cu = mc_cu_or_bind("mc_nvlink_malloc: bind the allocator to the CUDA driver");
	if (cu == NULL) return NULL;
	if (!vmm_present(cu)) {
		mc_set_error("mc_nvlink_malloc: the driver lacks the virtual memory API", CUDA_ERROR_NOT_SUPPORTED);
		return NULL;
	}
	if (size < 0) {
		mc_set_error("mc_nvlink_malloc of a negative size", CUDA_ERROR_INVALID_VALUE);
		return NULL;
	}
	CUcontext ctx, old;
	CUresult r = mc_enter(cu, device, &ctx, &old);
	if (r != CUDA_SUCCESS) {
		mc_set_error("mc_nvlink_malloc: make the device current", r);
		return NULL;
	}
	CUdevice dev;
	CUmemGenericAllocationHandle h = 0;
	CUdeviceptr p = 0;
	size_t n = size > 0 ? (size_t)size : 1, gran = 0;
	const char *op = "cuDeviceGet";
	int count = 0;
	if ((r = cu->cuDeviceGet(&dev, device)) != CUDA_SUCCESS) goto out;
	op = "cuMemCreate";
	if ((r = create(cu, device, dev, &n, &h, &gran)) != CUDA_SUCCESS) goto out;
	op = "cuMemAddressReserve";
	if ((r = cu->cuMemAddressReserve(&p, n, gran, 0, 0)) != CUDA_SUCCESS) goto release;
	op = "cuMemMap";
	if ((r = cu->cuMemMap(p, n, 0, h, 0)) != CUDA_SUCCESS) goto unreserve;
	// Access for this device and every device that can reach it.
	op = "cuDeviceGetCount";
	if ((r = cu->cuDeviceGetCount(&count)) != CUDA_SUCCESS) goto unmap;
	CUmemAccessDesc desc[MC_MAX_DEVICES];
	size_t k = 0;
	for (int d = 0; d < count && d < MC_MAX_DEVICES; d++) {
		CUdevice other;
		int can = d == device;
		if (!can && cu->cuDeviceGet(&other, d) == CUDA_SUCCESS && cu->cuDeviceCanAccessPeer(&can, other, dev) != CUDA_SUCCESS)
			can = 0;
		if (!can) continue;
		desc[k].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
		desc[k].location.id = d;
		desc[k].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
		k++;
	}
	op = "cuMemSetAccess";
	if ((r = cu->cuMemSetAccess(p, n, desc, k)) != CUDA_SUCCESS) goto unmap;
	// The mapping holds the allocation now; unmapping will free it.
	op = "cuMemRelease";
	if ((r = cu->cuMemRelease(h)) != CUDA_SUCCESS) goto unmap;
	mc_leave(cu, ctx, old);
	if (device >= 0 && device < MC_MAX_DEVICES) {
		__atomic_add_fetch(&live[device].bytes, n, __ATOMIC_RELAXED);
		__atomic_add_fetch(&live[device].count, 1, __ATOMIC_RELAXED);
	}
	return (void *)(uintptr_t)p;
unmap:
	cu->cuMemUnmap(p, n);
unreserve:
	cu->cuMemAddressFree(p, n);
release:
	cu->cuMemRelease(h);
out:
	mc_set_error(op, r);
	mc_leave(cu, ctx, old);
	return NULL;
}

// mc_nvlink_free waits for the work queued on stream (the allocation's, as
// torch passes it), then unmaps the range, which releases the physical
// memory, and frees the address range.
void mc_nvlink_free(void *ptr, ssize_t size, int device, CUstream stream) {
	(void)size;
	const struct pymc_cu *cu = mc_cu();
	if (ptr == NULL || cu == NULL || !vmm_present(cu)) return;
	CUcontext ctx, old;
	CUresult r = mc_enter(cu, device, &ctx, &old);
	if (r != CUDA_SUCCESS) {
		mc_set_error("mc_nvlink_free: make the device current", r);
		return;
	}
	CUdeviceptr base = 0;
	size_t n = 0;
	const char *op = "cuStreamSynchronize";
	if ((r = cu->cuStreamSynchronize(stream)) != CUDA_SUCCESS) goto out;
	op = "cuMemGetAddressRange";
	if ((r = cu->cuMemGetAddressRange(&base, &n, (CUdeviceptr)(uintptr_t)ptr)) != CUDA_SUCCESS) goto out;
	op = "cuMemUnmap";
	if ((r = cu->cuMemUnmap(base, n)) != CUDA_SUCCESS) goto out;
	if (device >= 0 && device < MC_MAX_DEVICES) {
		__atomic_sub_fetch(&live[device].bytes, n, __ATOMIC_RELAXED);
		__atomic_sub_fetch(&live[device].count, 1, __ATOMIC_RELAXED);
	}
	op = "cuMemAddressFree";
	r = cu->cuMemAddressFree(base, n);
out:
	if (r != CUDA_SUCCESS) mc_set_error(op, r);
	mc_leave(cu, ctx, old);
}

// Mooncake HEAD's names for the same allocator.
void *mc_allocator_malloc(ssize_t size, int device, CUstream stream) { return mc_nvlink_malloc(size, device, stream); }
void mc_allocator_free(void *ptr, ssize_t size, int device, CUstream stream) { mc_nvlink_free(ptr, size, device, stream); }

// mc_allocator_probe: 1 when device can use the VMM allocator, 0 when it
// cannot (use cudaMalloc), -1 when unknown (no driver, no such device).
int mc_allocator_probe(int device) {
	const struct pymc_cu *cu = mc_cu_or_bind("mc_allocator_probe: bind the allocator to the CUDA driver");
	CUdevice dev;
	int v = 0;
	if (cu == NULL || cu->cuDeviceGet(&dev, device) != CUDA_SUCCESS) return -1;
	if (!vmm_present(cu)) return 0;
	if (cu->cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev) != CUDA_SUCCESS) return -1;
	return v ? 1 : 0;
}

// mc_nvlink_live reports the bytes and allocations of device that
// mc_nvlink_malloc mapped and mc_nvlink_free has not unmapped.
int mc_nvlink_live(int device, unsigned long long *bytes, unsigned long long *count) {
	if (device < 0 || device >= MC_MAX_DEVICES) return CUDA_ERROR_INVALID_DEVICE;
	*bytes = __atomic_load_n(&live[device].bytes, __ATOMIC_RELAXED);
	*count = __atomic_load_n(&live[device].count, __ATOMIC_RELAXED);
	return 0;
}

// mc_nvlink_fabric: 1 if device's allocations get FABRIC handles, 0 if the
// device does not offer them, 2 if it does but the driver refused them
// (POSIX fd handles are used), -1 if not known yet (no allocation made).
int mc_nvlink_fabric(int device) {
	if (device < 0 || device >= MC_MAX_DEVICES) return -1;
	switch (__atomic_load_n(&fabric[device], __ATOMIC_RELAXED)) {
	case 1: return 1;
	case 2: return 0;
	case 3: return 2;
	}
	return -1;
}

// mc_alloc_rdma_info reports whether the allocation holding ptr is
// GPUDirect-RDMA capable (the driver's pointer attribute) and whether a
// dma-buf can be exported for it (what ibv_reg_dmabuf_mr needs without
// nvidia-peermem): 1 yes, 0 no, -1 not asked (the driver lacks the call).
// Returns a CUresult.
int mc_alloc_rdma_info(void *ptr, int *rdma_capable, int *dmabuf) {
	*rdma_capable = *dmabuf = -1;
	const struct pymc_cu *cu = mc_cu();
	if (cu == NULL) return CUDA_ERROR_NOT_INITIALIZED;
	int attrs[] = {CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
	unsigned long long v = 0, ord = 0;
	void *data[] = {&v, &ord};
	CUresult r = cu->cuPointerGetAttributes(2, attrs, data, (CUdeviceptr)(uintptr_t)ptr);
	if (r != CUDA_SUCCESS) return r;
	*rdma_capable = (v & 0xff) != 0;
	if (cu->cuMemGetHandleForAddressRange == NULL) return CUDA_SUCCESS;
	CUcontext ctx, old;
	r = mc_enter(cu, (int)(unsigned)ord, &ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	CUdeviceptr base = 0;
	size_t n = 0;
	r = cu->cuMemGetAddressRange(&base, &n, (CUdeviceptr)(uintptr_t)ptr);
	if (r == CUDA_SUCCESS) {
		const CUdeviceptr page = 4096;
		CUdeviceptr start = base & ~(page - 1), end = (base + n + page - 1) & ~(page - 1);
		int fd = -1;
		*dmabuf = cu->cuMemGetHandleForAddressRange(&fd, start, end - start, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0) == CUDA_SUCCESS;
		if (fd >= 0) close(fd);
	}
	mc_leave(cu, ctx, old);
	return r;
}
