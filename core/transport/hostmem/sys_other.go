//go:build !linux

package hostmem

import (
	"fmt"
	"runtime"
	"syscall"
)

// The transport needs Linux (process_vm_readv/writev, memfd, pidfd,
// SO_PEERCRED, abstract Unix sockets); elsewhere New fails with
// ErrUnavailable and none of these is reached.

type iovec struct {
	base uintptr
	len  uint64
}

const maxIOV = 1024

var errNotLinux = fmt.Errorf("hostmem needs Linux, not %s: %w", runtime.GOOS, ErrUnavailable)

func cma(bool, int, []iovec, []iovec) (int, error) { return 0, errNotLinux }
func newMemfd(string, int) (int, error)            { return -1, errNotLinux }
func checkSealed(int, int) error                   { return errNotLinux }
func reopenReadOnly(int) (int, error)              { return -1, errNotLinux }
func mapShared(int, int, bool) ([]byte, error)     { return nil, errNotLinux }
func unmap([]byte) error                           { return nil }
func closeFD(int)                                  {}
func pidfdOpen(int) (int, error)                   { return -1, errNotLinux }
func exited(int) bool                              { return true }
func peerCred(uintptr) (int, uint32, error)        { return 0, 0, errNotLinux }
func rightsOOB(...int) []byte                      { return nil }
func parseRights([]byte) ([]int, error)            { return nil, errNotLinux }
func ptraceScope() string                          { return "" }
func errnoIs(error, ...syscall.Errno) bool         { return false }
func available() error                             { return errNotLinux }

var (
	errESRCH  = syscall.ESRCH
	errEPERM  = syscall.EPERM
	errEFAULT = syscall.EFAULT
	errEACCES = syscall.EACCES
	errENOSYS = syscall.ENOSYS
)
