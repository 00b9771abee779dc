package verbs

import (
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

var (
	// ErrUnavailable matches an absent libibverbs (and ErrNoDevices): RDMA
	// cannot be used on this host, conclusively.
	ErrUnavailable = dl.ErrUnavailable
	// ErrNoDevices means libibverbs loaded but lists no RDMA device (or the
	// kernel has no RDMA support). It matches ErrUnavailable.
	ErrNoDevices = fmt.Errorf("no RDMA devices: %w", dl.ErrUnavailable)
	// ErrClosed is returned by calls on a closed object, and by waits that
	// the object's Close interrupted.
	ErrClosed = errors.New("verbs: object closed")
	// ErrNoSuchDevice means Open was given a name that Devices does not list.
	ErrNoSuchDevice = errors.New("verbs: no such device")
	// ErrNotSupported means the loaded library lacks an optional verb
	// (ibv_reg_dmabuf_mr on rdma-core < 34, for example).
	ErrNotSupported = errors.New("verbs: not supported by the loaded libibverbs")
)
