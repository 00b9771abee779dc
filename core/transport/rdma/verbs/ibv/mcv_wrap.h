/*
 * mcv_wrap.h: libibverbs through a table of dlsym'd function pointers, and
 * the helpers that let Go cross into C once per batch: post a chain of work
 * requests, poll a batch of completions, fetch one event. No Go pointer is
 * ever stored by C: arrays from Go are read or written during the call only.
 */
#ifndef MCV_WRAP_H
#define MCV_WRAP_H

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "mcv_verbs.h"

/* The functions pymooncake calls, in the order of mcv_symbols (ibv.go).
 * Optional ones are NULL when the library lacks them. */
struct mcv_fns {
	struct mcv_device **(*get_device_list)(int *num_devices);
	void (*free_device_list)(struct mcv_device **list);
	const char *(*get_device_name)(struct mcv_device *device);
	struct mcv_context *(*open_device)(struct mcv_device *device);
	int (*close_device)(struct mcv_context *context);
	int (*query_device)(struct mcv_context *context, struct mcv_device_attr *attr);
	int (*query_port)(struct mcv_context *context, uint8_t port, struct mcv_port_attr *attr);
	int (*query_gid)(struct mcv_context *context, uint8_t port, int index, union mcv_gid *gid);
	struct mcv_pd *(*alloc_pd)(struct mcv_context *context);
	int (*dealloc_pd)(struct mcv_pd *pd);
	struct mcv_mr *(*reg_mr)(struct mcv_pd *pd, void *addr, size_t length, int access);
	int (*dereg_mr)(struct mcv_mr *mr);
	struct mcv_comp_channel *(*create_comp_channel)(struct mcv_context *context);
	int (*destroy_comp_channel)(struct mcv_comp_channel *channel);
	struct mcv_cq *(*create_cq)(struct mcv_context *context, int cqe, void *cq_context,
				    struct mcv_comp_channel *channel, int comp_vector);
	int (*destroy_cq)(struct mcv_cq *cq);
	int (*get_cq_event)(struct mcv_comp_channel *channel, struct mcv_cq **cq, void **cq_context);
	void (*ack_cq_events)(struct mcv_cq *cq, unsigned int nevents);
	struct mcv_qp *(*create_qp)(struct mcv_pd *pd, struct mcv_qp_init_attr *attr);
	int (*modify_qp)(struct mcv_qp *qp, struct mcv_qp_attr *attr, int mask);
	int (*destroy_qp)(struct mcv_qp *qp);
	int (*get_async_event)(struct mcv_context *context, struct mcv_async_event *event);
	void (*ack_async_event)(struct mcv_async_event *event);
	int (*fork_init)(void);
	/* Optional. */
	int (*query_gid_ex)(struct mcv_context *context, uint32_t port, uint32_t index,
			    struct mcv_gid_entry *entry, uint32_t flags, size_t entry_size);
	struct mcv_mr *(*reg_mr_iova2)(struct mcv_pd *pd, void *addr, size_t length, uint64_t iova,
				       unsigned int access);
	struct mcv_mr *(*reg_dmabuf_mr)(struct mcv_pd *pd, uint64_t offset, size_t length, uint64_t iova,
					int fd, int access);
};

#define MCV_NFNS (sizeof(struct mcv_fns) / sizeof(void *))

static struct mcv_fns mcv;

static void mcv_set(int i, void *p) { ((void **)&mcv)[i] = p; }
static void mcv_clear(void) { memset(&mcv, 0, sizeof(mcv)); }
static int mcv_nfns(void) { return (int)MCV_NFNS; }
static int mcv_has(int i) { return ((void **)&mcv)[i] != NULL; }

/* The flat forms Go passes: layouts match verbs.SendWR and verbs.WC. */
struct mcv_flat_wr {
	uint64_t wr_id;
	uint64_t local_addr;
	uint64_t remote_addr;
	uint32_t length;
	uint32_t lkey;
	uint32_t rkey;
	uint32_t opcode;
};

