//go:build cgo && linux

// Helpers of package cuda: the function table filled from the dlopen'ed
// libcuda, and small wrappers that each make one context current, do one
// thing and restore the caller's context, so that Go crosses into C once
// per operation and never leaves a context current on a thread it borrowed
// (gopy calls run on Python's threads, where torch keeps its own).

#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "pymc_cuda.h"
#include "helpers.h"

struct pymc_cu pymc_cu;

static const char *const syms[] = {
#define PYMC_CU_NAME(req, field, sym, params) sym,
	PYMC_CU_FUNCS(PYMC_CU_NAME)
#undef PYMC_CU_NAME
};

static const int required[] = {
#define PYMC_CU_REQ(req, field, sym, params) req,
	PYMC_CU_FUNCS(PYMC_CU_REQ)
#undef PYMC_CU_REQ
};

int pymc_cu_count(void) { return (int)(sizeof(syms) / sizeof(syms[0])); }
const char *pymc_cu_sym(int i) { return syms[i]; }
int pymc_cu_required(int i) { return required[i]; }

void pymc_cu_store(int i, void *p) {
	int k = 0;
#define PYMC_CU_STORE(req, field, sym, params) \
	if (i == k++) {                            \
		*(void **)&pymc_cu.field = p;          \
		return;                                \
	}
	PYMC_CU_FUNCS(PYMC_CU_STORE)
#undef PYMC_CU_STORE
}

void *pymc_cu_table(void) { return &pymc_cu; }

// push makes ctx current and remembers the caller's context.
static CUresult push(CUcontext ctx, CUcontext *old) {
	CUresult r = pymc_cu.cuCtxGetCurrent(old);
	if (r != CUDA_SUCCESS) return r;
	if (*old == ctx) return CUDA_SUCCESS;
	return pymc_cu.cuCtxSetCurrent(ctx);
}

static void pop(CUcontext ctx, CUcontext old) {
	if (old != ctx) pymc_cu.cuCtxSetCurrent(old);
}

CUresult pymc_locate(CUdeviceptr p, unsigned *memtype, int *ordinal, unsigned *managed,
                     CUdeviceptr *start, size_t *size) {
	int attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
	               CU_POINTER_ATTRIBUTE_IS_MANAGED, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
	               CU_POINTER_ATTRIBUTE_RANGE_SIZE};
	unsigned long long v[5] = {0, 0, 0, 0, 0};
	void *data[] = {&v[0], &v[1], &v[2], &v[3], &v[4]};
	CUresult r = pymc_cu.cuPointerGetAttributes(5, attrs, data, p);
	*memtype = (unsigned)v[0];
	*ordinal = (int)(unsigned)v[1];
	*managed = (unsigned)(v[2] & 0xff);
	*start = (CUdeviceptr)v[3];
	*size = (size_t)v[4];
	return r;
}

CUresult pymc_copier_new(CUcontext ctx, int slots, CUstream *s, CUevent *evs) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	// Non-blocking: never synchronises with the legacy default stream,
	// which a gate may be holding.
	r = pymc_cu.cuStreamCreate(s, CU_STREAM_NON_BLOCKING);
	int made = 0;
	for (; r == CUDA_SUCCESS && made < slots; made++) {
		r = pymc_cu.cuEventCreate(&evs[made], CU_EVENT_DISABLE_TIMING);
		if (r != CUDA_SUCCESS) break;
	}
	if (r != CUDA_SUCCESS) {
		for (int i = 0; i < made; i++) pymc_cu.cuEventDestroy(evs[i]);
		if (*s) pymc_cu.cuStreamDestroy(*s);
		*s = NULL;
	}
	pop(ctx, old);
	return r;
}

CUresult pymc_copier_free(CUcontext ctx, CUstream s, CUevent *evs, int slots) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	CUresult first = pymc_cu.cuStreamSynchronize(s);
	for (int i = 0; i < slots; i++) {
		CUresult e = pymc_cu.cuEventDestroy(evs[i]);
		if (first == CUDA_SUCCESS) first = e;
	}
	r = pymc_cu.cuStreamDestroy(s);
	if (first == CUDA_SUCCESS) first = r;
	pop(ctx, old);
	return first;
}

