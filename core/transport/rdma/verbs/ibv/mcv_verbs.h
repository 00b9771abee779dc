/*
 * mcv_verbs.h: the part of libibverbs' ABI (rdma-core's <infiniband/verbs.h>)
 * that pymooncake uses, declared here so that building needs no rdma-core
 * headers. Every name carries an mcv_ prefix so that layout_test.go can
 * compile this file next to the real header and check, field by field, that
 * the layouts agree. Structures that libibverbs allocates are declared only
 * up to the last field read; structures that pymooncake allocates are
 * complete. Written from the rdma-core 44 header (ABI stable since
 * libibverbs 1.1).
 */
#ifndef MCV_VERBS_H
#define MCV_VERBS_H

#include <stddef.h>
#include <stdint.h>

struct mcv_device;
struct mcv_context;
struct mcv_cq;
struct mcv_qp;

/* struct ibv_context_ops: 32 function pointers; three are called. */
struct mcv_context_ops {
	void *compat_query_device, *compat_query_port, *compat_alloc_pd, *compat_dealloc_pd;
	void *compat_reg_mr, *compat_rereg_mr, *compat_dereg_mr, *alloc_mw, *bind_mw, *dealloc_mw;
	void *compat_create_cq;
	int (*poll_cq)(struct mcv_cq *cq, int num_entries, void *wc);
	int (*req_notify_cq)(struct mcv_cq *cq, int solicited_only);
	void *compat_cq_event, *compat_resize_cq, *compat_destroy_cq, *compat_create_srq;
	void *compat_modify_srq, *compat_query_srq, *compat_destroy_srq, *post_srq_recv;
	void *compat_create_qp, *compat_query_qp, *compat_modify_qp, *compat_destroy_qp;
	int (*post_send)(struct mcv_qp *qp, void *wr, void **bad_wr);
	void *post_recv, *compat_create_ah, *compat_destroy_ah, *compat_attach_mcast;
	void *compat_detach_mcast, *compat_async_event;
};

/* struct ibv_context, up to num_comp_vectors. */
struct mcv_context {
	struct mcv_device *device;
	struct mcv_context_ops ops;
	int cmd_fd;
	int async_fd;
	int num_comp_vectors;
};

struct mcv_device_attr {
	char fw_ver[64];
	uint64_t node_guid;
	uint64_t sys_image_guid;
	uint64_t max_mr_size;
	uint64_t page_size_cap;
	uint32_t vendor_id;
	uint32_t vendor_part_id;
	uint32_t hw_ver;
	int max_qp;
	int max_qp_wr;
	unsigned int device_cap_flags;
	int max_sge;
	int max_sge_rd;
	int max_cq;
	int max_cqe;
	int max_mr;
	int max_pd;
	int max_qp_rd_atom;
	int max_ee_rd_atom;
	int max_res_rd_atom;
	int max_qp_init_rd_atom;
	int max_ee_init_rd_atom;
	int atomic_cap;
	int max_ee;
	int max_rdd;
	int max_mw;
	int max_raw_ipv6_qp;
	int max_raw_ethy_qp;
	int max_mcast_grp;
	int max_mcast_qp_attach;
	int max_total_mcast_qp_attach;
	int max_ah;
	int max_fmr;
	int max_map_per_fmr;
	int max_srq;
	int max_srq_wr;
	int max_srq_sge;
	uint16_t max_pkeys;
	uint8_t local_ca_ack_delay;
	uint8_t phys_port_cnt;
};

struct mcv_port_attr {
	int state;
	int max_mtu;
	int active_mtu;
	int gid_tbl_len;
	uint32_t port_cap_flags;
	uint32_t max_msg_sz;
	uint32_t bad_pkey_cntr;
	uint32_t qkey_viol_cntr;
	uint16_t pkey_tbl_len;
	uint16_t lid;
	uint16_t sm_lid;
	uint8_t lmc;
	uint8_t max_vl_num;
	uint8_t sm_sl;
	uint8_t subnet_timeout;
	uint8_t init_type_reply;
	uint8_t active_width;
	uint8_t active_speed;
	uint8_t phys_state;
	uint8_t link_layer;
	uint8_t flags;
	uint16_t port_cap_flags2;
};

union mcv_gid {
	uint8_t raw[16];
	struct {
		uint64_t subnet_prefix;
		uint64_t interface_id;
	} global;
};

struct mcv_gid_entry {
	union mcv_gid gid;
	uint32_t gid_index;
	uint32_t port_num;
	uint32_t gid_type;
	uint32_t ndev_ifindex;
};

struct mcv_pd {
	struct mcv_context *context;
	uint32_t handle;
};

struct mcv_mr {
	struct mcv_context *context;
	struct mcv_pd *pd;
	void *addr;
	size_t length;
	uint32_t handle;
	uint32_t lkey;
	uint32_t rkey;
};

struct mcv_comp_channel {
	struct mcv_context *context;
	int fd;
	int refcnt;
};

/* struct ibv_cq, up to cqe. */
struct mcv_cq {
	struct mcv_context *context;
	struct mcv_comp_channel *channel;
	void *cq_context;
	uint32_t handle;
	int cqe;
};

