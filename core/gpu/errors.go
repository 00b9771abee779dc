package gpu

import "errors"

var (
	// ErrInvalidRange matches a range that does not lie wholly in host
	// memory or wholly in one device allocation.
	ErrInvalidRange = errors.New("gpu: range is not wholly in one kind of memory")
	// ErrClosed is returned by a closed Staging.
	ErrClosed = errors.New("gpu: staging closed")
	// ErrBadSlot is a slot number outside a Stage's or Copier's slots.
	ErrBadSlot = errors.New("gpu: no such slot")
)