struct mcv_flat_wc {
	uint64_t wr_id;
	uint32_t status;
	uint32_t opcode;
	uint32_t vendor_err;
	uint32_t byte_len;
	uint32_t qp_num;
	uint32_t pad;
};

_Static_assert(sizeof(struct mcv_flat_wr) == 40 && offsetof(struct mcv_flat_wr, length) == 24 &&
		       offsetof(struct mcv_flat_wr, opcode) == 36, "mcv_flat_wr layout (verbs.SendWR)");
_Static_assert(sizeof(struct mcv_flat_wc) == 32 && offsetof(struct mcv_flat_wc, status) == 8 &&
		       offsetof(struct mcv_flat_wc, qp_num) == 24, "mcv_flat_wc layout (verbs.WC)");
_Static_assert(sizeof(struct mcv_send_wr) == 128, "ibv_send_wr is 128 bytes");
_Static_assert(sizeof(struct mcv_wc) == 48, "ibv_wc is 48 bytes");
_Static_assert(sizeof(struct mcv_qp_attr) == 144, "ibv_qp_attr is 144 bytes");

/* Calls that return a pointer report failure as errno; those that return
 * an int return the error number (libibverbs returns errno values there). */

static int mcv_fork_init(void) { return mcv.fork_init(); }

static struct mcv_device **mcv_get_device_list(int *n, int *err) {
	errno = 0;
	struct mcv_device **l = mcv.get_device_list(n);
	*err = l ? 0 : (errno ? errno : ENODEV);
	return l;
}

static void mcv_free_device_list(struct mcv_device **l) { mcv.free_device_list(l); }

static const char *mcv_device_name(struct mcv_device **l, int i) { return mcv.get_device_name(l[i]); }

static struct mcv_context *mcv_open_device(struct mcv_device **l, int i, int *err) {
	errno = 0;
	struct mcv_context *c = mcv.open_device(l[i]);
	*err = c ? 0 : (errno ? errno : EIO);
	return c;
}

static int mcv_close_device(struct mcv_context *c) { return mcv.close_device(c); }

static int mcv_query_device(struct mcv_context *c, struct mcv_device_attr *a) {
	memset(a, 0, sizeof(*a));
	return mcv.query_device(c, a);
}

static int mcv_num_comp_vectors(struct mcv_context *c) { return c->num_comp_vectors; }
static int mcv_async_fd(struct mcv_context *c) { return c->async_fd; }

/* The exported ibv_query_port fills the older, shorter struct: zero the
 * rest first, as the header's inline does. */
static int mcv_query_port(struct mcv_context *c, uint8_t port, struct mcv_port_attr *a) {
	memset(a, 0, sizeof(*a));
	return mcv.query_port(c, port, a);
}

/* Returns 1 when the entry came from ibv_query_gid_ex (type and netdev
 * known), 0 when only the GID is known, or -errno. */
static int mcv_query_gid(struct mcv_context *c, uint8_t port, int index, struct mcv_gid_entry *e) {
	memset(e, 0, sizeof(*e));
	if (mcv.query_gid_ex) {
		int r = mcv.query_gid_ex(c, port, (uint32_t)index, e, 0, sizeof(*e));
		if (r == 0)
			return 1;
		if (r != EOPNOTSUPP && r != ENOSYS)
			return -(r > 0 ? r : EINVAL);
	}
	int r = mcv.query_gid(c, port, index, &e->gid);
	if (r)
		return -(errno ? errno : EINVAL);
	return 0;
}

static struct mcv_pd *mcv_alloc_pd(struct mcv_context *c, int *err) {
	errno = 0;
	struct mcv_pd *p = mcv.alloc_pd(c);
	*err = p ? 0 : (errno ? errno : ENOMEM);
	return p;
}

static int mcv_dealloc_pd(struct mcv_pd *p) { return mcv.dealloc_pd(p); }

static struct mcv_mr *mcv_reg_mr(struct mcv_pd *p, uint64_t addr, uint64_t length, unsigned int access,
				 int iova2, int *err) {
	errno = 0;
	struct mcv_mr *m;
	if (iova2)
		m = mcv.reg_mr_iova2(p, (void *)(uintptr_t)addr, (size_t)length, addr, access);
	else
		m = mcv.reg_mr(p, (void *)(uintptr_t)addr, (size_t)length, (int)access);
	*err = m ? 0 : (errno ? errno : EINVAL);
	return m;
}

