// Package errs defines, once, the sentinels that the engine's packages
// (memory, segment, batch, engine) report and that package engine
// re-exports: bindings maps each to one of Mooncake's return codes.
package errs

import "errors"

var (
	// InvalidArgument is a malformed call: zero length, bad location,
	// mismatched lists, an empty name (ERR_INVALID_ARGUMENT, -1).
	InvalidArgument = errors.New("invalid argument")
	// TooManyRequests is a submit beyond a batch's capacity (-2).
	TooManyRequests = errors.New("too many requests for batch capacity")
	// AddressNotRegistered is an address outside registered memory (-3).
	AddressNotRegistered = errors.New("address not registered")
	// BatchBusy is freeing a batch whose tasks are still in flight (-4).
	BatchBusy = errors.New("batch busy")
	// AddressOverlapped is a registration overlapping another (-7).
	AddressOverlapped = errors.New("address overlapped")
	// UnknownBatch is a batch id that was never allocated or is freed.
	UnknownBatch = errors.New("unknown batch id")
	// UnknownTicket is a stream transfer ticket that was never issued or
	// whose outcome is no longer kept.
	UnknownTicket = errors.New("unknown stream transfer ticket")
	// UnknownSegment is a segment handle that is not open.
	UnknownSegment = errors.New("unknown segment handle")
	// Metadata is a failure to find or decode a peer's metadata (-200).
	Metadata = errors.New("metadata error")
	// NotSupported is a feature this build or transport lacks (-303).
	NotSupported = errors.New("not supported")
	// Closed is a call on a closed engine.
	Closed = errors.New("engine closed")
)
