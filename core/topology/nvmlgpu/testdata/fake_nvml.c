/*
 * fake_nvml.c: a FAKE libnvidia-ml, a test double for a host with an NVIDIA
 * driver. It proves nothing about real GPUs: it lets tests on hosts without
 * NVIDIA hardware load "an NVML" through the same path as the real one
 * (pymooncake's extension under RTLD_NOW, nvmlsym's trampolines, go-nvml).
 *
 *   gcc -shared -fPIC -Wall -Wextra -Werror -o libnvidia-ml.so.1 fake_nvml.c
 *
 * It declares only what it implements (NVML's names and ABI for these few
 * functions). It deliberately lacks nvmlDeviceGetNumaNodeId, so that a
 * caller meets a function the library does not have, as with an older
 * driver. Behaviour, from the environment at each call:
 *   FAKE_NVML_INIT_RC  what nvmlInit_v2 returns (default 0, NVML_SUCCESS)
 *   FAKE_NVML_GPUS     how many GPUs it reports (default 2, at most 8)
 * GPU i sits at PCI bus 0x80 - 0x10*i (NVML order is not PCI order here,
 * so that callers must sort), and every call but nvmlInit_v2 and
 * nvmlErrorString fails with NVML_ERROR_UNINITIALIZED outside Init/Shutdown.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
	NVML_SUCCESS = 0,
	NVML_ERROR_UNINITIALIZED = 1,
	NVML_ERROR_INVALID_ARGUMENT = 2,
	NVML_ERROR_INSUFFICIENT_SIZE = 7,
};

/* nvmlPciInfo_t (v3 layout). */
typedef struct {
	char busIdLegacy[16];
	unsigned int domain;
	unsigned int bus;
	unsigned int device;
	unsigned int pciDeviceId;
	unsigned int pciSubSystemId;
	char busId[32];
} fake_pci_info;

typedef struct {
	unsigned int index;
} fake_device;

#define MAX_GPUS 8
static fake_device devices[MAX_GPUS];
static int inits;

static int env_int(const char *name, int def) {
	const char *v = getenv(name);
	return v && *v ? atoi(v) : def;
}

static unsigned int gpu_count(void) {
	int n = env_int("FAKE_NVML_GPUS", 2);
	return n < 0 ? 0 : n > MAX_GPUS ? MAX_GPUS : (unsigned int)n;
}

static fake_device *lookup(void *handle) {
	for (unsigned int i = 0; i < gpu_count(); i++)
		if (handle == &devices[i]) return &devices[i];
	return NULL;
}

static nvmlReturn_t copy_string(char *dst, unsigned int len, const char *src) {
	if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
	if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
	memcpy(dst, src, strlen(src) + 1);
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
	nvmlReturn_t rc = env_int("FAKE_NVML_INIT_RC", 0);
	if (rc == NVML_SUCCESS) inits++;
	return rc;
}

nvmlReturn_t nvmlShutdown(void) {
	if (inits == 0) return NVML_ERROR_UNINITIALIZED;
	inits--;
	return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t rc) {
	switch (rc) {
	case NVML_SUCCESS: return "fake nvml: success";
	case NVML_ERROR_UNINITIALIZED: return "fake nvml: uninitialized";
	case NVML_ERROR_INVALID_ARGUMENT: return "fake nvml: invalid argument";
	default: return "fake nvml: error";
	}
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
	if (inits == 0) return NVML_ERROR_UNINITIALIZED;
	if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
	*count = gpu_count();
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
	if (inits == 0) return NVML_ERROR_UNINITIALIZED;
	if (device == NULL || index >= gpu_count()) return NVML_ERROR_INVALID_ARGUMENT;
	devices[index].index = index;
	*device = &devices[index];
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *handle, fake_pci_info *pci) {
	fake_device *d = lookup(handle);
	if (inits == 0) return NVML_ERROR_UNINITIALIZED;
	if (d == NULL || pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
	memset(pci, 0, sizeof *pci);
	pci->bus = 0x80 - 0x10 * d->index;
	snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
	snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
	pci->pciDeviceId = 0x233010de;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(void *handle, char *uuid, unsigned int len) {
	fake_device *d = lookup(handle);
	char buf[64];
	if (inits == 0) return NVML_ERROR_UNINITIALIZED;
	if (d == NULL) return NVML_ERROR_INVALID_ARGUMENT;
	snprintf(buf, sizeof buf, "GPU-fa4e0000-0000-0000-0000-00000000000%u", d->index);
	return copy_string(uuid, len, buf);
}

nvmlReturn_t nvmlDeviceGetName(void *handle, char *name, unsigned int len) {
	if (inits == 0) return NVML_ERROR_UNINITIALIZED;
	if (lookup(handle) == NULL) return NVML_ERROR_INVALID_ARGUMENT;
	return copy_string(name, len, "FAKE NVML GPU");
}
