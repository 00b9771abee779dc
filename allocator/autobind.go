//go:build cgo && linux

package allocator

/*
#include "pymc_cuda.h"
*/
import "C"

import (
	"errors"

	"github.com/pymooncake/pymooncake/core/gpu/cuda"
)

// mc_alloc_autobind is Bind for the C allocators called before it (see the
// package doc): 0 once bound, else the failure's CUresult, or
// CUDA_ERROR_NOT_INITIALIZED when the driver could not be loaded at all.
//
//export mc_alloc_autobind
func mc_alloc_autobind() C.int {
	err := Bind()
	if err == nil {
		return 0
	}
	var r cuda.Result
	if errors.As(err, &r) && r != 0 {
		return C.int(r)
	}
	return C.CUDA_ERROR_NOT_INITIALIZED
}
