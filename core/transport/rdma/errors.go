package rdma

import (
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/memreg"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

var (
	// ErrUnavailable matches every conclusive "RDMA cannot be used here":
	// libibverbs absent, or no usable RDMA device. The engine falls back to
	// TCP on it unless MC_FORCE_HCA is set.
	ErrUnavailable = verbs.ErrUnavailable
	// ErrNoDevices means no RDMA device is usable ("no RDMA devices"). It
	// matches ErrUnavailable.
	ErrNoDevices = verbs.ErrNoDevices
	// ErrClosed fails work submitted to, or still queued in, a closed
	// transport, or queued for a peer that ClosePeer closed.
	ErrClosed = transport.ErrClosed
	// ErrAddressNotRegistered means a local or remote range is not inside
	// memory registered with the transport (or published by the peer).
	ErrAddressNotRegistered = memreg.ErrNotRegistered
	// ErrNoPath means no usable local or remote NIC could be chosen.
	ErrNoPath = errors.New("rdma: no usable nic path")
	// ErrHandshake matches connection setup failures: the RPC failed, the
	// peer refused (reply_msg), or its reply did not match. It matches
	// transport.ErrPeer.
	ErrHandshake = fmt.Errorf("rdma: connection handshake failed: %w", transport.ErrPeer)
	// ErrRetriesExhausted means a slice failed on every try MC_RETRY_CNT
	// allowed; the *SliceError says the last cause.
	ErrRetriesExhausted = errors.New("rdma: retries exhausted")
	// ErrGPUMemory means GPU memory cannot be registered: nvidia-peermem is
	// not loaded and no dma-buf exporter was given.
	ErrGPUMemory = errors.New("rdma: gpu memory needs nvidia-peermem or dma-buf")
	// ErrRegistered means a range overlaps memory registered already.
	ErrRegistered = memreg.ErrRegistered
)

// SliceError is how a failed task reports its cause: the peer, the range,
// the NICs of the last try and what went wrong (a verbs.WCStatus, a post
// error, a handshake error, ErrClosed, a context error). It unwraps to the
// cause and matches ErrRetriesExhausted when the slice used up its
// retries. A completion status also decides which transport-neutral
// sentinel it matches (see classify); every other cause carries its own
// (ErrHandshake matches transport.ErrPeer, ErrClosed is
// transport.ErrClosed).
type SliceError struct {
	// Peer is the target segment name.
	Peer string
	// Op is "read" or "write".
	Op string
	// Remote and Length are the failed slice's range.
	Remote, Length uint64
	// LocalNIC and PeerNIC are the NIC paths of the last try (empty when no
	// path was chosen).
	LocalNIC, PeerNIC string
	// Retries is how many retries the slice used.
	Retries int
	// Exhausted is true when the slice failed because retries ran out.
	Exhausted bool
	// Err is the last cause.
	Err error
}

func (e *SliceError) Error() string {
	return fmt.Sprintf("rdma %s of %d bytes at %#x on peer %q (%s -> %s, %d retries): %v",
		e.Op, e.Length, e.Remote, e.Peer, e.LocalNIC, e.PeerNIC, e.Retries, e.Err)
}

// Unwrap returns the cause.
func (e *SliceError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrRetriesExhausted) true when retries ran out,
// and matches the sentinel that classify gives a completion status cause.
func (e *SliceError) Is(target error) bool {
	if target == ErrRetriesExhausted {
		return e.Exhausted
	}
	var st verbs.WCStatus
	if target == nil || !errors.As(e.Err, &st) {
		return false
	}
	return classify(st) == target
}

// classify is the transport-neutral sentinel a failed completion matches:
//   - transport.ErrRejected when the target refused the request: a remote
//     access error (the key or range its descriptor published is no longer
//     valid: it restarted, or unregistered the memory) or an invalid
//     request;
//   - transport.ErrPeer when the path to the peer or its queue pair failed:
//     transport or RNR retries exceeded (it is gone or unreachable), a
//     remote operation error, an aborted or bad response, or a request
//     flushed because its queue pair went to the error state;
//   - nil for a local failure (a local protection, length or queue pair
//     error, a fatal HCA error): no peer is to blame.
func classify(st verbs.WCStatus) error {
	switch st {
	case verbs.WCRemAccessErr, verbs.WCRemInvReqErr, verbs.WCRemInvRdReqErr:
		return transport.ErrRejected
	case verbs.WCRetryExcErr, verbs.WCRNRRetryExcErr, verbs.WCWRFlushErr, verbs.WCRemOpErr,
		verbs.WCRemAbortErr, verbs.WCRespTimeoutErr, verbs.WCBadRespErr:
		return transport.ErrPeer
	}
	return nil
}
