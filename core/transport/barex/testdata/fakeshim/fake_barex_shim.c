/*
 * A FAKE barex shim for tests: it implements mc_barex_shim.h (ABI 1) with
 * in-process memory copies, so that the Go transport can be tested through
 * its real dlopen path where there is no barex SDK and no NIC. It proves the
 * Go side's logic, never that barex or any hardware works.
 *
 * Engines of one process find each other by their listen port (each holds a
 * real bound TCP socket, as the real shim's listener does). A channel lives
 * on the engine that connected it and names the peer's port and NIC. Posts
 * are queued to the engine's worker thread, which checks every element's
 * keys and ranges against both engines' registrations (as a NIC would),
 * copies, and queues a completion, then makes the eventfd readable: the
 * caller sees completions arrive from a foreign thread.
 *
 * Devices come from MCBX_FAKE_DEVICES, read at mcbx_open:
 * "name[:id][:down],..." (default "fake_0,fake_1"); ":down" reports the
 * device's contexts as failed. ACCL_USE_NICS (from the config, else the
 * environment) filters them by name, as barex's device manager does.
 *
 * mcbx_test_control sets fault knobs and reads counters; the keys are
 * listed above it. fail_connect fails that many connects, after
 * fail_connect_skip more have succeeded; fail_reg and fail_reg_skip do the
 * same for registrations.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mc_barex_shim.h"

#define MAXDEV 16

struct dev {
	char name[64];
	int32_t id;
	int32_t ok;
};

struct mr {
	uint64_t addr, len;
	int32_t mem_type;
	uint32_t lkey[MAXDEV], rkey[MAXDEV]; /* by device index */
	struct mr *next;
};

struct chan {
	uint32_t gen;
	int used;
	int active;
	int local_nic, peer_nic, peer_port;
	int64_t inflight;
	int64_t posts, elems;
};

struct job {
	uint64_t cookie;
	int32_t op;
	uint32_t slot, gen;
	int32_t n;
	mcbx_sge *v;
	struct job *next;
};

struct mcbx_engine {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* jobs, knobs, stop and in-flight changes */
	int port, lfd, efd;
	int ndev;
	struct dev devs[MAXDEV];
	struct chan *chans;
	uint32_t nchan;
	struct job *qhead, *qtail;
	mcbx_done *ring;
	size_t rhead, rcount, rcap;
	pthread_t worker;
	int stop;
	uint32_t next_key;
	uint32_t rr_peer;
	/* knobs */
	int64_t fail_connect, fail_connect_skip, connect_delay_ms, misplace, fail_post, fail_batch, hold, fail_reg, fail_reg_skip,
	    fail_close;
	int64_t connects, closes;
	struct mcbx_engine *next;
};

/* g_mu guards the engine list, every engine's registrations, and the
 * copies: a registration cannot go away while a copy uses it. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct mcbx_engine *g_engines;
static int64_t g_live_engines, g_chans_at_close, g_mrs_at_close, g_opened_chans, g_closed_chans;
static __thread char tl_err[256];

/* registrations per engine, kept apart from the engine lock */
struct mrlist {
	struct mcbx_engine *e;
	struct mr *head;
	struct mrlist *next;
};
static struct mrlist *g_mrl;

static struct mrlist *mrl_of(struct mcbx_engine *e)
{
	for (struct mrlist *l = g_mrl; l; l = l->next)
		if (l->e == e)
			return l;
	return NULL;
}

static int fail(int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tl_err, sizeof tl_err, fmt, ap);
	va_end(ap);
	return rc;
}

/* FAKE_ABI_VERSION lets a test build a shim of another ABI version. */
#ifndef FAKE_ABI_VERSION
#define FAKE_ABI_VERSION MCBX_ABI_VERSION
#endif
int mcbx_abi_version(void) { return FAKE_ABI_VERSION; }

