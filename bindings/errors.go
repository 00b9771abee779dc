package bindings

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	codeDNS                  = -101
	codeSocket               = -102
	codeMalformedJSON        = -103
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
	kindDNS            = "dns"
	kindSocket         = "socket"
	kindMalformed      = "malformed"
	kindTimeout        = "timeout"
	kindClosed         = "closed"
	kindNotSupported   = "not_supported"
	kindInternal       = "internal"
	kindFailed         = "failed"
)

// errInternal marks a recovered panic.
var errInternal = errors.New("internal error")

// classes is checked in order; the first match decides the code and kind.
// The codes follow what Mooncake's engine returns for the same cause, which
// is visible where a method returns the code itself (send_probe and the
// memory registration methods): a host that cannot be resolved is ERR_DNS,
// a connection that fails, closes early or answers with a bad frame or the
// wrong message type is ERR_SOCKET, a reply that is not JSON is
// ERR_MALFORMED_JSON. A failure that ran out of time keeps the code of what
// it was doing (classify).
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
	{engine.ErrMetadata, codeMetadata, kindMetadata},
	{metadata.ErrMalformed, codeMetadata, kindMetadata},
	{handshake.ErrNotifyRejected, codeMetadata, kindMetadata},
	// A name whose host part is empty or not a host (Mooncake's getaddrinfo
	// fails on it).
	{handshake.ErrInvalidAddress, codeDNS, kindDNS},
	{handshake.ErrMalformed, codeMalformedJSON, kindMalformed},
	{handshake.ErrUnexpectedType, codeSocket, kindSocket},
	{handshake.ErrTruncated, codeSocket, kindSocket},
	{handshake.ErrFrameTooLarge, codeSocket, kindSocket},
	{handshake.ErrEmptyFrame, codeSocket, kindSocket},
	{handshake.ErrUnknownType, codeSocket, kindSocket},
	{transport.ErrPeer, codeSocket, kindSocket},
	{io.EOF, codeSocket, kindSocket},
	{io.ErrUnexpectedEOF, codeSocket, kindSocket},
}

// classify returns Mooncake's code and the kind of err. A failure that is
// also a deadline (a socket or store operation that ran out of time) keeps
// its cause's code and is of kindTimeout; a deadline alone is -1.
func classify(err error) (code int, kind string) {
	code, kind = cause(err)
	if errors.Is(err, context.DeadlineExceeded) {
		switch kind {
		case kindFailed, kindSocket, kindDNS, kindMalformed, kindMetadata:
			kind = kindTimeout
		}
	}
	return code, kind
}

// cause is classify before deadlines are considered.
func cause(err error) (code int, kind string) {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code, c.kind
		}
	}
	var dns *net.DNSError
	var addr *net.AddrError
	if errors.As(err, &dns) || errors.As(err, &addr) {
		return codeDNS, kindDNS // no such host, or no address of the family
	}
	// Socket calls fail with *net.OpError (context.DeadlineExceeded is a
	// net.Error too, so the interface would match a deadline alone).
	var op *net.OpError
	if errors.As(err, &op) {
		if op.Timeout() {
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
