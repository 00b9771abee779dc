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

// FreeOSMemory collects garbage and returns what it can to the operating
// system (runtime/debug.FreeOSMemory), so that a test watching the
// process's RSS for leaks sees the memory the Go heap keeps, not garbage
// the collector has not reached yet (when it runs depends on everything
// the process allocated before). A debugging aid like NumGoroutine.
func FreeOSMemory() (rc int, err error) {
	defer recoverInto("free_os_memory", nil, &err)
	debug.FreeOSMemory()
	return 0, nil
}