const char *mcbx_strerror(int rc)
{
	switch (rc) {
	case MCBX_OK: return "success";
	case MCBX_EINVAL: return "invalid argument";
	case MCBX_ENOMEM: return "out of memory";
	case MCBX_ENODEV: return "no barex device";
	case MCBX_EADDRINUSE: return "no free listen port";
	case MCBX_ECONNECT: return "channel setup failed";
	case MCBX_ETIMEDOUT: return "timed out";
	case MCBX_EBADCHAN: return "bad channel handle";
	case MCBX_EINACTIVE: return "channel inactive";
	case MCBX_ENOTREG: return "memory not registered";
	case MCBX_EAGAIN: return "queue full";
	case MCBX_ECLOSED: return "engine closing";
	case MCBX_EIO: return "barex i/o error";
	case MCBX_EACCESS: return "key or range rejected";
	}
	return "unknown barex shim error";
}

int mcbx_last_error(char *buf, size_t cap)
{
	size_t n = strlen(tl_err);
	if (cap > 0) {
		size_t k = n < cap - 1 ? n : cap - 1;
		memcpy(buf, tl_err, k);
		buf[k] = 0;
	}
	return (int)n;
}

static void add_ms(struct timespec *ts, int64_t ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

static int parse_devices(struct mcbx_engine *e, const char *use_nics)
{
	const char *spec = getenv("MCBX_FAKE_DEVICES");
	if (!spec || !*spec)
		spec = "fake_0,fake_1";
	char buf[1024];
	snprintf(buf, sizeof buf, "%s", spec);
	int next_id = 0;
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		struct dev d = {.id = next_id, .ok = 1};
		char *save2 = NULL;
		char *name = strtok_r(tok, ":", &save2);
		if (!name || strlen(name) >= sizeof d.name)
			return fail(MCBX_EINVAL, "fake: bad MCBX_FAKE_DEVICES entry");
		snprintf(d.name, sizeof d.name, "%s", name);
		for (char *opt = strtok_r(NULL, ":", &save2); opt; opt = strtok_r(NULL, ":", &save2)) {
			if (strcmp(opt, "down") == 0)
				d.ok = 0;
			else
				d.id = atoi(opt);
		}
		next_id = d.id + 1;
		if (use_nics && *use_nics) {
			/* keep only names listed in use_nics */
			char list[1024];
			int keep = 0;
			snprintf(list, sizeof list, "%s", use_nics);
			char *save3 = NULL;
			for (char *n = strtok_r(list, ",", &save3); n; n = strtok_r(NULL, ",", &save3))
				if (strcmp(n, d.name) == 0)
					keep = 1;
			if (!keep)
				continue;
		}
		if (e->ndev == MAXDEV)
			return fail(MCBX_EINVAL, "fake: too many devices");
		e->devs[e->ndev++] = d;
	}
	return MCBX_OK;
}

static int dev_index(struct mcbx_engine *e, int32_t id)
{
	for (int i = 0; i < e->ndev; i++)
		if (e->devs[i].id == id)
			return i;
	return -1;
}

static int bind_port(struct mcbx_engine *e, const mcbx_config *cfg)
{
	int lo = cfg->port_min, hi = cfg->port_max, tries = 500;
	if (cfg->listen_port > 0)
		lo = hi = cfg->listen_port, tries = 1;
	if (lo < 1 || hi > 65535 || lo > hi)
		return fail(MCBX_EINVAL, "fake: port range [%d, %d]", lo, hi);
	unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)e;
	for (int i = 0; i < tries; i++) {
		int port = lo + (int)(rand_r(&seed) % (unsigned)(hi - lo + 1));
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return fail(MCBX_EIO, "fake: socket: %s", strerror(errno));
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
		sa.sin_addr.s_addr = htonl(INADDR_ANY);
		if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 16) == 0) {
			e->lfd = fd;
			e->port = port;
			return MCBX_OK;
		}
		close(fd);
	}
	return fail(MCBX_EADDRINUSE, "fake: no free port in [%d, %d]", lo, hi);
}

static void push_done(struct mcbx_engine *e, uint64_t cookie, int32_t status)
{
	/* e->mu held */
	if (e->rcount == e->rcap) {
		size_t cap = e->rcap ? 2 * e->rcap : 64;
		mcbx_done *r = malloc(cap * sizeof *r);
		if (!r)
			abort();
		for (size_t i = 0; i < e->rcount; i++)
			r[i] = e->ring[(e->rhead + i) % e->rcap];
		free(e->ring);
		e->ring = r;
		e->rhead = 0;
		e->rcap = cap;
	}
	e->ring[(e->rhead + e->rcount) % e->rcap] = (mcbx_done){.cookie = cookie, .status = status};
	e->rcount++;
	uint64_t one = 1;
	if (write(e->efd, &one, sizeof one) < 0) {
		/* the counter cannot overflow in a test */
	}
}

