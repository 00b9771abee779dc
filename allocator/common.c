//go:build cgo && linux

// The allocator's state: the CUDA function table handed over by Go (so
// libcuda is loaded once, by core/gpu/cuda), per-device primary contexts,
// and the last error, which Python reads to explain a failed allocation.
#include <pthread.h>
#include <stddef.h>

#include "alloc.h"

static const struct pymc_cu *table;
static CUcontext ctxs[MC_MAX_DEVICES];
static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static int last_code;
static const char *last_op;

const struct pymc_cu *mc_cu(void) { return __atomic_load_n(&table, __ATOMIC_ACQUIRE); }

int mc_alloc_bind(void *t) {
	__atomic_store_n(&table, (const struct pymc_cu *)t, __ATOMIC_RELEASE);
	return 0;
}

// allocator/autobind.go (Go, exported): Bind; 0 or a CUresult.
extern int mc_alloc_autobind(void);

const struct pymc_cu *mc_cu_or_bind(const char *op) {
	const struct pymc_cu *cu = mc_cu();
	if (cu != NULL) return cu;
	int r = mc_alloc_autobind();
	cu = mc_cu();
	if (cu == NULL) mc_set_error(op, r != CUDA_SUCCESS ? r : CUDA_ERROR_NOT_INITIALIZED);
	return cu;
}

void mc_set_error(const char *op, CUresult r) {
	__atomic_store_n(&last_op, op, __ATOMIC_RELAXED);
	__atomic_store_n(&last_code, r, __ATOMIC_RELEASE);
}

void mc_alloc_clear_error(void) { __atomic_store_n(&last_code, 0, __ATOMIC_RELEASE); }

int mc_alloc_last_error(const char **op) {
	int r = __atomic_load_n(&last_code, __ATOMIC_ACQUIRE);
	*op = __atomic_load_n(&last_op, __ATOMIC_RELAXED);
	return r;
}

CUresult mc_enter(const struct pymc_cu *cu, int device, CUcontext *ctx, CUcontext *old) {
	if (device < 0 || device >= MC_MAX_DEVICES) return CUDA_ERROR_INVALID_DEVICE;
	CUcontext c = __atomic_load_n(&ctxs[device], __ATOMIC_ACQUIRE);
	if (c == NULL) {
		pthread_mutex_lock(&ctx_mu);
		c = ctxs[device];
		if (c == NULL) {
			CUdevice dev;
			CUresult r = cu->cuDeviceGet(&dev, device);
			if (r == CUDA_SUCCESS) r = cu->cuDevicePrimaryCtxRetain(&c, dev);
			if (r != CUDA_SUCCESS) {
				pthread_mutex_unlock(&ctx_mu);
				return r;
			}
			__atomic_store_n(&ctxs[device], c, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&ctx_mu);
	}
	CUresult r = cu->cuCtxGetCurrent(old);
	if (r != CUDA_SUCCESS) return r;
	*ctx = c;
	if (*old != c) r = cu->cuCtxSetCurrent(c);
	return r;
}

void mc_leave(const struct pymc_cu *cu, CUcontext ctx, CUcontext old) {
	if (old != ctx) cu->cuCtxSetCurrent(old);
}
