/*
 * mc_barex_shim.h: the C ABI between pymooncake's barex transport (Go) and a
 * shim over Alibaba's accl-barex (libaccl_barex.so, C++).
 *
 * ABI version 1. Both sides are built from this one header: the Go side
 * (cgo, which only dlopens the shim) and every shim: the real one
 * (mc_barex_shim.cpp, built where the barex SDK exists) and the fake of the
 * tests (testdata/fakeshim). Nothing C++ crosses this boundary.
 *
 * Rules every shim keeps:
 *  - Every function returns 0 (or a count) on success and a negative MCBX_E*
 *    code on failure; mcbx_last_error gives the detail (barex's own text) of
 *    the calling thread's last failure.
 *  - Channels are integer handles, generation<<32 | slot, from a table in
 *    the shim; 0 is never valid, and a closed handle is never valid again.
 *  - Completions never call back into the caller. barex's callbacks end in
 *    the shim, which queues {cookie, status} and makes the event fd
 *    readable; the caller reads the fd (8 bytes) and then drains mcbx_poll.
 *  - mcbx_post copies what it is given; a post that returns 0 yields exactly
 *    one completion, one that fails yields none.
 *  - mcbx_close_engine runs the teardown in a safe order (stop posts; close
 *    channels and wait for their callbacks, with the deadline; connectors;
 *    listener; contexts; their callback objects; thread pools; remaining
 *    memory registrations; mempool). After it returns nothing touches
 *    registered memory and no thread of the shim runs for this engine.
 */
#ifndef MC_BAREX_SHIM_H
#define MC_BAREX_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MCBX_ABI_VERSION 1

/* The shim is built with -fvisibility=hidden; only these are exported. */
#if defined(__GNUC__)
#define MCBX_API __attribute__((visibility("default")))
#else
#define MCBX_API
#endif

/* Return and completion codes. */
enum {
	MCBX_OK = 0,
	MCBX_EINVAL = -1,     /* bad argument */
	MCBX_ENOMEM = -2,     /* out of memory */
	MCBX_ENODEV = -3,     /* no barex device, or no usable device of that id */
	MCBX_EADDRINUSE = -4, /* no free listen port */
	MCBX_ECONNECT = -5,   /* channel setup failed */
	MCBX_ETIMEDOUT = -6,  /* a deadline passed */
	MCBX_EBADCHAN = -7,   /* unknown or closed channel handle */
	MCBX_EINACTIVE = -8,  /* the channel is no longer active */
	MCBX_ENOTREG = -9,    /* memory not registered */
	MCBX_EAGAIN = -10,    /* barex's queue is full; post again later */
	MCBX_ECLOSED = -11,   /* the engine is closing */
	MCBX_EIO = -12,       /* barex reported a failure */
	MCBX_EACCESS = -13    /* the peer or the NIC rejected a key or range */
};

typedef struct mcbx_engine mcbx_engine;

/* A channel handle: generation<<32 | slot; 0 is never valid. */
typedef uint64_t mcbx_chan;

typedef struct mcbx_config {
	/* sizeof(mcbx_config) as the caller knows it. */
	uint32_t struct_size;
	/* Exported as ACCL_USE_NICS before barex lists its devices; NULL
	 * leaves the environment as it is. */
	const char *use_nics;
	/* > 0: listen on exactly this port. 0: a random free port of
	 * [port_min, port_max]; the listener itself is what probes, so the
	 * port stays bound from the first try (no probe-then-bind race). */
	int32_t listen_port;
	int32_t port_min, port_max;
	/* barex thread pools and workers; 0 = Mooncake's 10, 10, 2, 2. */
	int32_t server_threads, client_threads;
	int32_t listener_workers, connector_workers;
	/* barex's own bound on one connect, in ms; 0 = 3000 (TIMER_3S). */
	int32_t connect_timeout_ms;
} mcbx_config;

typedef struct mcbx_device {
	char name[64];    /* XDevice::GetName(), NUL-terminated */
	int32_t barex_id; /* XDevice::GetId(): the NIC id of keys and channels */
	int32_t ctx_ok;   /* 1 when its server and client contexts started */
} mcbx_device;

typedef struct mcbx_key {
	int32_t nic_id; /* barex NIC id */
	uint32_t lkey;
	uint32_t rkey;
} mcbx_key;

enum { MCBX_OP_WRITE = 0, MCBX_OP_READ = 1 };
enum { MCBX_MEM_CPU = 0, MCBX_MEM_GPU = 1 };