static struct mr *find_mr(struct mrlist *l, uint64_t addr, uint64_t len)
{
	if (!l)
		return NULL;
	for (struct mr *m = l->head; m; m = m->next)
		if (addr >= m->addr && addr + len <= m->addr + m->len && addr + len >= addr)
			return m;
	return NULL;
}

static struct mcbx_engine *engine_by_port(int port)
{
	for (struct mcbx_engine *x = g_engines; x; x = x->next)
		if (x->port == port)
			return x;
	return NULL;
}

/* run executes a job's elements: g_mu held. */
static int32_t run(struct mcbx_engine *e, struct job *j, int local_nic, int peer_nic, int peer_port)
{
	struct mcbx_engine *p = engine_by_port(peer_port);
	if (!p)
		return MCBX_EIO; /* the peer is gone */
	int li = dev_index(e, local_nic), pi = dev_index(p, peer_nic);
	if (li < 0 || pi < 0)
		return MCBX_EIO;
	struct mrlist *ll = mrl_of(e), *pl = mrl_of(p);
	/* check every element first: a batch fails as a whole */
	for (int i = 0; i < j->n; i++) {
		mcbx_sge *s = &j->v[i];
		struct mr *lm = find_mr(ll, s->laddr, s->len), *rm = find_mr(pl, s->raddr, s->len);
		if (!lm || lm->lkey[li] != s->lkey || lm->mem_type != s->mem_type)
			return MCBX_EACCESS;
		if (!rm || rm->rkey[pi] != s->rkey)
			return MCBX_EACCESS;
	}
	for (int i = 0; i < j->n; i++) {
		mcbx_sge *s = &j->v[i];
		if (j->op == MCBX_OP_WRITE)
			memmove((void *)(uintptr_t)s->raddr, (const void *)(uintptr_t)s->laddr, s->len);
		else
			memmove((void *)(uintptr_t)s->laddr, (const void *)(uintptr_t)s->raddr, s->len);
	}
	return MCBX_OK;
}

static void *worker(void *arg)
{
	struct mcbx_engine *e = arg;
	pthread_mutex_lock(&e->mu);
	for (;;) {
		while (!e->stop && (!e->qhead || e->hold))
			pthread_cond_wait(&e->cv, &e->mu);
		if (!e->qhead)
			break; /* stopping, nothing left */
		struct job *j = e->qhead;
		e->qhead = j->next;
		if (!e->qhead)
			e->qtail = NULL;
		int32_t status;
		struct chan *c = &e->chans[j->slot];
		int local_nic = c->local_nic, peer_nic = c->peer_nic, peer_port = c->peer_port;
		int fresh = c->used && c->gen == j->gen;
		if (e->stop) {
			status = MCBX_ECLOSED;
		} else if (!fresh || !c->active) {
			status = MCBX_EIO; /* the channel dropped under the batch */
		} else if (e->fail_batch > 0) {
			e->fail_batch--;
			status = MCBX_EIO;
		} else {
			pthread_mutex_unlock(&e->mu);
			pthread_mutex_lock(&g_mu);
			status = run(e, j, local_nic, peer_nic, peer_port);
			pthread_mutex_unlock(&g_mu);
			pthread_mutex_lock(&e->mu);
		}
		c = &e->chans[j->slot]; /* the table may have grown */
		if (c->gen == j->gen && c->inflight > 0)
			c->inflight--;
		push_done(e, j->cookie, status);
		pthread_cond_broadcast(&e->cv);
		free(j->v);
		free(j);
	}
	pthread_mutex_unlock(&e->mu);
	return NULL;
}

