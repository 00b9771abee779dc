package bindings

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Mooncake's return codes (mooncake-transfer-engine/include/error.h).
const (
	codeInvalidArgument      = -1
	codeTooManyRequests      = -2
	codeAddressNotRegistered = -3
	codeBatchBusy            = -4
	codeAddressOverlapped    = -7
	codeSocket               = -102
	codeMetadata             = -200
	codeNotImplemented       = -303
)

// Error kinds name the class of a failure for Python's strict mode; each
// maps to one exception class in pymooncake/_errors.py.
const (
	kindInvalid        = "invalid"
	kindTooMany        = "too_many_requests"
	kindNotRegistered  = "not_registered"
	kindBusy           = "batch_busy"
	kindOverlapped     = "overlapped"
	kindUnknownBatch   = "unknown_batch"
	kindUnknownSegment = "unknown_segment"
	kindMetadata       = "metadata"
	kindSocket         = "socket"
	kindTimeout        = "timeout"
	kindClosed         = "closed"
	kindNotSupported   = "not_supported"
	kindInternal       = "internal"
	kindFailed         = "failed"
)

// errInternal marks a recovered panic.
var errInternal = errors.New("internal error")

// classes is checked in order; the first match decides the code and kind.
var classes = []struct {
	err  error
	code int
	kind string
}{
	{errInternal, codeInvalidArgument, kindInternal},
	{engine.ErrClosed, codeInvalidArgument, kindClosed},
	{engine.ErrTooManyRequests, codeTooManyRequests, kindTooMany},
	{engine.ErrAddressNotRegistered, codeAddressNotRegistered, kindNotRegistered},
	{transport.ErrRejected, codeAddressNotRegistered, kindNotRegistered},
	{engine.ErrBatchBusy, codeBatchBusy, kindBusy},
	{engine.ErrAddressOverlapped, codeAddressOverlapped, kindOverlapped},
	{engine.ErrUnknownBatch, codeInvalidArgument, kindUnknownBatch},
	{engine.ErrUnknownTicket, codeInvalidArgument, kindUnknownBatch},
	{engine.ErrUnknownSegment, codeInvalidArgument, kindUnknownSegment},
	{engine.ErrNotSupported, codeNotImplemented, kindNotSupported},
	{transport.ErrUnavailable, codeNotImplemented, kindNotSupported},
	{metadata.ErrUnsupportedBackend, codeNotImplemented, kindNotSupported},
	{engine.ErrInvalidArgument, codeInvalidArgument, kindInvalid},
	{context.DeadlineExceeded, codeInvalidArgument, kindTimeout},
	{engine.ErrMetadata, codeMetadata, kindMetadata},
	{metadata.ErrMalformed, codeMetadata, kindMetadata},
	{transport.ErrPeer, codeSocket, kindSocket},
	{handshake.ErrInvalidAddress, codeSocket, kindSocket},
}

// classify returns Mooncake's code and the kind of err.
func classify(err error) (code int, kind string) {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code, c.kind
		}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			return codeSocket, kindTimeout
		}
		return codeSocket, kindSocket
	}
	return codeInvalidArgument, kindFailed
}

// fail turns err into the error gopy hands to Python as RuntimeError:
// "mc:<code>:<kind>: <op>: <err>". The text is on one line so that the
// Python side can parse it with one pattern.
func fail(op string, err error) error {
	code, kind := classify(err)
	msg := strings.ReplaceAll(err.Error(), "\n", "; ")
	return fmt.Errorf("mc:%d:%s: %s: %s", code, kind, op, msg)
}

// invalid is fail for a bad argument found here rather than in core.
func invalid(op, format string, args ...any) error {
	return fail(op, fmt.Errorf(format+": %w", append(args, engine.ErrInvalidArgument)...))
}
