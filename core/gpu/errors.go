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
	// ErrNotSupported means the driver or the device cannot do what was
	// asked (a dma-buf export on a driver older than CUDA 11.7, or on a GPU
	// without dma-buf support).
	ErrNotSupported = errors.New("gpu: not supported by the driver or device")
)