int mcbx_open(const mcbx_config *cfg, mcbx_engine **out, int32_t *bound_port)
{
	if (!cfg || !out || !bound_port || cfg->struct_size < sizeof(mcbx_config))
		return fail(MCBX_EINVAL, "fake: bad open arguments");
	struct mcbx_engine *e = calloc(1, sizeof *e);
	if (!e)
		return fail(MCBX_ENOMEM, "fake: calloc");
	e->lfd = e->efd = -1;
	pthread_mutex_init(&e->mu, NULL);
	pthread_cond_init(&e->cv, NULL);
	const char *nics = cfg->use_nics ? cfg->use_nics : getenv("ACCL_USE_NICS");
	int rc = parse_devices(e, nics);
	if (rc == MCBX_OK && e->ndev == 0)
		rc = fail(MCBX_ENODEV, "fake: no device (MCBX_FAKE_DEVICES=%s, ACCL_USE_NICS=%s)",
			  getenv("MCBX_FAKE_DEVICES") ? getenv("MCBX_FAKE_DEVICES") : "", nics ? nics : "");
	if (rc == MCBX_OK)
		rc = bind_port(e, cfg);
	if (rc == MCBX_OK) {
		e->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (e->efd < 0)
			rc = fail(MCBX_EIO, "fake: eventfd: %s", strerror(errno));
	}
	if (rc == MCBX_OK && pthread_create(&e->worker, NULL, worker, e) != 0)
		rc = fail(MCBX_EIO, "fake: pthread_create");
	if (rc != MCBX_OK) {
		if (e->lfd >= 0)
			close(e->lfd);
		if (e->efd >= 0)
			close(e->efd);
		pthread_cond_destroy(&e->cv);
		pthread_mutex_destroy(&e->mu);
		free(e);
		return rc;
	}
	e->next_key = ((uint32_t)e->port << 12) | 1; /* keys differ between engines */
	pthread_mutex_lock(&g_mu);
	struct mrlist *l = calloc(1, sizeof *l);
	if (!l)
		abort();
	l->e = e;
	l->next = g_mrl;
	g_mrl = l;
	e->next = g_engines;
	g_engines = e;
	g_live_engines++;
	pthread_mutex_unlock(&g_mu);
	*out = e;
	*bound_port = e->port;
	return MCBX_OK;
}

int mcbx_devices(mcbx_engine *e, mcbx_device *out, int32_t cap)
{
	if (!e || (cap > 0 && !out))
		return fail(MCBX_EINVAL, "fake: bad devices arguments");
	for (int i = 0; i < e->ndev && i < cap; i++) {
		memset(&out[i], 0, sizeof out[i]);
		snprintf(out[i].name, sizeof out[i].name, "%s", e->devs[i].name);
		out[i].barex_id = e->devs[i].id;
		out[i].ctx_ok = e->devs[i].ok;
	}
	return e->ndev;
}

int mcbx_reg_mr(mcbx_engine *e, uint64_t addr, uint64_t len, int32_t mem_type, int32_t gpu_id,
		mcbx_key *keys, int32_t cap, int32_t *n)
{
	(void)gpu_id;
	if (!e || !addr || !len || addr + len < addr || !n || (mem_type != MCBX_MEM_CPU && mem_type != MCBX_MEM_GPU))
		return fail(MCBX_EINVAL, "fake: bad registration [%#llx, +%llu)", (unsigned long long)addr,
			    (unsigned long long)len);
	if (cap < e->ndev)
		return fail(MCBX_EINVAL, "fake: key array of %d for %d nics", cap, e->ndev);
	pthread_mutex_lock(&g_mu);
	int rc = MCBX_OK;
	if (e->fail_reg > 0) {
		if (e->fail_reg_skip > 0) {
			e->fail_reg_skip--;
		} else {
			e->fail_reg--;
			rc = fail(MCBX_EIO, "fake: injected registration failure");
		}
	}
	struct mrlist *l = mrl_of(e);
	for (struct mr *m = l->head; rc == MCBX_OK && m; m = m->next)
		if (addr < m->addr + m->len && m->addr < addr + len)
			rc = fail(MCBX_EINVAL, "fake: [%#llx, +%llu) overlaps a registration", (unsigned long long)addr,
				  (unsigned long long)len);
	struct mr *m = NULL;
	if (rc == MCBX_OK && !(m = calloc(1, sizeof *m)))
		rc = fail(MCBX_ENOMEM, "fake: calloc");
	if (rc == MCBX_OK) {
		m->addr = addr;
		m->len = len;
		m->mem_type = mem_type;
		for (int i = 0; i < e->ndev; i++) {
			m->lkey[i] = e->next_key++;
			m->rkey[i] = e->next_key++;
			keys[i] = (mcbx_key){.nic_id = e->devs[i].id, .lkey = m->lkey[i], .rkey = m->rkey[i]};
		}
		m->next = l->head;
		l->head = m;
		*n = e->ndev;
	}
	pthread_mutex_unlock(&g_mu);
	return rc;
}

