package numa

import (
	"os"
	"syscall"
	"unsafe"
)

// Node returns the NUMA node of the page holding addr, from move_pages(2)
// in query mode. ok is false when the kernel will not say: the page is not
// resident, the address is not mapped, or the call is not permitted.
func Node(addr uint64) (node int, ok bool) {
	page := uint64(os.Getpagesize())
	pages := [1]uintptr{uintptr(addr &^ (page - 1))}
	status := [1]int32{-1}
	_, _, e := syscall.Syscall6(syscall.SYS_MOVE_PAGES, 0, 1,
		uintptr(unsafe.Pointer(&pages[0])), 0, uintptr(unsafe.Pointer(&status[0])), 0)
	if e != 0 || status[0] < 0 {
		return 0, false
	}
	return int(status[0]), true
}
