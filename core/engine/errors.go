package engine

import "github.com/pymooncake/pymooncake/core/internal/errs"

// Sentinels callers branch on with errors.Is. bindings maps them to
// Mooncake's return codes (error.h), shown in parentheses. Transport
// failures match the sentinels of core/transport (ErrPeer, ErrRejected,
// ErrClosed) instead.
var (
	// ErrInvalidArgument is a malformed call: zero length, bad location,
	// mismatched lists, an empty name (ERR_INVALID_ARGUMENT, -1).
	ErrInvalidArgument = errs.InvalidArgument
	// ErrTooManyRequests is a submit beyond a batch's capacity (-2).
	ErrTooManyRequests = errs.TooManyRequests
	// ErrAddressNotRegistered is an address outside registered memory (-3).
	ErrAddressNotRegistered = errs.AddressNotRegistered
	// ErrBatchBusy is freeing a batch whose tasks are still in flight (-4).
	ErrBatchBusy = errs.BatchBusy
	// ErrAddressOverlapped is a registration overlapping another (-7).
	ErrAddressOverlapped = errs.AddressOverlapped
	// ErrUnknownBatch is a batch id that was never allocated or is freed.
	ErrUnknownBatch = errs.UnknownBatch
	// ErrUnknownTicket is a stream transfer ticket that was never issued or
	// whose outcome is no longer kept.
	ErrUnknownTicket = errs.UnknownTicket
	// ErrUnknownSegment is a segment handle that is not open.
	ErrUnknownSegment = errs.UnknownSegment
	// ErrMetadata is a failure to find or decode a peer's metadata (-200).
	ErrMetadata = errs.Metadata
	// ErrNotSupported is a feature this build or transport lacks (-303).
	ErrNotSupported = errs.NotSupported
	// ErrClosed is a call on a closed engine.
	ErrClosed = errs.Closed
)