int mcbx_dereg_mr(mcbx_engine *e, uint64_t addr, int32_t mem_type)
{
	if (!e)
		return fail(MCBX_EINVAL, "fake: no engine");
	pthread_mutex_lock(&g_mu);
	struct mrlist *l = mrl_of(e);
	int rc = fail(MCBX_ENOTREG, "fake: no registration starts at %#llx", (unsigned long long)addr);
	for (struct mr **pp = &l->head; *pp; pp = &(*pp)->next) {
		struct mr *m = *pp;
		if (m->addr != addr)
			continue;
		if (m->mem_type != mem_type) {
			rc = fail(MCBX_EINVAL, "fake: %#llx was registered as memory type %d, not %d",
				  (unsigned long long)addr, m->mem_type, mem_type);
			break;
		}
		*pp = m->next;
		free(m);
		rc = MCBX_OK;
		break;
	}
	pthread_mutex_unlock(&g_mu);
	return rc;
}

static struct chan *chan_of(struct mcbx_engine *e, mcbx_chan ch)
{
	/* e->mu held */
	uint32_t slot = (uint32_t)ch, gen = (uint32_t)(ch >> 32);
	if (ch == 0 || slot >= e->nchan)
		return NULL;
	struct chan *c = &e->chans[slot];
	if (!c->used || c->gen != gen)
		return NULL;
	return c;
}

int mcbx_connect(mcbx_engine *e, const char *host, int32_t port, int32_t local_nic, int32_t timeout_ms,
		 mcbx_chan *ch, int32_t *local_nic_out, int32_t *peer_nic_out)
{
	if (!e || !host || !*host || port <= 0 || !ch || !local_nic_out || !peer_nic_out || timeout_ms <= 0)
		return fail(MCBX_EINVAL, "fake: bad connect arguments");
	pthread_mutex_lock(&e->mu);
	int stop = e->stop;
	int64_t delay = e->connect_delay_ms;
	int injected = 0, misplace = 0;
	if (e->fail_connect > 0) {
		if (e->fail_connect_skip > 0) {
			e->fail_connect_skip--;
		} else {
			e->fail_connect--;
			injected = 1;
		}
	}
	if (e->misplace > 0) {
		e->misplace--;
		misplace = 1;
	}
	e->connects++;
	pthread_mutex_unlock(&e->mu);
	if (stop)
		return fail(MCBX_ECLOSED, "fake: engine closing");
	if (injected)
		return fail(MCBX_ECONNECT, "fake: injected connect failure to %s:%d", host, port);
	if (delay > timeout_ms) {
		sleep_ms(timeout_ms);
		return fail(MCBX_ETIMEDOUT, "fake: connect to %s:%d took over %d ms", host, port, timeout_ms);
	}
	if (delay > 0)
		sleep_ms(delay);

	int li = -1;
	for (int i = 0; i < e->ndev; i++)
		if (e->devs[i].ok && (local_nic < 0 || e->devs[i].id == local_nic)) {
			li = i;
			break;
		}
	if (li < 0)
		return fail(MCBX_ENODEV, "fake: no usable nic %d", local_nic);
	if (misplace)
		for (int i = 0; i < e->ndev; i++)
			if (e->devs[i].ok && i != li) {
				li = i;
				break;
			}
	pthread_mutex_lock(&g_mu);
	struct mcbx_engine *p = engine_by_port(port);
	int peer_nic = -1;
	if (p) {
		/* barex picks the peer NIC: round robin over its usable ones */
		int usable[MAXDEV], k = 0;
		for (int i = 0; i < p->ndev; i++)
			if (p->devs[i].ok)
				usable[k++] = p->devs[i].id;
		if (k > 0)
			peer_nic = usable[__atomic_fetch_add(&p->rr_peer, 1, __ATOMIC_RELAXED) % (uint32_t)k];
	}
	pthread_mutex_unlock(&g_mu);
	if (peer_nic < 0)
		return fail(MCBX_ECONNECT, "fake: nothing listens on %s:%d", host, port);

	pthread_mutex_lock(&e->mu);
	if (e->stop) {
		pthread_mutex_unlock(&e->mu);
		return fail(MCBX_ECLOSED, "fake: engine closing");
	}
	uint32_t slot = 0;
	while (slot < e->nchan && e->chans[slot].used)
		slot++;
	if (slot == e->nchan) {
		uint32_t cap = e->nchan ? 2 * e->nchan : 16;
		struct chan *c = realloc(e->chans, cap * sizeof *c);
		if (!c) {
			pthread_mutex_unlock(&e->mu);
			return fail(MCBX_ENOMEM, "fake: realloc");
		}
		memset(c + e->nchan, 0, (cap - e->nchan) * sizeof *c);
		e->chans = c;
		e->nchan = cap;
	}
	struct chan *c = &e->chans[slot];
	c->gen++;
	if (c->gen == 0)
		c->gen = 1;
	c->used = 1;
	c->active = 1;
	c->local_nic = e->devs[li].id;
	c->peer_nic = peer_nic;
	c->peer_port = port;
	c->inflight = c->posts = c->elems = 0;
	*ch = ((uint64_t)c->gen << 32) | slot;
	*local_nic_out = c->local_nic;
	*peer_nic_out = peer_nic;
	pthread_mutex_unlock(&e->mu);
	__atomic_fetch_add(&g_opened_chans, 1, __ATOMIC_RELAXED);
	return MCBX_OK;
}

