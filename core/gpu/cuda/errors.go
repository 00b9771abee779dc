package cuda

import (
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/internal/dl"
)

var (
	// ErrUnavailable matches every error meaning that there is no usable
	// CUDA driver or device in this process: libcuda is absent (or a stub),
	// or no device is visible.
	ErrUnavailable = dl.ErrUnavailable
	// ErrNoDevice is the ErrUnavailable of a driver without devices.
	ErrNoDevice = fmt.Errorf("no CUDA device: %w", dl.ErrUnavailable)
	// ErrClosed is a call on a closed Driver or Copier.
	ErrClosed = errors.New("cuda: driver closed")
)

// Result is a CUresult other than CUDA_SUCCESS.
type Result int

// names holds the CUresult names pymooncake may meet, usable before the
// library is loaded (libcuda's cuGetErrorName is preferred when loaded).
var names = map[Result]string{
	1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY", 3: "CUDA_ERROR_NOT_INITIALIZED",
	4: "CUDA_ERROR_DEINITIALIZED", 34: "CUDA_ERROR_STUB_LIBRARY", 35: "CUDA_ERROR_INSUFFICIENT_DRIVER",
	46: "CUDA_ERROR_DEVICE_UNAVAILABLE", 100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE",
	201: "CUDA_ERROR_INVALID_CONTEXT", 400: "CUDA_ERROR_INVALID_HANDLE", 500: "CUDA_ERROR_NOT_FOUND",
	600: "CUDA_ERROR_NOT_READY", 700: "CUDA_ERROR_ILLEGAL_ADDRESS", 719: "CUDA_ERROR_LAUNCH_FAILED",
	800: "CUDA_ERROR_NOT_PERMITTED", 801: "CUDA_ERROR_NOT_SUPPORTED", 999: "CUDA_ERROR_UNKNOWN",
}

func (r Result) Error() string {
	name, text := describe(r)
	if text != "" {
		return fmt.Sprintf("%s (%d): %s", name, int(r), text)
	}
	return fmt.Sprintf("%s (%d)", name, int(r))
}

// Is makes the results that mean "no GPU here" match ErrUnavailable, and
// CUDA_ERROR_NOT_SUPPORTED match gpu.ErrNotSupported.
func (r Result) Is(target error) bool {
	switch target {
	case dl.ErrUnavailable:
		return r == 34 || r == 100
	case gpu.ErrNotSupported:
		return r == 801
	}
	return false
}

// callError wraps a failed driver call with its name.
func callError(call string, r Result) error { return fmt.Errorf("cuda: %s: %w", call, r) }
