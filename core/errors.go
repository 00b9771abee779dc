package core

import "errors"

// Sentinels callers branch on with errors.Is. bindings maps them to
// Mooncake's return codes (error.h), shown in parentheses.
var (
	// ErrInvalidArgument is a malformed call: zero length, bad location,
	// mismatched lists, an empty name (ERR_INVALID_ARGUMENT, -1).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrTooManyRequests is a submit beyond a batch's capacity (-2).
	ErrTooManyRequests = errors.New("too many requests for batch capacity")
	// ErrAddressNotRegistered is an address outside registered memory (-3).
	ErrAddressNotRegistered = errors.New("address not registered")
	// ErrBatchBusy is freeing a batch whose tasks are still in flight (-4).
	ErrBatchBusy = errors.New("batch busy")
	// ErrAddressOverlapped is a registration overlapping another (-7).
	ErrAddressOverlapped = errors.New("address overlapped")
	// ErrUnknownBatch is a batch id that was never allocated or is freed.
	ErrUnknownBatch = errors.New("unknown batch id")
	// ErrUnknownTicket is a stream transfer ticket that was never issued or
	// whose outcome is no longer kept.
	ErrUnknownTicket = errors.New("unknown stream transfer ticket")
	// ErrUnknownSegment is a segment handle that is not open.
	ErrUnknownSegment = errors.New("unknown segment handle")
	// ErrMetadata is a failure to find or decode a peer's metadata (-200).
	ErrMetadata = errors.New("metadata error")
	// ErrNotSupported is a feature this build or transport lacks (-303).
	ErrNotSupported = errors.New("not supported")
	// ErrClosed is a call on a closed engine.
	ErrClosed = errors.New("engine closed")
)
