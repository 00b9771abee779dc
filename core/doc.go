// Package core is the pymooncake transfer engine: it registers local memory,
// opens remote segments by name, and moves bytes between registered memories
// of two processes, speaking Mooncake's wire protocol so that Mooncake peers
// and pymooncake peers work together.
//
// An Engine owns every listener, connection and goroutine it starts; Close
// stops them all and is idempotent. Segments and batches are named by small
// validated integers, never pointers: a stale or forged handle is an error.
// Status polling takes no lock. core knows nothing of Python: package
// bindings adapts it for gopy.
//
// Errors wrap the sentinels of errors.go; deadlines surface as context errors.
package core
