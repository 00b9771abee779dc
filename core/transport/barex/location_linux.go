package barex

import (
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// hostLocation names host memory as Mooncake does: "cpu:<node>" from the
// NUMA node of the page holding addr (move_pages(2) in query mode), or
// "cpu:0" when the page is not resident or the call fails (barex must be
// told host or GPU; the node only steers NIC choice).
func hostLocation(addr uint64) string {
	page := uint64(os.Getpagesize())
	pages := [1]uintptr{uintptr(addr &^ (page - 1))}
	status := [1]int32{-1}
	_, _, e := syscall.Syscall6(syscall.SYS_MOVE_PAGES, 0, 1,
		uintptr(unsafe.Pointer(&pages[0])), 0, uintptr(unsafe.Pointer(&status[0])), 0)
	if e != 0 || status[0] < 0 {
		return "cpu:0"
	}
	return "cpu:" + strconv.Itoa(int(status[0]))
}
