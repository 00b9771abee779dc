/*
 * pymc_cuda.h: the part of the CUDA driver API that pymooncake uses,
 * declared here so that building needs no CUDA SDK (DESIGN rule 2). Types
 * and values follow the driver API's public ABI (cuda.h of CUDA 12/13);
 * only what pymooncake calls is declared.
 *
 * The functions are reached through one table, pymc_cu, filled by
 * core/gpu/cuda from the libcuda it dlopen'ed. allocator/ includes this
 * header and calls through the same table (it is handed the table's
 * address), so libcuda is loaded once, by one loader.
 */
#ifndef PYMC_CUDA_H
#define PYMC_CUDA_H

#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef void (*CUhostFn)(void *userData);
typedef struct {
	char reserved[64];
} CUipcMemHandle;
typedef struct {
	char bytes[16];
} CUuuid;

/* CUresult values pymooncake tells apart. */
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_STUB_LIBRARY 34
#define CUDA_ERROR_NO_DEVICE 100
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_NOT_READY 600
#define CUDA_ERROR_NOT_PERMITTED 800
#define CUDA_ERROR_NOT_SUPPORTED 801

/* CUpointer_attribute */
#define CU_POINTER_ATTRIBUTE_MEMORY_TYPE 2
#define CU_POINTER_ATTRIBUTE_IS_MANAGED 8
#define CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL 9
#define CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE 10
#define CU_POINTER_ATTRIBUTE_RANGE_START_ADDR 11
#define CU_POINTER_ATTRIBUTE_RANGE_SIZE 12
#define CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES 14
#define CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE 15

/* CUmemorytype */
#define CU_MEMORYTYPE_HOST 1
#define CU_MEMORYTYPE_DEVICE 2
#define CU_MEMORYTYPE_ARRAY 3
#define CU_MEMORYTYPE_UNIFIED 4

/* CUdevice_attribute */
#define CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED 102
#define CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED 110
#define CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED 115
#define CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED 116
#define CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED 124
#define CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED 128

/* flags */
#define CU_STREAM_NON_BLOCKING 0x1
#define CU_EVENT_DISABLE_TIMING 0x2
#define CU_MEMHOSTALLOC_PORTABLE 0x1
#define CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS 0x1

/* Virtual memory management and memory pools. */
#define CU_MEM_ALLOCATION_TYPE_PINNED 1
#define CU_MEM_LOCATION_TYPE_DEVICE 1
#define CU_MEM_HANDLE_TYPE_NONE 0
#define CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR 1
#define CU_MEM_HANDLE_TYPE_FABRIC 8
#define CU_MEM_ACCESS_FLAGS_PROT_READWRITE 3
#define CU_MEM_ALLOC_GRANULARITY_MINIMUM 0
#define CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD 1
#define CU_MEMPOOL_ATTR_RELEASE_THRESHOLD 4
#define CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT 5
#define CU_MEMPOOL_ATTR_USED_MEM_CURRENT 7

typedef struct {
	int type; /* CUmemLocationType */
	int id;
} CUmemLocation;

typedef struct {
	int type;                 /* CUmemAllocationType */
	int requestedHandleTypes; /* CUmemAllocationHandleType */
	CUmemLocation location;
	void *win32HandleMetaData;
	struct {
		unsigned char compressionType;
		unsigned char gpuDirectRDMACapable;
		unsigned short usage;
		unsigned char reserved[4];
	} allocFlags;
} CUmemAllocationProp;

typedef struct {
	CUmemLocation location;
	int flags; /* CUmemAccess_flags */
} CUmemAccessDesc;

/*
 * CUmemPoolProps as of CUDA 12.2+: maxSize and usage came out of what was
 * reserved. Drivers that document gpuDirectRDMACapable (13.x) read it from
 * the first byte after usage; older ones require that byte to be zero, so
 * the allocator sets it only on a retry-able attempt.
 */
typedef struct {
	int allocType;
	int handleTypes;
	CUmemLocation location;
	void *win32SecurityAttributes;
	size_t maxSize;
	unsigned short usage;
	unsigned char gpuDirectRDMACapable;
	unsigned char reserved[53];
} CUmemPoolProps;

