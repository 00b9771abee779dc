package bindings

import (
	"runtime"
	"runtime/debug"
)

// NumGoroutine returns the number of goroutines of this process's Go
// runtime. It is a debugging aid for tests and the soak benchmark, which
// watch it for leaks (with open descriptors and RSS); it is not part of
// Mooncake's API and pymooncake's public Python API does not expose it.
func NumGoroutine() (n int, err error) {
	defer recoverInto("num_goroutine", nil, &err)
	return runtime.NumGoroutine(), nil
}

// FreeOSMemory runs a garbage collection and returns as much memory to the
// operating system as the Go runtime can, so that a test or the soak
// benchmark reading the process's RSS sees what is live rather than what
// the runtime keeps for later. A debugging aid like NumGoroutine.
func FreeOSMemory() (rc int, err error) {
	defer recoverInto("free_os_memory", nil, &err)
	debug.FreeOSMemory()
	return 0, nil
}
