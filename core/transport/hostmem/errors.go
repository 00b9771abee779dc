package hostmem

import (
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/transport"
)

// The transport-neutral sentinels this package reports, re-exported.
var (
	// ErrPeer matches failures of the peer itself: its process exited
	// (the control connection closed, or the kernel answered ESRCH), it
	// stopped answering the shared-memory ring within Config.IOTimeout,
	// or cross-memory attach to it stopped being allowed.
	ErrPeer = transport.ErrPeer
	// ErrRejected means a range was not inside one host-memory region the
	// target registered (or it was being unregistered). Only that task
	// fails.
	ErrRejected = transport.ErrRejected
	// ErrClosed means the transport, or its connection to the peer, was
	// closed before the task finished.
	ErrClosed = transport.ErrClosed
	// ErrUnavailable means the transport cannot run here (not Linux, no
	// memfd, no /proc to tell the host's identity).
	ErrUnavailable = transport.ErrUnavailable
)

var (
	// ErrInvalidConfig means New was given a bad Config.
	ErrInvalidConfig = errors.New("hostmem: invalid config")
	// ErrMalformed means a peer sent a control message that cannot be
	// trusted; the connection is dropped.
	ErrMalformed = errors.New("hostmem: malformed control message")
	// ErrNoPath means neither cross-memory attach nor the shared-memory ring
	// can serve the peer (and the transport has no fallback to hand its
	// tasks to).
	ErrNoPath = errors.New("hostmem: no same-host path to the peer")
	// ErrCopy means the kernel refused a copy for a reason that concerns
	// that range alone (a page not mapped on either side: EFAULT). Only
	// that task fails.
	ErrCopy = errors.New("hostmem: copy failed")
)

// PeerError is how every failed task reports its cause: which peer, which
// request, over which path, and what went wrong. It unwraps to the cause (a
// sentinel of this package, an errno, or a context error).
type PeerError struct {
	// Peer is the target segment name.
	Peer string
	// Path is "cma", "ring" or "" (before a path was chosen).
	Path string
	// Op is "read" or "write".
	Op string
	// Remote and Size are the remote range of the failed task (or part).
	Remote, Size uint64
	// Err is the cause.
	Err error
}

func (e *PeerError) Error() string {
	path := e.Path
	if path == "" {
		path = "setup"
	}
	return fmt.Sprintf("hostmem %s %s of %d bytes at %#x on peer %q: %v", path, e.Op, e.Size, e.Remote, e.Peer, e.Err)
}

// Unwrap returns the cause.
func (e *PeerError) Unwrap() error { return e.Err }
