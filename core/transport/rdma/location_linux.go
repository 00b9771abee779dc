package rdma

import (
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// memoryLocation is Mooncake's getMemoryLocation for host memory: the NUMA
// node of the page holding addr, from move_pages(2) in query mode, as
// "cpu:<node>"; "*" when the page is not resident or the call fails.
func memoryLocation(addr uint64) string {
	page := uint64(os.Getpagesize())
	pages := [1]uintptr{uintptr(addr &^ (page - 1))}
	status := [1]int32{-1}
	_, _, e := syscall.Syscall6(syscall.SYS_MOVE_PAGES, 0, 1,
		uintptr(unsafe.Pointer(&pages[0])), 0, uintptr(unsafe.Pointer(&status[0])), 0)
	if e != 0 || status[0] < 0 {
		return "*"
	}
	return "cpu:" + strconv.Itoa(int(status[0]))
}
