package bindings

import (
	"unsafe"
)

// maxList bounds a list passed by address: core's batch capacity (1 Mi
// entries), and a sanity bound against a corrupt count.
const maxList = 1 << 20

// ptr converts an address owned outside Go into a pointer without go vet's
// unsafe.Pointer(uintptr) warning; the memory is not Go's, so the garbage
// collector neither moves nor frees it.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// readList copies n uint64 values from addr, a Python array('Q') buffer
// that the caller keeps alive for the duration of the call.
func readList(op, name string, addr uintptr, n int) ([]uint64, error) {
	switch {
	case n < 0 || n > maxList:
		return nil, invalid(op, "%s: %d entries (want 0 to %d)", name, n, maxList)
	case n == 0:
		return nil, nil
	case addr == 0:
		return nil, invalid(op, "%s: null address for %d entries", name, n)
	}
	out := make([]uint64, n)
	copy(out, unsafe.Slice((*uint64)(ptr(addr)), n))
	return out, nil
}

// bytesAt is the n bytes at addr. The caller has checked that they belong
// to registered memory or to a live Python object.
func bytesAt(addr uintptr, n int64) []byte {
	return unsafe.Slice((*byte)(ptr(addr)), n)
}
