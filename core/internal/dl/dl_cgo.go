//go:build cgo && (linux || darwin || freebsd)

package dl

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

static void *mc_dlopen(const char *name) { return dlopen(name, RTLD_NOW | RTLD_LOCAL); }
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Each function runs its dl call and the dlerror that goes with it on one
// locked OS thread: dlerror's state is per thread.

func sysOpen(name string) (unsafe.Pointer, string) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	C.dlerror()
	h := C.mc_dlopen(cname)
	if h == nil {
		return nil, lastError("dlopen failed")
	}
	return h, ""
}

func sysSym(h unsafe.Pointer, symbol string) (unsafe.Pointer, string) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	csym := C.CString(symbol)
	defer C.free(unsafe.Pointer(csym))
	C.dlerror()
	p := C.dlsym(h, csym)
	if p == nil {
		// A symbol may legitimately be NULL; only dlerror tells.
		if msg := lastError(""); msg != "" {
			return nil, msg
		}
		return nil, "symbol is NULL"
	}
	return p, ""
}

func sysClose(h unsafe.Pointer) string {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	C.dlerror()
	if C.dlclose(h) != 0 {
		return lastError("dlclose failed")
	}
	return ""
}

func lastError(fallback string) string {
	if e := C.dlerror(); e != nil {
		return C.GoString(e)
	}
	return fallback
}