CUresult pymc_copy(CUcontext ctx, CUstream s, CUevent ev, int to_device, uint64_t dst, uint64_t src, size_t n) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	if (to_device)
		r = pymc_cu.cuMemcpyHtoDAsync((CUdeviceptr)dst, (const void *)(uintptr_t)src, n, s);
	else
		r = pymc_cu.cuMemcpyDtoHAsync((void *)(uintptr_t)dst, (CUdeviceptr)src, n, s);
	if (r == CUDA_SUCCESS) r = pymc_cu.cuEventRecord(ev, s);
	pop(ctx, old);
	return r;
}

// pymc_copy_on_stream queues a copy on the caller's stream s, in the
// stream's context (ctx == NULL) or ctx for the legacy default stream.
CUresult pymc_copy_on_stream(CUcontext ctx, CUstream s, int to_device, uint64_t dst, uint64_t src, size_t n) {
	if (ctx == NULL) {
		CUresult r = pymc_cu.cuStreamGetCtx(s, &ctx);
		if (r != CUDA_SUCCESS) return r;
	}
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	if (to_device)
		r = pymc_cu.cuMemcpyHtoDAsync((CUdeviceptr)dst, (const void *)(uintptr_t)src, n, s);
	else
		r = pymc_cu.cuMemcpyDtoHAsync((void *)(uintptr_t)dst, (CUdeviceptr)src, n, s);
	pop(ctx, old);
	return r;
}

CUresult pymc_event_wait(CUcontext ctx, CUevent ev) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuEventSynchronize(ev);
	pop(ctx, old);
	return r;
}

CUresult pymc_host_alloc(CUcontext ctx, size_t n, void **p) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemHostAlloc(p, n, CU_MEMHOSTALLOC_PORTABLE);
	pop(ctx, old);
	return r;
}

CUresult pymc_host_free(CUcontext ctx, void *p) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemFreeHost(p);
	pop(ctx, old);
	return r;
}

// A gate is a host function queued on a stream: it signals start_fd when
// the stream reaches it, then blocks the stream until done_fd is signalled.
// It owns the struct and its descriptors (Go holds duplicates), so nothing
// it touches can be closed under it.
struct gate {
	int start_fd;
	int done_fd;
};

static void gate_fn(void *p) {
	struct gate *g = p;
	uint64_t one = 1, v;
	ssize_t r;
	do {
		r = write(g->start_fd, &one, sizeof one);
	} while (r < 0 && errno == EINTR);
	do {
		r = read(g->done_fd, &v, sizeof v);
	} while (r < 0 && errno == EINTR);
	close(g->start_fd);
	close(g->done_fd);
	free(g);
}

// pymc_gate queues a gate on stream s; ctx is the context to use for the
// legacy default stream (s == NULL), else NULL: the stream's own. On
// success *go_start (non-blocking, read when reached) and *go_done (write
// to open) are the caller's to close. *err_no is errno for system errors.
CUresult pymc_gate(CUcontext ctx, CUstream s, int *go_start, int *go_done, int *err_no) {
	*err_no = 0;
	*go_start = *go_done = -1;
	if (ctx == NULL) {
		CUresult r = pymc_cu.cuStreamGetCtx(s, &ctx);
		if (r != CUDA_SUCCESS) return r;
	}
	struct gate *g = malloc(sizeof *g);
	if (g == NULL) {
		*err_no = ENOMEM;
		return CUDA_ERROR_OUT_OF_MEMORY;
	}
	g->start_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	g->done_fd = eventfd(0, EFD_CLOEXEC);
	int gs = g->start_fd >= 0 ? fcntl_dupfd(g->start_fd) : -1;
	int gd = g->done_fd >= 0 ? fcntl_dupfd(g->done_fd) : -1;
	if (g->start_fd < 0 || g->done_fd < 0 || gs < 0 || gd < 0) {
		*err_no = errno ? errno : EMFILE;
		goto fail;
	}
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r == CUDA_SUCCESS) {
		r = pymc_cu.cuLaunchHostFunc(s, gate_fn, g);
		pop(ctx, old);
	}
	if (r != CUDA_SUCCESS) {
		close(g->start_fd);
		close(g->done_fd);
		close(gs);
		close(gd);
		free(g);
		return r;
	}
	*go_start = gs;
	*go_done = gd;
	return CUDA_SUCCESS;
