// Package bindings is the only Go package gopy sees: a flat adapter that
// exposes the engine (core/engine, built by the composition root, package
// core) to Python as the extension pymooncake._gopy.
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
// The package holds no engine logic: each method validates its arguments,
// converts them, calls the engine and classifies the error. The policies
// (deadlines of synchronous calls and asynchronous batches, retries,
// recovery, reaping) are the engine's; this package only gives each
// synchronous call its context, with the engine's TransferTimeout. It names
// no transport: errors are classified by the sentinels of core/transport.
//
// Ownership: NewEngine starts an engine; Close stops it, and with it every
// goroutine started for it. A closed Engine stays usable as a
// handle: every call then fails with ErrClosed's code, so a Python handle is
// never stale. NewMetadataServer's server runs until Stop.
package bindings
