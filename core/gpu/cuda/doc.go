// Package cuda is the real gpu.Driver: the CUDA driver API, loaded at run
// time. libcuda.so.1 is dlopen'ed through core/internal/dl on the first
// Open; building needs no CUDA SDK (the few types and functions used are
// declared in include/pymc_cuda.h) and links only libdl.
//
// Open returns a reference to the process-wide driver state: the function
// table, and the primary contexts retained for the devices the engine
// touches (retained on first use, released when the last reference is
// closed). The library itself stays loaded once cuInit has run: the driver
// starts threads that must not be unloaded under them, and allocator/
// calls through the same table from threads that torch owns.
//
// Every operation makes the device's primary context current for the
// duration of one C call and restores the caller's: gopy runs Go on
// Python's threads, whose current context belongs to torch.
//
// Errors: an absent library, a stub library or a host without devices
// match ErrUnavailable (conclusive: there is no GPU to use); a missing
// required symbol matches dl.ErrMissingSymbol; a driver call's failure is a
// Result, which names the CUDA error.
package cuda
