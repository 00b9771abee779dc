package bindings

import "runtime"

// NumGoroutine returns the number of goroutines of this process's Go
// runtime. It is a debugging aid for tests and the soak benchmark, which
// watch it for leaks (with open descriptors and RSS); it is not part of
// Mooncake's API and pymooncake's public Python API does not expose it.
func NumGoroutine() (n int, err error) {
	defer recoverInto("num_goroutine", nil, &err)
	return runtime.NumGoroutine(), nil
}
