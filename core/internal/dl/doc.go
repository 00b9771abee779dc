// Package dl is pymooncake's one loader of optional native libraries
// (libibverbs now; the CUDA driver and the barex shim later). It wraps
// dlopen, dlsym and dlerror, always on a locked OS thread because dlerror's
// state is per thread, and always with RTLD_NOW|RTLD_LOCAL so that a missing
// symbol is an error at load time instead of a crash later.
//
// Loading is reference counted per library name: every successful Open
// returns a new *Library handle that the caller must Close exactly once
// (Close is idempotent); the library is dlclose'd when the last handle is
// closed. Callers that keep function pointers from Sym must stop using them
// before closing their handle.
//
// Errors: a library that cannot be opened is an *Error matching
// ErrUnavailable; that is the one conclusive "absent" answer (STYLE (c).4).
// A symbol that the library lacks is an *Error matching ErrMissingSymbol,
// which means the library is present but too old or not the expected one.
// Both keep dlerror's text. Without cgo every Open fails with ErrUnavailable
// and says why.
package dl
