// Package nvmlsym defines, inside pymooncake's extension, every NVML C
// function that github.com/NVIDIA/go-nvml's cgo code calls, as trampolines
// bound at run time to a library opened through core/internal/dl.
//
// Why: go-nvml's cgo package calls NVML functions directly (C.nvmlInit_v2)
// and links with --unresolved-symbols=ignore-in-object-files, counting on
// nvml.Init to dlopen libnvidia-ml with RTLD_GLOBAL before the first call
// and on the dynamic loader binding each call lazily. Left so, the
// extension carries hundreds of undefined NVML symbols and cannot be
// loaded with RTLD_NOW, which is how torch's CUDAPluggableAllocator and
// LD_BIND_NOW=1 load it (DESIGN rule 2). With this package linked in,
// go-nvml's references resolve, at link time, to hidden definitions here:
// tail jumps through a table that Bind fills with dlsym and Close clears.
// No NVML symbol is left for the loader, and none is exported.
//
// The trampolines and the list of names are generated (trampolines_gen.go,
// by `go generate`, from the C functions go-nvml's cgo files call and
// nvml.h's return types); regenerate after changing go-nvml's version.
// gen's test fails when the file is stale, and the wheel check fails on
// any undefined symbol of the extension that neither libc nor Python
// provides.
//
// Lifetime: Bind opens the library and takes one reference to the
// binding; the table is filled by the first Bind and cleared when the last
// Binding is closed, after which the library's handle is released. Call
// go-nvml only while holding a Binding. A call through an unbound
// trampoline (no Binding, or a library that lacks that function, such as
// an older driver) returns NVML_ERROR_FUNCTION_NOT_FOUND; nvmlErrorString
// returns a fixed message. It never jumps to address 0.
//
// Errors: a library that cannot be opened matches dl.ErrUnavailable (and
// topology.ErrUnavailable) and keeps dlerror's text; a library that has
// none of the functions matches dl.ErrMissingSymbol; binding a second
// library while one is bound matches ErrBoundElsewhere. The trampolines
// exist for linux/amd64 and linux/arm64 with cgo; elsewhere Bind fails
// with dl.ErrUnavailable and says why.
package nvmlsym

//go:generate go run ./gen -o trampolines_gen.go