/* A channel is active while nobody deactivated it and its peer engine is
 * alive: a real channel drops when its peer dies. */
int mcbx_chan_active(mcbx_engine *e, mcbx_chan ch)
{
	if (!e)
		return fail(MCBX_EINVAL, "fake: no engine");
	pthread_mutex_lock(&e->mu);
	struct chan *c = chan_of(e, ch);
	int rc = c ? c->active : fail(MCBX_EBADCHAN, "fake: bad channel %#llx", (unsigned long long)ch);
	int port = c ? c->peer_port : 0;
	pthread_mutex_unlock(&e->mu);
	if (rc == 1) {
		pthread_mutex_lock(&g_mu);
		if (!engine_by_port(port))
			rc = 0;
		pthread_mutex_unlock(&g_mu);
	}
	return rc;
}

int mcbx_chan_close(mcbx_engine *e, mcbx_chan ch, int32_t timeout_ms)
{
	if (!e)
		return fail(MCBX_EINVAL, "fake: no engine");
	pthread_mutex_lock(&e->mu);
	struct chan *c = chan_of(e, ch);
	if (!c) {
		pthread_mutex_unlock(&e->mu);
		return fail(MCBX_EBADCHAN, "fake: bad channel %#llx", (unsigned long long)ch);
	}
	uint32_t slot = (uint32_t)ch, gen = (uint32_t)(ch >> 32);
	e->chans[slot].active = 0;
	struct timespec ts;
	add_ms(&ts, timeout_ms > 0 ? timeout_ms : 0);
	int rc = MCBX_OK;
	while (e->chans[slot].gen == gen && e->chans[slot].inflight > 0) {
		if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) == ETIMEDOUT) {
			rc = fail(MCBX_ETIMEDOUT, "fake: %lld batches still in flight on channel %#llx",
				  (long long)e->chans[slot].inflight, (unsigned long long)ch);
			break;
		}
	}
	if (e->fail_close > 0 && rc == MCBX_OK) {
		e->fail_close--;
		rc = fail(MCBX_EIO, "fake: injected close failure");
	}
	/* released whatever happened: the handle is never valid again */
	e->chans[slot].used = 0;
	e->chans[slot].inflight = 0;
	e->closes++;
	pthread_mutex_unlock(&e->mu);
	__atomic_fetch_add(&g_closed_chans, 1, __ATOMIC_RELAXED);
	return rc;
}

