//go:build !cgo || !linux

package barex

import (
	"fmt"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// openNative fails: the shim is loaded with dlopen through cgo, on Linux.
func openNative(string, nativeConfig) (native, error) {
	return nil, fmt.Errorf("barex: load the barex shim %s: %w", ShimName,
		&dl.Error{Lib: ShimName, Op: "dlopen", Msg: "pymooncake was built without cgo or not for linux: the barex shim cannot be loaded"})
}