/* One element of a batch: barex's rw_memp_t. 32 bytes. */
typedef struct mcbx_sge {
	uint64_t laddr;    /* local address */
	uint64_t raddr;    /* remote address */
	uint32_t len;      /* bytes */
	uint32_t lkey;     /* local key on the channel's local NIC */
	uint32_t rkey;     /* remote key on the channel's peer NIC */
	int16_t mem_type;  /* MCBX_MEM_CPU or MCBX_MEM_GPU: the local memory's kind */
	int16_t device_id; /* the GPU ordinal of GPU memory */
} mcbx_sge;

typedef struct mcbx_done {
	uint64_t cookie; /* as given to mcbx_post */
	int32_t status;  /* MCBX_OK or a negative code */
	int32_t pad;
} mcbx_done;

/* MCBX_ABI_VERSION of the shim. The caller refuses any other. */
MCBX_API int mcbx_abi_version(void);
/* Static text for a code; never NULL. */
MCBX_API const char *mcbx_strerror(int rc);
/* Copies the detail of the calling thread's last failure (NUL-terminated,
 * truncated to cap) and returns its length; "" when there is none. */
MCBX_API int mcbx_last_error(char *buf, size_t cap);

/* Starts an engine: devices, mempool, thread pools, one server and one
 * client context per device, the listener and one connector per client
 * context. *bound_port is the port the listener holds. A device whose
 * contexts fail is reported with ctx_ok = 0. MCBX_ENODEV when barex finds
 * no device. */
MCBX_API int mcbx_open(const mcbx_config *cfg, mcbx_engine **out, int32_t *bound_port);
/* Writes up to cap devices and returns how many there are. */
MCBX_API int mcbx_devices(mcbx_engine *e, mcbx_device *out, int32_t cap);

/* Registers [addr, addr+len) on every NIC of the mempool and writes one key
 * per NIC, in NIC id order; *n is the number written. */
MCBX_API int mcbx_reg_mr(mcbx_engine *e, uint64_t addr, uint64_t len, int32_t mem_type, int32_t gpu_id,
		mcbx_key *keys, int32_t cap, int32_t *n);
/* Deregisters the registration that starts at addr. MCBX_ENOTREG when none
 * does. */
MCBX_API int mcbx_dereg_mr(mcbx_engine *e, uint64_t addr, int32_t mem_type);

/* Opens one channel to host:port from the client context of NIC local_nic
 * (-1: barex chooses) and waits for it, at most timeout_ms. Reports the NIC
 * ids the channel actually joins. */
MCBX_API int mcbx_connect(mcbx_engine *e, const char *host, int32_t port, int32_t local_nic, int32_t timeout_ms,
		 mcbx_chan *ch, int32_t *local_nic_out, int32_t *peer_nic_out);
/* 1 when the channel is active, 0 when not, < 0 for a bad handle. */
MCBX_API int mcbx_chan_active(mcbx_engine *e, mcbx_chan ch);
/* Closes and destroys the channel. Returns once every batch posted on it
 * has its completion queued and barex's close callback ran, or after
 * timeout_ms (MCBX_ETIMEDOUT: the handle is released all the same, and the
 * late completions still arrive). */
MCBX_API int mcbx_chan_close(mcbx_engine *e, mcbx_chan ch, int32_t timeout_ms);

/* Posts n elements as one barex batch of op on ch. 0: exactly one
 * completion with cookie will be queued. < 0: nothing was posted and no
 * completion will come. */
MCBX_API int mcbx_post(mcbx_engine *e, mcbx_chan ch, int32_t op, const mcbx_sge *v, int32_t n, uint64_t cookie);
/* Moves up to cap queued completions to out; returns how many. Never
 * blocks. */
MCBX_API int mcbx_poll(mcbx_engine *e, mcbx_done *out, int32_t cap);
/* The engine's eventfd (non-blocking, owned and closed by the engine): it
 * is readable while completions may be queued. */
MCBX_API int mcbx_event_fd(mcbx_engine *e);

/* Stops and frees the engine (teardown order above), waiting at most
 * timeout_ms for callbacks. e is invalid afterwards, even on error. */
MCBX_API int mcbx_close_engine(mcbx_engine *e, int32_t timeout_ms);

/* Exported only by test fakes; never needed by the caller, which looks it
 * up by name. Sets a fault knob or reads a counter (e may be NULL for
 * process-wide counters); returns the value read, or < 0 for an unknown key. */
MCBX_API int64_t mcbx_test_control(mcbx_engine *e, const char *key, int64_t arg);

#ifdef __cplusplus
}
#endif

#endif /* MC_BAREX_SHIM_H */