fail:
	if (g->start_fd >= 0) close(g->start_fd);
	if (g->done_fd >= 0) close(g->done_fd);
	if (gs >= 0) close(gs);
	if (gd >= 0) close(gd);
	free(g);
	return CUDA_ERROR_OUT_OF_MEMORY;
}

// Test and benchmark hooks (device memory and streams of the tests).

CUresult pymc_dev_alloc(CUcontext ctx, size_t n, CUdeviceptr *p) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemAlloc(p, n);
	pop(ctx, old);
	return r;
}

CUresult pymc_dev_free(CUcontext ctx, CUdeviceptr p) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemFree(p);
	pop(ctx, old);
	return r;
}

CUresult pymc_memcpy(CUcontext ctx, int to_device, uint64_t dst, uint64_t src, size_t n) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	if (to_device)
		r = pymc_cu.cuMemcpyHtoD((CUdeviceptr)dst, (const void *)(uintptr_t)src, n);
	else
		r = pymc_cu.cuMemcpyDtoH((void *)(uintptr_t)dst, (CUdeviceptr)src, n);
	pop(ctx, old);
	return r;
}

CUresult pymc_stream_new(CUcontext ctx, CUstream *s) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuStreamCreate(s, CU_STREAM_NON_BLOCKING);
	pop(ctx, old);
	return r;
}

CUresult pymc_stream_free(CUcontext ctx, CUstream s) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuStreamDestroy(s);
	pop(ctx, old);
	return r;
}

CUresult pymc_stream_sync(CUcontext ctx, CUstream s) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuStreamSynchronize(s);
	pop(ctx, old);
	return r;
}

CUresult pymc_memset_async(CUcontext ctx, CUstream s, CUdeviceptr p, unsigned char v, size_t n) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemsetD8Async(p, v, n, s);
	pop(ctx, old);
	return r;
}

CUresult pymc_mem_info(CUcontext ctx, size_t *free_, size_t *total) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemGetInfo(free_, total);
	pop(ctx, old);
	return r;
}

// Driver-level wrappers.

CUresult pymc_init(int *version, int *count) {
	CUresult r = pymc_cu.cuInit(0);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuDriverGetVersion(version);
	if (r != CUDA_SUCCESS) return r;
	return pymc_cu.cuDeviceGetCount(count);
}

CUresult pymc_ctx_retain(int ord, CUcontext *ctx) {
	CUdevice dev;
	CUresult r = pymc_cu.cuDeviceGet(&dev, ord);
	if (r != CUDA_SUCCESS) return r;
	return pymc_cu.cuDevicePrimaryCtxRetain(ctx, dev);
}

CUresult pymc_ctx_release(int ord) {
	CUdevice dev;
	CUresult r = pymc_cu.cuDeviceGet(&dev, ord);
	if (r != CUDA_SUCCESS) return r;
	return pymc_cu.cuDevicePrimaryCtxRelease(dev);
}

int pymc_has_dmabuf(void) { return pymc_cu.cuMemGetHandleForAddressRange != NULL; }

// pymc_dmabuf exports [p, p+n), page aligned, as a dma-buf fd.
CUresult pymc_dmabuf(CUcontext ctx, CUdeviceptr p, size_t n, int *fd) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	*fd = -1;
	r = pymc_cu.cuMemGetHandleForAddressRange(fd, p, n, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
	pop(ctx, old);
	return r;
}

CUresult pymc_attr(int ord, int attr, int *v) {
	CUdevice dev;
	CUresult r = pymc_cu.cuDeviceGet(&dev, ord);
	if (r != CUDA_SUCCESS) return r;
	return pymc_cu.cuDeviceGetAttribute(v, attr, dev);
}

