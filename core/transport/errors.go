package transport

import (
	"errors"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// The sentinels every transport's errors match, so that the engine decides
// on retries and recovery without knowing which transport failed. Each
// transport re-exports the ones it reports (tcp.ErrRejected is
// ErrRejected) or gives its error types an Is method that matches them.
var (
	// ErrPeer matches failures of the connection to a peer: refused,
	// reset, closed, timed out without progress, a queue pair in error, a
	// channel gone bad. The peer may have died or restarted; the engine
	// drops its handle and resolves it again.
	ErrPeer = errors.New("peer connection failed")
	// ErrRejected means the target refused a request's address range. Only
	// that request fails; a target that refuses a range its descriptor
	// publishes may be a new incarnation of the peer.
	ErrRejected = errors.New("remote address range rejected by peer")
	// ErrClosed means the transport, or its connections to the peer, were
	// closed before the task finished.
	ErrClosed = errors.New("transport closed")
	// ErrUnavailable matches every conclusive "this transport cannot run
	// here": its native library or device is absent. Any other error from
	// a transport's constructor means it is broken, not absent.
	ErrUnavailable = dl.ErrUnavailable
	// ErrNotOnStream is a StreamSubmitter's answer for requests it cannot
	// queue on a CUDA stream itself; nothing was queued.
	ErrNotOnStream = errors.New("transfer cannot be queued on the CUDA stream directly")
)
