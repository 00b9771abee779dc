// Declarations of cuda.c's helpers, for cuda.go's preamble.
#ifndef PYMC_HELPERS_H
#define PYMC_HELPERS_H
#include <fcntl.h>
#include "pymc_cuda.h"

static inline int fcntl_dupfd(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }

int pymc_cu_count(void);
const char *pymc_cu_sym(int i);
int pymc_cu_required(int i);
void pymc_cu_store(int i, void *p);
void *pymc_cu_table(void);
CUresult pymc_locate(CUdeviceptr p, unsigned *memtype, int *ordinal, unsigned *managed, CUdeviceptr *start, size_t *size);
CUresult pymc_copier_new(CUcontext ctx, int slots, CUstream *s, CUevent *evs);
CUresult pymc_copier_free(CUcontext ctx, CUstream s, CUevent *evs, int slots);
CUresult pymc_copy(CUcontext ctx, CUstream s, CUevent ev, int to_device, uint64_t dst, uint64_t src, size_t n);
CUresult pymc_event_wait(CUcontext ctx, CUevent ev);
CUresult pymc_copy_on_stream(CUcontext ctx, CUstream s, int to_device, uint64_t dst, uint64_t src, size_t n);
CUresult pymc_host_alloc(CUcontext ctx, size_t n, void **p);
CUresult pymc_host_free(CUcontext ctx, void *p);
CUresult pymc_gate(CUcontext ctx, CUstream s, int *go_start, int *go_done, int *err_no);
CUresult pymc_dev_alloc(CUcontext ctx, size_t n, CUdeviceptr *p);
CUresult pymc_dev_free(CUcontext ctx, CUdeviceptr p);
CUresult pymc_memcpy(CUcontext ctx, int to_device, uint64_t dst, uint64_t src, size_t n);
CUresult pymc_stream_new(CUcontext ctx, CUstream *s);
CUresult pymc_stream_free(CUcontext ctx, CUstream s);
CUresult pymc_stream_sync(CUcontext ctx, CUstream s);
CUresult pymc_memset_async(CUcontext ctx, CUstream s, CUdeviceptr p, unsigned char v, size_t n);
CUresult pymc_mem_info(CUcontext ctx, size_t *free_, size_t *total);
CUresult pymc_init(int *version, int *count);
CUresult pymc_ctx_retain(int ord, CUcontext *ctx);
CUresult pymc_ctx_release(int ord);
CUresult pymc_attr(int ord, int attr, int *v);
int pymc_has_dmabuf(void);
CUresult pymc_dmabuf(CUcontext ctx, CUdeviceptr p, size_t n, int *fd);
CUresult pymc_name(int ord, char *buf, int len);
CUresult pymc_copy_any(CUcontext ctx, CUstream s, CUevent ev, uint64_t dst, uint64_t src, size_t n);
CUresult pymc_copy_async(CUcontext ctx, CUstream s, uint64_t dst, uint64_t src, size_t n);
CUresult pymc_ipc_attrs(CUdeviceptr p, unsigned *memtype, unsigned *managed, int *ordinal, unsigned *legacy,
                        unsigned long long *handle_types);
CUresult pymc_ipc_export(CUcontext ctx, CUdeviceptr p, unsigned legacy, unsigned long long handle_types, int *kind,
                         CUdeviceptr *base, size_t *size, void *handle, int *fd);
int pymc_has_legacy_ipc(void);
int pymc_has_vmm_ipc(void);
CUresult pymc_ipc_open(CUcontext ctx, const void *handle, CUdeviceptr *p);
CUresult pymc_ipc_close(CUcontext ctx, CUdeviceptr p);
CUresult pymc_vmm_import(CUcontext ctx, int fd, size_t size, const int *devs, int ndevs, CUdeviceptr *p,
                         CUmemGenericAllocationHandle *h);
CUresult pymc_vmm_unmap(CUcontext ctx, CUdeviceptr p, size_t size, CUmemGenericAllocationHandle h);
CUresult pymc_event_record(CUcontext ctx, CUstream s, CUevent *ev, CUcontext *used);
CUresult pymc_event_query(CUcontext ctx, CUevent ev);
CUresult pymc_event_free(CUcontext ctx, CUevent ev);
CUresult pymc_uuid(int ord, void *out);
CUresult pymc_can_access(int ord, int peer, int *can);
const char *pymc_error_name(CUresult r);
const char *pymc_error_string(CUresult r);
#endif