CUresult pymc_name(int ord, char *buf, int len) {
	CUdevice dev;
	CUresult r = pymc_cu.cuDeviceGet(&dev, ord);
	if (r != CUDA_SUCCESS) return r;
	return pymc_cu.cuDeviceGetName(buf, len, dev);
}

const char *pymc_error_name(CUresult r) {
	const char *s = NULL;
	if (pymc_cu.cuGetErrorName == NULL || pymc_cu.cuGetErrorName(r, &s) != CUDA_SUCCESS) return NULL;
	return s;
}

const char *pymc_error_string(CUresult r) {
	const char *s = NULL;
	if (pymc_cu.cuGetErrorString == NULL || pymc_cu.cuGetErrorString(r, &s) != CUDA_SUCCESS) return NULL;
	return s;
}

// Copies between any two addresses (unified addressing) and CUDA IPC.

// pymc_copy_any queues cuMemcpyAsync on a copier's stream and marks ev.
CUresult pymc_copy_any(CUcontext ctx, CUstream s, CUevent ev, uint64_t dst, uint64_t src, size_t n) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemcpyAsync((CUdeviceptr)dst, (CUdeviceptr)src, n, s);
	if (r == CUDA_SUCCESS) r = pymc_cu.cuEventRecord(ev, s);
	pop(ctx, old);
	return r;
}

// is_host reports whether the CPU copies p itself: pageable memory the
// driver does not know, or page-locked host memory.
static int is_host(uint64_t p) {
	unsigned long long t = 0;
	int attr = CU_POINTER_ATTRIBUTE_MEMORY_TYPE;
	void *data = &t;
	if (pymc_cu.cuPointerGetAttributes(1, &attr, &data, (CUdeviceptr)p) != CUDA_SUCCESS) return 1;
	return (unsigned)t != CU_MEMORYTYPE_DEVICE;
}

struct hcopy {
	void *dst;
	const void *src;
	size_t n;
};

static void hcopy_fn(void *p) {
	struct hcopy *c = p;
	memcpy(c->dst, c->src, c->n);
	free(c);
}

// pymc_copy_async queues a copy between any two addresses on the caller's
// stream s, in its context (ctx == NULL) or ctx for the legacy default
// stream. Host to host goes through a host function that copies when the
// stream reaches it (the driver may run a host-to-host cuMemcpyAsync at
// once, out of the stream's order); the rest is cuMemcpyAsync.
CUresult pymc_copy_async(CUcontext ctx, CUstream s, uint64_t dst, uint64_t src, size_t n) {
	if (ctx == NULL) {
		CUresult r = pymc_cu.cuStreamGetCtx(s, &ctx);
		if (r != CUDA_SUCCESS) return r;
	}
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	if (is_host(dst) && is_host(src)) {
		struct hcopy *c = malloc(sizeof *c);
		if (c == NULL) {
			r = CUDA_ERROR_OUT_OF_MEMORY;
		} else {
			c->dst = (void *)(uintptr_t)dst;
			c->src = (const void *)(uintptr_t)src;
			c->n = n;
			r = pymc_cu.cuLaunchHostFunc(s, hcopy_fn, c);
			if (r != CUDA_SUCCESS) free(c);
		}
	} else {
		r = pymc_cu.cuMemcpyAsync((CUdeviceptr)dst, (CUdeviceptr)src, n, s);
	}
	pop(ctx, old);
	return r;
}

// pymc_ipc_attrs reads what ExportIPC decides on: the memory type, managed,
// the device, whether cuIpcGetMemHandle applies, and the VMM handle types.
CUresult pymc_ipc_attrs(CUdeviceptr p, unsigned *memtype, unsigned *managed, int *ordinal, unsigned *legacy,
                        unsigned long long *handle_types) {
	int attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_IS_MANAGED,
	               CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
	               CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES};
	unsigned long long v[5] = {0, 0, 0, 0, 0};
	void *data[] = {&v[0], &v[1], &v[2], &v[3], &v[4]};
	CUresult r = pymc_cu.cuPointerGetAttributes(5, attrs, data, p);
	*memtype = (unsigned)v[0];
	*managed = (unsigned)(v[1] & 0xff);
	*ordinal = (int)(unsigned)v[2];
	*legacy = (unsigned)(v[3] & 0xff);
	*handle_types = v[4];
	return r;
}

