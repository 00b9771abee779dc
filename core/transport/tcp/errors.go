package tcp

import (
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/transport"
)

// The transport-neutral sentinels this package reports, re-exported.
var (
	// ErrRejected means the target refused the request's address range
	// (v2 REJECTED status frame).
	ErrRejected = transport.ErrRejected
	// ErrClosed means the transport, or the peer's connections, were closed
	// before the task finished.
	ErrClosed = transport.ErrClosed
	// ErrPeer matches connection-level failures: dial errors, resets, EOF,
	// and I/O that made no progress within its timeout.
	ErrPeer = transport.ErrPeer
)

var (
	// ErrLegacyPeer means a status frame lacked the "MCTV" magic: the peer
	// does not speak v2.
	ErrLegacyPeer = errors.New("tcp: status frame without v2 magic (legacy peer)")
	// ErrUnknownStatus means a status frame had the v2 magic but a code that
	// is neither OK nor REJECTED.
	ErrUnknownStatus = errors.New("tcp: unknown v2 status code")
	// ErrInvalidConfig means New was given a bad Config.
	ErrInvalidConfig = errors.New("tcp: invalid config")
	// ErrStaging means GPU memory could not be copied through host memory
	// (no staging buffers, or a device copy failed). Only that task fails;
	// the peer is not blamed.
	ErrStaging = errors.New("tcp: staging GPU memory through host memory failed")
)

// PeerError is how every failed task reports its cause: which peer, which
// request, and what went wrong. It unwraps to the cause (a sentinel of this
// package, a net error or a context error) and matches ErrPeer when the
// failure was at the connection level.
type PeerError struct {
	// Peer is the target segment name.
	Peer string
	// Addr is the data endpoint, host:port.
	Addr string
	// Op is "read" or "write".
	Op string
	// Remote and Size are the address range of the failed request (or part).
	Remote, Size uint64
	// Conn is true for connection-level failures (see ErrPeer).
	Conn bool
	// Err is the cause.
	Err error
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("tcp %s of %d bytes at %#x on peer %q (%s): %v", e.Op, e.Size, e.Remote, e.Peer, e.Addr, e.Err)
}

// Unwrap returns the cause.
func (e *PeerError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPeer) true for connection-level failures.
func (e *PeerError) Is(target error) bool { return target == ErrPeer && e.Conn }
