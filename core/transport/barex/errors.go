package barex

import (
	"context"
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/memreg"
)

var (
	// ErrUnavailable matches every conclusive "barex cannot be used here":
	// the shim library is absent (its dlerror text is kept), or barex has
	// no usable device (ErrNoDevices). With USE_BAREX=1 it is an init
	// failure; the engine never falls back silently.
	ErrUnavailable = dl.ErrUnavailable
	// ErrNoDevices means barex lists no device the topology names, or none
	// whose contexts started. It matches ErrUnavailable.
	ErrNoDevices = fmt.Errorf("barex: no usable device: %w", dl.ErrUnavailable)
	// ErrABIVersion means a shim was found but speaks another ABI version
	// than this build (mcbx_abi_version).
	ErrABIVersion = errors.New("barex: shim abi version mismatch")
	// ErrInvalidConfig matches every Config and argument error.
	ErrInvalidConfig = errors.New("barex: invalid config")
	// ErrClosed fails work submitted to, or queued in, a closed transport,
	// and work queued for a peer that ClosePeer closed.
	ErrClosed = transport.ErrClosed
	// ErrAddressNotRegistered means a local or remote range is not inside
	// memory registered with the transport (or published by the peer).
	ErrAddressNotRegistered = memreg.ErrNotRegistered
	// ErrRegistered means a range overlaps memory registered already.
	ErrRegistered = memreg.ErrRegistered
	// ErrHandshake matches barex_port exchange failures: the RPC failed,
	// the peer refused (reply_msg), or it sent no usable barex_port (it is
	// not a barex engine). It matches transport.ErrPeer.
	ErrHandshake = fmt.Errorf("barex: connection handshake failed: %w", transport.ErrPeer)
	// ErrChannel matches channel failures: a setup that failed, a channel
	// placed on another NIC than asked, a peer with fewer healthy channels
	// than MC_NUM_QP_PER_EP on some device (CheckStatus). It matches
	// transport.ErrPeer.
	ErrChannel = fmt.Errorf("barex: channel failure: %w", transport.ErrPeer)
	// ErrNoKey means the peer published no remote key for the NIC a
	// channel reached.
	ErrNoKey = errors.New("barex: peer published no key for the nic")
)

// Code is a shim return or completion code, MCBX_E* of mc_barex_shim.h.
// Its text comes from a table in Go, so it reads the same before any
// library is loaded. CodeTimedOut matches context.DeadlineExceeded and
// CodeClosed matches ErrClosed.
type Code int32

// The shim's codes (mc_barex_shim.h).
const (
	CodeInvalid       Code = -1
	CodeNoMemory      Code = -2
	CodeNoDevice      Code = -3
	CodeAddrInUse     Code = -4
	CodeConnect       Code = -5
	CodeTimedOut      Code = -6
	CodeBadChannel    Code = -7
	CodeInactive      Code = -8
	CodeNotRegistered Code = -9
	CodeAgain         Code = -10
	CodeClosed        Code = -11
	CodeIO            Code = -12
	CodeAccess        Code = -13
)

var codeText = map[Code]string{
	CodeInvalid:       "invalid argument",
	CodeNoMemory:      "out of memory",
	CodeNoDevice:      "no barex device",
	CodeAddrInUse:     "no free listen port",
	CodeConnect:       "channel setup failed",
	CodeTimedOut:      "timed out",
	CodeBadChannel:    "bad channel handle",
	CodeInactive:      "channel inactive",
	CodeNotRegistered: "memory not registered",
	CodeAgain:         "queue full",
	CodeClosed:        "engine closing",
	CodeIO:            "barex i/o error",
	CodeAccess:        "key or range rejected",
}

func (c Code) Error() string {
	if s, ok := codeText[c]; ok {
		return s
	}
	return fmt.Sprintf("barex shim error %d", int32(c))
}

// Is lets a timeout match context.DeadlineExceeded (STYLE (c).5), a
// closing engine match ErrClosed, a rejected key or range match
// transport.ErrRejected, and a failed channel (setup, inactive, i/o, a
// handle barex no longer knows) match transport.ErrPeer.
func (c Code) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return c == CodeTimedOut
	case ErrClosed:
		return c == CodeClosed
	case transport.ErrRejected:
		return c == CodeAccess
	case transport.ErrPeer:
		return c == CodeConnect || c == CodeInactive || c == CodeIO || c == CodeBadChannel
	}
	return false
}

// ShimError is a failed shim call: the function, its code, and the shim's
// detail (barex's own text, from mcbx_last_error). It unwraps to the Code.
type ShimError struct {
	// Op is the shim function, e.g. "mcbx_connect".
	Op string
	// Code is what it returned.
	Code Code
	// Detail is the shim's text for the failure ("" when it gave none).
	Detail string
}

func (e *ShimError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%s: %v", e.Op, e.Code)
	}
	return fmt.Sprintf("%s: %v: %s", e.Op, e.Code, e.Detail)
}

// Unwrap returns the code.
func (e *ShimError) Unwrap() error { return e.Code }

// SliceError is how a failed task reports its cause: the peer, the range,
// the local device and the peer NIC, and what went wrong (a Code from a
// completion, a *ShimError from a post or a channel setup, ErrClosed, a
// context error). It unwraps to the cause, which decides the
// transport-neutral sentinel it matches: a Code or *ShimError through
// Code.Is; a batch on a channel this side closed matches why it was closed
// (ErrClosed after ClosePeer or Close) and keeps the code barex reported
// only as itself (errors.Is(err, CodeIO)), never as a peer failure.
type SliceError struct {
	// Peer is the target segment name.
	Peer string
	// Op is "read" or "write".
	Op string
	// Remote and Length are the failed piece's range.
	Remote, Length uint64
	// Device is the local device name; PeerNIC the peer's barex NIC id
	// (-1 when no channel was reached).
	Device  string
	PeerNIC int
	// Err is the cause.
	Err error
}

func (e *SliceError) Error() string {
	return fmt.Sprintf("barex %s of %d bytes at %#x on peer %q (device %s, peer nic %d): %v",
		e.Op, e.Length, e.Remote, e.Peer, e.Device, e.PeerNIC, e.Err)
}

// Unwrap returns the cause.
func (e *SliceError) Unwrap() error { return e.Err }

// closedChannelError is the failure of a batch on a channel the transport
// had closed: the batch failed because this side took the channel away.
// It unwraps to why the channel was closed, so that ClosePeer and Close
// fail work with ErrClosed alone, and matches the barex code the shim
// reported for it, but not that code's transport-neutral sentinel.
type closedChannelError struct {
	op     string // "post" or "batch"
	handle uint64
	native error // the shim's failure: a Code or a *ShimError
	cause  error // why the channel was closed
}

func (e *closedChannelError) Error() string {
	return fmt.Sprintf("%s on channel %#x: %v (the channel was closed: %v)", e.op, e.handle, e.native, e.cause)
}

// Unwrap returns why the channel was closed.
func (e *closedChannelError) Unwrap() error { return e.cause }

// Is matches the code the shim reported.
func (e *closedChannelError) Is(target error) bool {
	c, ok := target.(Code)
	return ok && errors.Is(e.native, c)
}

// channelError is the failure of a post or a batch on ch: the shim's
// error, or a closedChannelError when the transport had closed ch.
func channelError(ch *channel, op string, native error) error {
	if cause := ch.closed.Load(); cause != nil {
		return &closedChannelError{op: op, handle: ch.handle, native: native, cause: *cause}
	}
	return fmt.Errorf("%s on channel %#x: %w", op, ch.handle, native)
}