// pymc_ipc_export exports the allocation holding p (device memory of ctx's
// device): *kind 1 with a legacy handle for cuMemAlloc memory, 2 with a
// POSIX fd for VMM memory. [*base, *base+*size) is the allocation's
// mapping. CUDA_ERROR_NOT_SUPPORTED: neither applies.
CUresult pymc_ipc_export(CUcontext ctx, CUdeviceptr p, unsigned legacy, unsigned long long handle_types, int *kind,
                         CUdeviceptr *base, size_t *size, void *handle, int *fd) {
	*kind = 0;
	*fd = -1;
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemGetAddressRange(base, size, p);
	if (r == CUDA_SUCCESS) {
		if (legacy && pymc_cu.cuIpcGetMemHandle != NULL) {
			r = pymc_cu.cuIpcGetMemHandle((CUipcMemHandle *)handle, *base);
			if (r == CUDA_SUCCESS) *kind = 1;
		} else if ((handle_types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) && pymc_cu.cuMemRetainAllocationHandle != NULL &&
		           pymc_cu.cuMemExportToShareableHandle != NULL && pymc_cu.cuMemRelease != NULL) {
			CUmemGenericAllocationHandle h;
			// Fails for memory that is not a cuMemCreate allocation
			// (a memory pool's): it cannot be exported this way.
			if (pymc_cu.cuMemRetainAllocationHandle(&h, (void *)(uintptr_t)p) != CUDA_SUCCESS) {
				r = CUDA_ERROR_NOT_SUPPORTED;
			} else {
				int f = -1;
				r = pymc_cu.cuMemExportToShareableHandle(&f, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
				pymc_cu.cuMemRelease(h);
				if (r == CUDA_SUCCESS) {
					*fd = f;
					*kind = 2;
				}
			}
		} else {
			r = CUDA_ERROR_NOT_SUPPORTED;
		}
	}
	pop(ctx, old);
	return r;
}

int pymc_has_legacy_ipc(void) {
	return pymc_cu.cuIpcGetMemHandle != NULL && pymc_cu.cuIpcCloseMemHandle != NULL &&
	       (pymc_cu.cuIpcOpenMemHandle_v2 != NULL || pymc_cu.cuIpcOpenMemHandle != NULL);
}

int pymc_has_vmm_ipc(void) {
	return pymc_cu.cuMemImportFromShareableHandle != NULL && pymc_cu.cuMemAddressReserve != NULL &&
	       pymc_cu.cuMemAddressFree != NULL && pymc_cu.cuMemMap != NULL && pymc_cu.cuMemUnmap != NULL &&
	       pymc_cu.cuMemSetAccess != NULL && pymc_cu.cuMemRelease != NULL;
}

// pymc_ipc_open maps a legacy handle in ctx.
CUresult pymc_ipc_open(CUcontext ctx, const void *handle, CUdeviceptr *p) {
	CUipcMemHandle h;
	memcpy(&h, handle, sizeof h);
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	if (pymc_cu.cuIpcOpenMemHandle_v2 != NULL)
		r = pymc_cu.cuIpcOpenMemHandle_v2(p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
	else
		r = pymc_cu.cuIpcOpenMemHandle(p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
	pop(ctx, old);
	return r;
}

CUresult pymc_ipc_close(CUcontext ctx, CUdeviceptr p) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuIpcCloseMemHandle(p);
	pop(ctx, old);
	return r;
}

// pymc_vmm_import imports a VMM allocation's fd, maps size bytes of it
// at a new reservation and grants the ndevs device ordinals devs read and
// write access. On failure nothing is left behind.
CUresult pymc_vmm_import(CUcontext ctx, int fd, size_t size, const int *devs, int ndevs, CUdeviceptr *p,
                         CUmemGenericAllocationHandle *h) {
	enum { max_devs = 64 };
	CUmemAccessDesc desc[max_devs];
	if (ndevs <= 0 || ndevs > max_devs) return CUDA_ERROR_INVALID_VALUE;
	for (int i = 0; i < ndevs; i++) {
		CUdevice dev;
		CUresult r = pymc_cu.cuDeviceGet(&dev, devs[i]);
		if (r != CUDA_SUCCESS) return r;
		desc[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
		desc[i].location.id = dev;
		desc[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	}
	*p = 0;
	*h = 0;
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuMemImportFromShareableHandle(h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
	if (r == CUDA_SUCCESS) {
		r = pymc_cu.cuMemAddressReserve(p, size, 0, 0, 0);
		if (r == CUDA_SUCCESS) {
			r = pymc_cu.cuMemMap(*p, size, 0, *h, 0);
			if (r == CUDA_SUCCESS) {
				r = pymc_cu.cuMemSetAccess(*p, size, desc, (size_t)ndevs);
				if (r != CUDA_SUCCESS) pymc_cu.cuMemUnmap(*p, size);
			}
			if (r != CUDA_SUCCESS) pymc_cu.cuMemAddressFree(*p, size);
		}
		if (r != CUDA_SUCCESS) pymc_cu.cuMemRelease(*h);
	}
	if (r != CUDA_SUCCESS) {
		*p = 0;
		*h = 0;
	}
	pop(ctx, old);
	return r;
}

// pymc_vmm_unmap undoes pymc_vmm_import; it returns the first failure.
CUresult pymc_vmm_unmap(CUcontext ctx, CUdeviceptr p, size_t size, CUmemGenericAllocationHandle h) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	CUresult first = pymc_cu.cuMemUnmap(p, size);
	r = pymc_cu.cuMemAddressFree(p, size);
	if (first == CUDA_SUCCESS) first = r;
	r = pymc_cu.cuMemRelease(h);
	if (first == CUDA_SUCCESS) first = r;
	pop(ctx, old);
	return first;
}

// pymc_event_record creates an event and records it on the caller's
// stream s, in its context (ctx == NULL) or ctx for the legacy default
// stream; *used is that context, for pymc_event_query and _free.
CUresult pymc_event_record(CUcontext ctx, CUstream s, CUevent *ev, CUcontext *used) {
	if (ctx == NULL) {
		CUresult r = pymc_cu.cuStreamGetCtx(s, &ctx);
		if (r != CUDA_SUCCESS) return r;
	}
	*used = ctx;
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuEventCreate(ev, CU_EVENT_DISABLE_TIMING);
	if (r == CUDA_SUCCESS) {
		r = pymc_cu.cuEventRecord(*ev, s);
		if (r != CUDA_SUCCESS) {
			pymc_cu.cuEventDestroy(*ev);
			*ev = NULL;
		}
	}
	pop(ctx, old);
	return r;
}

CUresult pymc_event_query(CUcontext ctx, CUevent ev) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuEventQuery(ev);
	pop(ctx, old);
	return r;
}

CUresult pymc_event_free(CUcontext ctx, CUevent ev) {
	CUcontext old;
	CUresult r = push(ctx, &old);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuEventDestroy(ev);
	pop(ctx, old);
	return r;
}

// pymc_uuid writes device ord's UUID (16 bytes) into out.
CUresult pymc_uuid(int ord, void *out) {
	CUdevice dev;
	CUresult r = pymc_cu.cuDeviceGet(&dev, ord);
	if (r != CUDA_SUCCESS) return r;
	if (pymc_cu.cuDeviceGetUuid_v2 != NULL) return pymc_cu.cuDeviceGetUuid_v2((CUuuid *)out, dev);
	if (pymc_cu.cuDeviceGetUuid != NULL) return pymc_cu.cuDeviceGetUuid((CUuuid *)out, dev);
	return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult pymc_can_access(int ord, int peer, int *can) {
	CUdevice a, b;
	CUresult r = pymc_cu.cuDeviceGet(&a, ord);
	if (r != CUDA_SUCCESS) return r;
	r = pymc_cu.cuDeviceGet(&b, peer);
	if (r != CUDA_SUCCESS) return r;
	return pymc_cu.cuDeviceCanAccessPeer(can, a, b);
}