int mcbx_post(mcbx_engine *e, mcbx_chan ch, int32_t op, const mcbx_sge *v, int32_t n, uint64_t cookie)
{
	if (!e || !v || n <= 0 || (op != MCBX_OP_WRITE && op != MCBX_OP_READ))
		return fail(MCBX_EINVAL, "fake: bad post arguments");
	struct job *j = calloc(1, sizeof *j);
	mcbx_sge *copy = malloc((size_t)n * sizeof *copy);
	if (!j || !copy) {
		free(j);
		free(copy);
		return fail(MCBX_ENOMEM, "fake: malloc");
	}
	memcpy(copy, v, (size_t)n * sizeof *copy);
	pthread_mutex_lock(&e->mu);
	struct chan *c = chan_of(e, ch);
	int rc = MCBX_OK;
	if (e->stop)
		rc = fail(MCBX_ECLOSED, "fake: engine closing");
	else if (!c)
		rc = fail(MCBX_EBADCHAN, "fake: bad channel %#llx", (unsigned long long)ch);
	else if (!c->active)
		rc = fail(MCBX_EINACTIVE, "fake: channel %#llx inactive", (unsigned long long)ch);
	else if (e->fail_post > 0) {
		e->fail_post--;
		rc = fail(MCBX_EIO, "fake: injected post failure");
	}
	if (rc != MCBX_OK) {
		pthread_mutex_unlock(&e->mu);
		free(j);
		free(copy);
		return rc;
	}
	*j = (struct job){.cookie = cookie, .op = op, .slot = (uint32_t)ch, .gen = (uint32_t)(ch >> 32), .n = n, .v = copy};
	c->inflight++;
	c->posts++;
	c->elems += n;
	if (e->qtail)
		e->qtail->next = j;
	else
		e->qhead = j;
	e->qtail = j;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
	return MCBX_OK;
}

int mcbx_poll(mcbx_engine *e, mcbx_done *out, int32_t cap)
{
	if (!e || (cap > 0 && !out))
		return fail(MCBX_EINVAL, "fake: bad poll arguments");
	pthread_mutex_lock(&e->mu);
	int k = 0;
	while (k < cap && e->rcount > 0) {
		out[k++] = e->ring[e->rhead];
		e->rhead = (e->rhead + 1) % e->rcap;
		e->rcount--;
	}
	pthread_mutex_unlock(&e->mu);
	return k;
}

int mcbx_event_fd(mcbx_engine *e) { return e ? e->efd : fail(MCBX_EINVAL, "fake: no engine"); }

int mcbx_close_engine(mcbx_engine *e, int32_t timeout_ms)
{
	(void)timeout_ms;
	if (!e)
		return fail(MCBX_EINVAL, "fake: no engine");
	pthread_mutex_lock(&g_mu);
	for (struct mcbx_engine **pp = &g_engines; *pp; pp = &(*pp)->next)
		if (*pp == e) {
			*pp = e->next;
			break;
		}
	int64_t mrs = 0;
	for (struct mrlist **pp = &g_mrl; *pp; pp = &(*pp)->next)
		if ((*pp)->e == e) {
			struct mrlist *l = *pp;
			*pp = l->next;
			for (struct mr *m = l->head; m;) {
				struct mr *nx = m->next;
				free(m);
				mrs++;
				m = nx;
			}
			free(l);
			break;
		}
	g_mrs_at_close += mrs;
	g_live_engines--;
	pthread_mutex_unlock(&g_mu);

	pthread_mutex_lock(&e->mu);
	int64_t open = 0;
	for (uint32_t i = 0; i < e->nchan; i++)
		if (e->chans[i].used)
			open++;
	e->stop = 1;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mu);
	__atomic_fetch_add(&g_chans_at_close, open, __ATOMIC_RELAXED);
	pthread_join(e->worker, NULL);
	close(e->lfd);
	close(e->efd);
	free(e->chans);
	free(e->ring);
	pthread_cond_destroy(&e->cv);
	pthread_mutex_destroy(&e->mu);
	free(e);
	return MCBX_OK;
}