static struct mcv_mr *mcv_reg_dmabuf_mr(struct mcv_pd *p, uint64_t offset, uint64_t length, uint64_t iova,
					int fd, int access, int *err) {
	errno = 0;
	struct mcv_mr *m = mcv.reg_dmabuf_mr(p, offset, (size_t)length, iova, fd, access);
	*err = m ? 0 : (errno ? errno : EINVAL);
	return m;
}

static uint32_t mcv_mr_lkey(struct mcv_mr *m) { return m->lkey; }
static uint32_t mcv_mr_rkey(struct mcv_mr *m) { return m->rkey; }
static int mcv_dereg_mr(struct mcv_mr *m) { return mcv.dereg_mr(m); }

static int mcv_set_nonblock(int fd) {
	int flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return errno;
	return 0;
}

static struct mcv_comp_channel *mcv_create_comp_channel(struct mcv_context *c, int *err) {
	errno = 0;
	struct mcv_comp_channel *ch = mcv.create_comp_channel(c);
	*err = ch ? 0 : (errno ? errno : ENOMEM);
	if (ch)
		*err = mcv_set_nonblock(ch->fd);
	return ch;
}

static int mcv_channel_fd(struct mcv_comp_channel *ch) { return ch->fd; }
static int mcv_destroy_comp_channel(struct mcv_comp_channel *ch) { return mcv.destroy_comp_channel(ch); }

static struct mcv_cq *mcv_create_cq(struct mcv_context *c, int cqe, struct mcv_comp_channel *ch, int vector, int *err) {
	errno = 0;
	struct mcv_cq *q = mcv.create_cq(c, cqe, NULL, ch, vector);
	*err = q ? 0 : (errno ? errno : ENOMEM);
	return q;
}

static int mcv_destroy_cq(struct mcv_cq *q) { return mcv.destroy_cq(q); }

static int mcv_req_notify_cq(struct mcv_cq *q) { return q->context->ops.req_notify_cq(q, 0); }

/* Polls up to n (<= 64) completions into out. Returns the count or -err. */
static int mcv_poll_cq(struct mcv_cq *q, int n, struct mcv_flat_wc *out) {
	struct mcv_wc wc[64];
	if (n > 64)
		n = 64;
	int got = q->context->ops.poll_cq(q, n, wc);
	if (got < 0)
		return -EIO;
	for (int i = 0; i < got; i++) {
		out[i].wr_id = wc[i].wr_id;
		out[i].status = (uint32_t)wc[i].status;
		out[i].opcode = (uint32_t)wc[i].opcode;
		out[i].vendor_err = wc[i].vendor_err;
		out[i].byte_len = wc[i].byte_len;
		out[i].qp_num = wc[i].qp_num;
		out[i].pad = 0;
	}
	return got;
}

/* Takes one completion event (non-blocking) and acknowledges it: 0 and
 * *cq, or an errno value (EAGAIN when there is none). */
static int mcv_get_cq_event(struct mcv_comp_channel *ch, struct mcv_cq **cq) {
	void *ctx;
	errno = 0;
	if (mcv.get_cq_event(ch, cq, &ctx))
		return errno ? errno : EIO;
	mcv.ack_cq_events(*cq, 1);
	return 0;
}

static struct mcv_qp *mcv_create_qp(struct mcv_pd *p, struct mcv_cq *scq, struct mcv_cq *rcq, uint32_t max_send_wr,
				    uint32_t max_recv_wr, uint32_t max_send_sge, uint32_t max_recv_sge,
				    uint32_t max_inline, int sig_all, int *err) {
	struct mcv_qp_init_attr a;
	memset(&a, 0, sizeof(a));
	a.send_cq = scq;
	a.recv_cq = rcq;
	a.cap.max_send_wr = max_send_wr;
	a.cap.max_recv_wr = max_recv_wr;
	a.cap.max_send_sge = max_send_sge;
	a.cap.max_recv_sge = max_recv_sge;
	a.cap.max_inline_data = max_inline;
	a.qp_type = MCV_QPT_RC;
	a.sq_sig_all = sig_all;
	errno = 0;
	struct mcv_qp *q = mcv.create_qp(p, &a);
	*err = q ? 0 : (errno ? errno : ENOMEM);
	return q;
}

