//go:build cgo && linux && (amd64 || arm64)

package nvmlsym

/*
#include "nvmlsym.h"

MC_NVML_HIDDEN int mc_nvml_unbound(void) { return MC_NVML_ERROR_FUNCTION_NOT_FOUND; }

MC_NVML_HIDDEN const char *mc_nvml_unbound_string(void) {
	return "NVML function not loaded (pymooncake binds NVML only while it lists GPUs)";
}

static int mc_nvml_set(size_t i, void *fn) {
	if (i >= mc_nvml_count) return -1;
	__atomic_store_n(&mc_nvml_fn[i], fn, __ATOMIC_RELEASE);
	return 0;
}

static void mc_nvml_clear(void) {
	for (size_t i = 0; i < mc_nvml_count; i++) __atomic_store_n(&mc_nvml_fn[i], NULL, __ATOMIC_RELEASE);
}
*/
import "C"

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

var (
	mu    sync.Mutex
	bound *dl.Library // +checklocks:mu; nil while the table is clear
	refs  int         // +checklocks:mu; Bindings not yet closed
)

// Binding is one reference to the bound trampolines. It is safe for
// concurrent use; Close releases the reference once.
type Binding struct {
	closed atomic.Bool
}

// Bind points the trampolines at the NVML functions of library (a soname
// such as "libnvidia-ml.so.1", or a path), opened through core/internal/dl
// (RTLD_NOW|RTLD_LOCAL, refcounted), or takes one more reference if that
// library is bound already. Functions the library lacks stay unbound. It
// fails if the library cannot be opened (dl.ErrUnavailable), has none of
// the functions (dl.ErrMissingSymbol), or another library is bound
// (ErrBoundElsewhere).
func Bind(library string) (*Binding, error) {
	mu.Lock()
	defer mu.Unlock()
	if bound != nil {
		if bound.Name() != library {
			return nil, fmt.Errorf("bind nvml functions to %s: %w (%s)", library, ErrBoundElsewhere, bound.Name())
		}
		refs++
		return &Binding{}, nil
	}
	lib, err := dl.Open(library)
	if err != nil {
		return nil, fmt.Errorf("bind nvml functions: %w", err)
	}
	found := 0
	var firstMissing error
	for i, name := range names {
		fn, err := lib.Sym(name)
		if err != nil {
			if firstMissing == nil {
				firstMissing = err
			}
			continue
		}
		if C.mc_nvml_set(C.size_t(i), fn) != 0 {
			C.mc_nvml_clear()
			lib.Close()
			return nil, fmt.Errorf("bind nvml functions: %s is trampoline %d of %d (trampolines_gen.go is inconsistent; run go generate)", name, i, int(C.mc_nvml_count))
		}
		found++
	}
	if found == 0 {
		lib.Close()
		return nil, fmt.Errorf("bind nvml functions: %s has none of the %d NVML functions go-nvml calls: %w", library, len(names), firstMissing)
	}
	bound, refs = lib, 1
	return &Binding{}, nil
}

// Close releases this reference. The last one clears the table, so that
// later calls return NVML_ERROR_FUNCTION_NOT_FOUND, and releases the
// library's handle. Closing twice is a no-op.
func (b *Binding) Close() error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	refs--
	if refs > 0 {
		return nil
	}
	C.mc_nvml_clear()
	lib := bound
	bound = nil
	if err := lib.Close(); err != nil {
		return fmt.Errorf("unbind nvml functions: %w", err)
	}
	return nil
}
