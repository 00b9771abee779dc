package verbs

import "context"

// Provider opens RDMA devices: the loaded libibverbs, or a fake fabric.
type Provider interface {
	// Devices lists the device names. No device is ErrNoDevices.
	Devices() ([]string, error)
	// Open opens the named device (ibv_open_device).
	Open(name string) (Device, error)
	// Close releases the provider (for ibv, its reference on the library).
	Close() error
}

// Device is an opened RDMA device context (ibv_context).
type Device interface {
	// Name is the device name, e.g. "mlx5_0".
	Name() string
	// Query is ibv_query_device plus num_comp_vectors.
	Query() (DeviceAttr, error)
	// QueryPort is ibv_query_port.
	QueryPort(port uint8) (PortAttr, error)
	// QueryGID reads one GID table entry with its type and netdev.
	QueryGID(port uint8, index int) (GIDEntry, error)
	// AllocPD is ibv_alloc_pd.
	AllocPD() (PD, error)
	// CreateCompChannel is ibv_create_comp_channel.
	CreateCompChannel() (CompChannel, error)
	// CreateCQ is ibv_create_cq with cqe entries, reporting to ch (may be
	// nil) on completion vector vector.
	CreateCQ(cqe int, ch CompChannel, vector int) (CQ, error)
	// AsyncEvent waits for the next asynchronous event (ibv_get_async_event
	// and its ack), until ctx ends (its error) or the device is closed
	// (ErrClosed).
	AsyncEvent(ctx context.Context) (AsyncEvent, error)
	// Close is ibv_close_device.
	Close() error
}

// PD is a protection domain.
type PD interface {
	// RegMR registers [addr, addr+length) (ibv_reg_mr, or
	// ibv_reg_mr_iova2 for optional access flags).
	RegMR(addr uintptr, length uint64, access Access) (MR, error)
	// RegDmabufMR registers length bytes at offset of the dma-buf fd,
	// addressed by peers at iova (ibv_reg_dmabuf_mr). ErrNotSupported when
	// the library lacks it.
	RegDmabufMR(offset, length, iova uint64, fd int, access Access) (MR, error)
	// CreateQP creates an RC queue pair in RESET.
	CreateQP(init QPInit) (QP, error)
	// Close is ibv_dealloc_pd.
	Close() error
}

// MR is a registered memory region.
type MR interface {
	LKey() uint32
	RKey() uint32
	// Close is ibv_dereg_mr.
	Close() error
}

// QP is an RC queue pair.
type QP interface {
	// Num is the QP number peers address.
	Num() uint32
	// Modify is ibv_modify_qp with the attributes mask selects.
	Modify(attr *QPAttr, mask QPAttrMask) error
	// PostSend posts wrs as one chain (ibv_post_send), each signaled. It
	// returns how many were accepted: on error, wrs[posted] is the bad
	// request and none after it was posted.
	PostSend(wrs []SendWR) (posted int, err error)
	// Close is ibv_destroy_qp.
	Close() error
}

// CQ is a completion queue.
type CQ interface {
	// Poll fills wcs with up to len(wcs) completions (ibv_poll_cq).
	Poll(wcs []WC) (int, error)
	// ReqNotify arms the CQ: the next completion raises an event on its
	// channel (ibv_req_notify_cq, all completions).
	ReqNotify() error
	// Close is ibv_destroy_cq.
	Close() error
}

// CompChannel delivers CQ events.
type CompChannel interface {
	// Wait blocks until an armed CQ of this channel has a completion and
	// returns that CQ, the event already acknowledged. It returns ctx's
	// error when ctx ends and ErrClosed when the channel is closed.
	Wait(ctx context.Context) (CQ, error)
	// Close is ibv_destroy_comp_channel.
	Close() error
}