static uint32_t mcv_qp_num(struct mcv_qp *q) { return q->qp_num; }

static int mcv_modify_qp(struct mcv_qp *q, struct mcv_qp_attr *a, int mask) { return mcv.modify_qp(q, a, mask); }

static int mcv_destroy_qp(struct mcv_qp *q) { return mcv.destroy_qp(q); }

/* Builds the chain of n signaled one-SGE work requests in wrbuf/sgebuf (C
 * memory owned by the QP) from the flat array and posts it with one
 * ibv_post_send. *posted is how many were accepted: everything before
 * bad_wr. Returns the post's error number. */
static int mcv_post_send(struct mcv_qp *q, const struct mcv_flat_wr *in, int n, struct mcv_send_wr *wrbuf,
			 struct mcv_sge *sgebuf, int *posted) {
	if (n <= 0) {
		*posted = 0;
		return 0;
	}
	memset(wrbuf, 0, sizeof(*wrbuf) * (size_t)n);
	for (int i = 0; i < n; i++) {
		sgebuf[i].addr = in[i].local_addr;
		sgebuf[i].length = in[i].length;
		sgebuf[i].lkey = in[i].lkey;
		wrbuf[i].wr_id = in[i].wr_id;
		wrbuf[i].next = i + 1 < n ? &wrbuf[i + 1] : NULL;
		wrbuf[i].sg_list = &sgebuf[i];
		wrbuf[i].num_sge = 1;
		wrbuf[i].opcode = (int)in[i].opcode;
		wrbuf[i].send_flags = MCV_SEND_SIGNALED;
		wrbuf[i].wr.rdma.remote_addr = in[i].remote_addr;
		wrbuf[i].wr.rdma.rkey = in[i].rkey;
	}
	void *bad = NULL;
	int r = q->context->ops.post_send(q, wrbuf, &bad);
	if (r == 0) {
		*posted = n;
		return 0;
	}
	*posted = bad ? (int)((struct mcv_send_wr *)bad - wrbuf) : 0;
	if (*posted < 0 || *posted > n)
		*posted = 0;
	return r;
}

/* Takes one async event (non-blocking) and acknowledges it: 0, or an errno
 * value (EAGAIN when there is none). */
static int mcv_get_async_event(struct mcv_context *c, int *type, int *port, uint32_t *qpn) {
	struct mcv_async_event ev;
	errno = 0;
	if (mcv.get_async_event(c, &ev))
		return errno ? errno : EIO;
	*type = ev.event_type;
	*port = 0;
	*qpn = 0;
	switch (ev.event_type) {
	case MCV_EVENT_QP_FATAL:
	case MCV_EVENT_QP_REQ_ERR:
	case MCV_EVENT_QP_ACCESS_ERR:
	case MCV_EVENT_COMM_EST:
	case MCV_EVENT_SQ_DRAINED:
	case MCV_EVENT_PATH_MIG:
	case MCV_EVENT_PATH_MIG_ERR:
	case MCV_EVENT_QP_LAST_WQE_REACHED:
		*qpn = ev.element.qp ? ev.element.qp->qp_num : 0;
		break;
	case MCV_EVENT_PORT_ACTIVE:
	case MCV_EVENT_PORT_ERR:
	case MCV_EVENT_LID_CHANGE:
	case MCV_EVENT_PKEY_CHANGE:
	case MCV_EVENT_SM_CHANGE:
	case MCV_EVENT_CLIENT_REREGISTER:
	case MCV_EVENT_GID_CHANGE:
		*port = ev.element.port_num;
		break;
	}
	mcv.ack_async_event(&ev);
	return 0;
}

#endif