/* struct ibv_qp, up to qp_type. */
struct mcv_qp {
	struct mcv_context *context;
	void *qp_context;
	struct mcv_pd *pd;
	struct mcv_cq *send_cq;
	struct mcv_cq *recv_cq;
	void *srq;
	uint32_t handle;
	uint32_t qp_num;
	int state;
	int qp_type;
};

struct mcv_qp_cap {
	uint32_t max_send_wr;
	uint32_t max_recv_wr;
	uint32_t max_send_sge;
	uint32_t max_recv_sge;
	uint32_t max_inline_data;
};

struct mcv_qp_init_attr {
	void *qp_context;
	struct mcv_cq *send_cq;
	struct mcv_cq *recv_cq;
	void *srq;
	struct mcv_qp_cap cap;
	int qp_type;
	int sq_sig_all;
};

struct mcv_global_route {
	union mcv_gid dgid;
	uint32_t flow_label;
	uint8_t sgid_index;
	uint8_t hop_limit;
	uint8_t traffic_class;
};

struct mcv_ah_attr {
	struct mcv_global_route grh;
	uint16_t dlid;
	uint8_t sl;
	uint8_t src_path_bits;
	uint8_t static_rate;
	uint8_t is_global;
	uint8_t port_num;
};

struct mcv_qp_attr {
	int qp_state;
	int cur_qp_state;
	int path_mtu;
	int path_mig_state;
	uint32_t qkey;
	uint32_t rq_psn;
	uint32_t sq_psn;
	uint32_t dest_qp_num;
	unsigned int qp_access_flags;
	struct mcv_qp_cap cap;
	struct mcv_ah_attr ah_attr;
	struct mcv_ah_attr alt_ah_attr;
	uint16_t pkey_index;
	uint16_t alt_pkey_index;
	uint8_t en_sqd_async_notify;
	uint8_t sq_draining;
	uint8_t max_rd_atomic;
	uint8_t max_dest_rd_atomic;
	uint8_t min_rnr_timer;
	uint8_t port_num;
	uint8_t timeout;
	uint8_t retry_cnt;
	uint8_t rnr_retry;
	uint8_t alt_port_num;
	uint8_t alt_timeout;
	uint32_t rate_limit;
};

struct mcv_sge {
	uint64_t addr;
	uint32_t length;
	uint32_t lkey;
};

struct mcv_mw_bind_info {
	struct mcv_mr *mr;
	uint64_t addr;
	uint64_t length;
	unsigned int mw_access_flags;
};

struct mcv_send_wr {
	uint64_t wr_id;
	struct mcv_send_wr *next;
	struct mcv_sge *sg_list;
	int num_sge;
	int opcode;
	unsigned int send_flags;
	uint32_t imm_data;
	union {
		struct {
			uint64_t remote_addr;
			uint32_t rkey;
		} rdma;
		struct {
			uint64_t remote_addr;
			uint64_t compare_add;
			uint64_t swap;
			uint32_t rkey;
		} atomic;
		struct {
			void *ah;
			uint32_t remote_qpn;
			uint32_t remote_qkey;
		} ud;
	} wr;
	union {
		struct {
			uint32_t remote_srqn;
		} xrc;
	} qp_type;
	union {
		struct {
			void *mw;
			uint32_t rkey;
			struct mcv_mw_bind_info bind_info;
		} bind_mw;
		struct {
			void *hdr;
			uint16_t hdr_sz;
			uint16_t mss;
		} tso;
	} u;
};

struct mcv_wc {
	uint64_t wr_id;
	int status;
	int opcode;
	uint32_t vendor_err;
	uint32_t byte_len;
	uint32_t imm_data;
	uint32_t qp_num;
	uint32_t src_qp;
	unsigned int wc_flags;
	uint16_t pkey_index;
	uint16_t slid;
	uint8_t sl;
	uint8_t dlid_path_bits;
};

struct mcv_async_event {
	union {
		struct mcv_cq *cq;
		struct mcv_qp *qp;
		void *srq;
		void *wq;
		int port_num;
	} element;
	int event_type;
};

/* Event types whose element is a QP or a port (enum ibv_event_type). */
enum {
	MCV_EVENT_QP_FATAL = 1,
	MCV_EVENT_QP_REQ_ERR = 2,
	MCV_EVENT_QP_ACCESS_ERR = 3,
	MCV_EVENT_COMM_EST = 4,
	MCV_EVENT_SQ_DRAINED = 5,
	MCV_EVENT_PATH_MIG = 6,
	MCV_EVENT_PATH_MIG_ERR = 7,
	MCV_EVENT_PORT_ACTIVE = 9,
	MCV_EVENT_PORT_ERR = 10,
	MCV_EVENT_LID_CHANGE = 11,
	MCV_EVENT_PKEY_CHANGE = 12,
	MCV_EVENT_SM_CHANGE = 13,
	MCV_EVENT_QP_LAST_WQE_REACHED = 16,
	MCV_EVENT_CLIENT_REREGISTER = 17,
	MCV_EVENT_GID_CHANGE = 18,
};

enum { MCV_QPT_RC = 2, MCV_SEND_SIGNALED = 1 << 1 };

#endif
