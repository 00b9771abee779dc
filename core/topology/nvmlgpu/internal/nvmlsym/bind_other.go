//go:build !(cgo && linux && (amd64 || arm64))

package nvmlsym

import (
	"fmt"
	"runtime"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// Binding is one reference to the bound trampolines; there are none in
// this build.
type Binding struct{}

// Bind fails: the trampolines exist only for linux/amd64 and linux/arm64
// built with cgo.
func Bind(library string) (*Binding, error) {
	return nil, fmt.Errorf("bind nvml functions of %s: %w: NVML trampolines exist for linux/amd64 and linux/arm64 built with cgo, not this %s/%s build",
		library, dl.ErrUnavailable, runtime.GOOS, runtime.GOARCH)
}

// Close does nothing.
func (b *Binding) Close() error { return nil }
