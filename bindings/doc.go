// Package bindings is the only Go package gopy sees: a flat adapter that
// exposes core.Engine to Python as the extension pymooncake._gopy.
//
// Its surface is shaped by gopy's limits (reference/gopy.md): methods take
// only string, int, int64 and uintptr, and return (int, error),
// (int64, error), (uintptr, error) or (string, error) — never a bare error
// (gopy leaks a C string per call) and never a slice, map or []byte (one cgo
// call per element). A list crosses as (address, count) of a Python
// array('Q') that the caller keeps alive for the call; bulk bytes cross by
// address. Every method recovers panics into an error, because a panic would
// abort the Python process.
//
// Errors reach Python as RuntimeError carrying only text, so errors.go
// encodes Mooncake's return code and an error kind in the text
// ("mc:<code>:<kind>: <message>") and pymooncake/_errors.py parses it. That
// file is the only place that maps errors to codes.
//
// The package holds no engine logic; what it adds to core is what Mooncake's
// Python binding adds to its engine: the MC_TRANSFER_TIMEOUT deadline of
// synchronous calls (plus 1 ns per byte) and of asynchronous batches.
//
// Ownership: NewEngine starts a core.Engine; Close stops it and every
// goroutine this package started for it. A closed Engine stays usable as a
// handle: every call then fails with ErrClosed's code, so a Python handle is
// never stale. NewMetadataServer's server runs until Stop.
package bindings