static int64_t *knob(struct mcbx_engine *e, const char *key)
{
	static const struct {
		const char *name;
		size_t off;
	} knobs[] = {
	    {"fail_connect", offsetof(struct mcbx_engine, fail_connect)},
	    {"fail_connect_skip", offsetof(struct mcbx_engine, fail_connect_skip)},
	    {"connect_delay_ms", offsetof(struct mcbx_engine, connect_delay_ms)},
	    {"misplace", offsetof(struct mcbx_engine, misplace)},
	    {"fail_post", offsetof(struct mcbx_engine, fail_post)},
	    {"fail_batch", offsetof(struct mcbx_engine, fail_batch)},
	    {"hold", offsetof(struct mcbx_engine, hold)},
	    {"fail_reg", offsetof(struct mcbx_engine, fail_reg)},
	    {"fail_reg_skip", offsetof(struct mcbx_engine, fail_reg_skip)},
	    {"fail_close", offsetof(struct mcbx_engine, fail_close)},
	};
	for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++)
		if (strcmp(knobs[i].name, key) == 0)
			return (int64_t *)((char *)e + knobs[i].off);
	return NULL;
}

/*
 * Keys with an engine: a knob name above sets it to arg and returns the old
 * value; "deactivate" marks channel arg inactive (1) or reports a bad
 * handle (-1); "chan_posts"/"chan_elems" read a channel's counters;
 * "open_chans", "connects", "closes", "mrs", "queued" read the engine's.
 * Process-wide (e may be NULL): "live_engines", "chans_at_close",
 * "mrs_at_close", "opened_chans", "closed_chans".
 */
int64_t mcbx_test_control(mcbx_engine *e, const char *key, int64_t arg)
{
	if (!key)
		return -1;
	if (strcmp(key, "live_engines") == 0 || strcmp(key, "chans_at_close") == 0 || strcmp(key, "mrs_at_close") == 0) {
		pthread_mutex_lock(&g_mu);
		int64_t v = key[0] == 'l' ? g_live_engines : key[0] == 'c' ? __atomic_load_n(&g_chans_at_close, __ATOMIC_RELAXED)
										: g_mrs_at_close;
		pthread_mutex_unlock(&g_mu);
		return v;
	}
	if (strcmp(key, "opened_chans") == 0)
		return __atomic_load_n(&g_opened_chans, __ATOMIC_RELAXED);
	if (strcmp(key, "closed_chans") == 0)
		return __atomic_load_n(&g_closed_chans, __ATOMIC_RELAXED);
	if (!e)
		return -1;
	if (strcmp(key, "mrs") == 0) {
		pthread_mutex_lock(&g_mu);
		int64_t v = 0;
		struct mrlist *l = mrl_of(e);
		for (struct mr *m = l ? l->head : NULL; m; m = m->next)
			v++;
		pthread_mutex_unlock(&g_mu);
		return v;
	}
	pthread_mutex_lock(&e->mu);
	int64_t v = -1;
	int64_t *k = knob(e, key);
	if (k) {
		v = *k;
		*k = arg;
		pthread_cond_broadcast(&e->cv);
	} else if (strcmp(key, "deactivate") == 0) {
		struct chan *c = chan_of(e, (mcbx_chan)arg);
		if (c) {
			c->active = 0;
			v = 1;
		}
	} else if (strcmp(key, "chan_posts") == 0 || strcmp(key, "chan_elems") == 0) {
		struct chan *c = chan_of(e, (mcbx_chan)arg);
		if (c)
			v = key[5] == 'p' ? c->posts : c->elems;
	} else if (strcmp(key, "open_chans") == 0) {
		v = 0;
		for (uint32_t i = 0; i < e->nchan; i++)
			if (e->chans[i].used)
				v++;
	} else if (strcmp(key, "connects") == 0) {
		v = e->connects;
	} else if (strcmp(key, "closes") == 0) {
		v = e->closes;
	} else if (strcmp(key, "queued") == 0) {
		v = 0;
		for (struct job *j = e->qhead; j; j = j->next)
			v++;
	}
	pthread_mutex_unlock(&e->mu);
	return v;
}
