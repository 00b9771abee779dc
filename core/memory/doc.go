// Package memory keeps the table of this process's registered memory: the
// regions peers may read and write, and the only local memory transfers may
// use.
//
// Readers (every remote request a transport validates, every local check on
// submit) load an immutable snapshot without locking; writers copy it under
// a mutex. A region is never split or merged: it is unregistered by its
// start address, as registered. Errors match ErrInvalid, ErrOverlapped and
// ErrNotRegistered, which the engine re-exports with Mooncake's codes.
package memory
