//go:build !cgo || !(linux || darwin || freebsd)

package dl

import "unsafe"

const noLoader = "pymooncake was built without cgo (CGO_ENABLED=0) or for a system without dlopen: no native library can be loaded"

func sysOpen(string) (unsafe.Pointer, string) { return nil, noLoader }

func sysSym(unsafe.Pointer, string) (unsafe.Pointer, string) { return nil, noLoader }

func sysClose(unsafe.Pointer) string { return "" }