/*
 * The functions, as X(required, field, "symbol", parameters). Required
 * symbols must all be present (CUDA 11.2 or later); optional ones may be
 * missing, and their users check for NULL. cuIpcOpenMemHandle_v2 is what
 * cuda.h calls cuIpcOpenMemHandle since CUDA 11; the first name is used
 * where a driver has it, else the second (likewise cuDeviceGetUuid).
 */
#define PYMC_CU_FUNCS(X)                                                                            \
	X(1, cuInit, "cuInit", (unsigned int flags))                                                    \
	X(1, cuDriverGetVersion, "cuDriverGetVersion", (int *version))                                  \
	X(1, cuGetErrorName, "cuGetErrorName", (CUresult error, const char **str))                     \
	X(1, cuGetErrorString, "cuGetErrorString", (CUresult error, const char **str))                 \
	X(1, cuDeviceGetCount, "cuDeviceGetCount", (int *count))                                        \
	X(1, cuDeviceGet, "cuDeviceGet", (CUdevice *device, int ordinal))                               \
	X(1, cuDeviceGetName, "cuDeviceGetName", (char *name, int len, CUdevice dev))                   \
	X(1, cuDeviceGetAttribute, "cuDeviceGetAttribute", (int *pi, int attrib, CUdevice dev))         \
	X(1, cuDeviceCanAccessPeer, "cuDeviceCanAccessPeer", (int *can, CUdevice dev, CUdevice peer))   \
	X(1, cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", (CUcontext *pctx, CUdevice dev))     \
	X(1, cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", (CUdevice dev))                 \
	X(1, cuCtxGetCurrent, "cuCtxGetCurrent", (CUcontext *pctx))                                     \
	X(1, cuCtxSetCurrent, "cuCtxSetCurrent", (CUcontext ctx))                                       \
	X(1, cuCtxSynchronize, "cuCtxSynchronize", (void))                                              \
	X(1, cuPointerGetAttributes, "cuPointerGetAttributes",                                         \
	  (unsigned int n, int *attributes, void **data, CUdeviceptr ptr))                              \
	X(1, cuMemGetInfo, "cuMemGetInfo_v2", (size_t *free, size_t *total))                            \
	X(1, cuMemAlloc, "cuMemAlloc_v2", (CUdeviceptr *dptr, size_t bytesize))                         \
	X(1, cuMemFree, "cuMemFree_v2", (CUdeviceptr dptr))                                             \
	X(1, cuMemGetAddressRange, "cuMemGetAddressRange_v2",                                          \
	  (CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr))                                        \
	X(1, cuMemHostAlloc, "cuMemHostAlloc", (void **pp, size_t bytesize, unsigned int flags))        \
	X(1, cuMemFreeHost, "cuMemFreeHost", (void *p))                                                 \
	X(1, cuMemcpyHtoD, "cuMemcpyHtoD_v2", (CUdeviceptr dst, const void *src, size_t n))             \
	X(1, cuMemcpyDtoH, "cuMemcpyDtoH_v2", (void *dst, CUdeviceptr src, size_t n))                   \
	X(1, cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2",                                                \
	  (CUdeviceptr dst, const void *src, size_t n, CUstream s))                                     \
	X(1, cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", (void *dst, CUdeviceptr src, size_t n, CUstream s)) \
	X(1, cuMemsetD8Async, "cuMemsetD8Async", (CUdeviceptr dst, unsigned char v, size_t n, CUstream s)) \
	X(1, cuStreamCreate, "cuStreamCreate", (CUstream *ps, unsigned int flags))                      \
	X(1, cuStreamDestroy, "cuStreamDestroy_v2", (CUstream s))                                       \
	X(1, cuStreamSynchronize, "cuStreamSynchronize", (CUstream s))                                  \
	X(1, cuStreamGetCtx, "cuStreamGetCtx", (CUstream s, CUcontext *pctx))                           \
	X(1, cuEventCreate, "cuEventCreate", (CUevent *pe, unsigned int flags))                         \
	X(1, cuEventRecord, "cuEventRecord", (CUevent e, CUstream s))                                   \
	X(1, cuEventSynchronize, "cuEventSynchronize", (CUevent e))                                     \
	X(1, cuEventDestroy, "cuEventDestroy_v2", (CUevent e))                                          \
	X(1, cuLaunchHostFunc, "cuLaunchHostFunc", (CUstream s, CUhostFn fn, void *userData))           \
	X(1, cuMemcpyAsync, "cuMemcpyAsync", (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s))  \
	X(1, cuEventQuery, "cuEventQuery", (CUevent e))                                                 \
	X(0, cuDeviceGetUuid_v2, "cuDeviceGetUuid_v2", (CUuuid *uuid, CUdevice dev))                    \
	X(0, cuDeviceGetUuid, "cuDeviceGetUuid", (CUuuid *uuid, CUdevice dev))                          \
	X(0, cuIpcGetMemHandle, "cuIpcGetMemHandle", (CUipcMemHandle *h, CUdeviceptr p))               \
	X(0, cuIpcOpenMemHandle_v2, "cuIpcOpenMemHandle_v2",                                           \
	  (CUdeviceptr *p, CUipcMemHandle h, unsigned int flags))                                       \
	X(0, cuIpcOpenMemHandle, "cuIpcOpenMemHandle", (CUdeviceptr *p, CUipcMemHandle h, unsigned int flags)) \
	X(0, cuIpcCloseMemHandle, "cuIpcCloseMemHandle", (CUdeviceptr p))                               \
	X(0, cuMemExportToShareableHandle, "cuMemExportToShareableHandle",                             \
	  (void *shareable, CUmemGenericAllocationHandle h, int handleType, unsigned long long flags))  \
	X(0, cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle",                         \
	  (CUmemGenericAllocationHandle *h, void *osHandle, int handleType))                            \
	X(0, cuMemPoolCreate, "cuMemPoolCreate", (CUmemoryPool *pool, const CUmemPoolProps *props))     \
	X(0, cuMemPoolDestroy, "cuMemPoolDestroy", (CUmemoryPool pool))                                 \
	X(0, cuMemPoolSetAttribute, "cuMemPoolSetAttribute", (CUmemoryPool pool, int attr, void *value)) \
	X(0, cuMemPoolGetAttribute, "cuMemPoolGetAttribute", (CUmemoryPool pool, int attr, void *value)) \
	X(0, cuMemPoolSetAccess, "cuMemPoolSetAccess",                                                 \
	  (CUmemoryPool pool, const CUmemAccessDesc *map, size_t count))                                \
	X(0, cuMemPoolTrimTo, "cuMemPoolTrimTo", (CUmemoryPool pool, size_t keep))                      \
	X(0, cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync",                                       \
	  (CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream s))                          \
	X(0, cuMemFreeAsync, "cuMemFreeAsync", (CUdeviceptr dptr, CUstream s))                          \
	X(0, cuMemCreate, "cuMemCreate",                                                               \
	  (CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,               \
	   unsigned long long flags))                                                                   \
	X(0, cuMemRelease, "cuMemRelease", (CUmemGenericAllocationHandle h))                            \
	X(0, cuMemAddressReserve, "cuMemAddressReserve",                                               \
	  (CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr, unsigned long long flags)) \
	X(0, cuMemAddressFree, "cuMemAddressFree", (CUdeviceptr ptr, size_t size))                      \
	X(0, cuMemMap, "cuMemMap",                                                                     \
	  (CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle h,                 \
	   unsigned long long flags))                                                                   \
	X(0, cuMemUnmap, "cuMemUnmap", (CUdeviceptr ptr, size_t size))                                  \
	X(0, cuMemSetAccess, "cuMemSetAccess", (CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)) \
	X(0, cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity",                           \
	  (size_t *granularity, const CUmemAllocationProp *prop, int option))                           \
	X(0, cuMemRetainAllocationHandle, "cuMemRetainAllocationHandle",                               \
	  (CUmemGenericAllocationHandle *h, void *addr))                                                \
	X(0, cuMemGetHandleForAddressRange, "cuMemGetHandleForAddressRange",                           \
	  (void *handle, CUdeviceptr dptr, size_t size, int handleType, unsigned long long flags))

struct pymc_cu {
#define PYMC_CU_FIELD(req, field, sym, params) CUresult(*field) params;
	PYMC_CU_FUNCS(PYMC_CU_FIELD)
#undef PYMC_CU_FIELD
};

#endif
