//go:build unix

package hostid

import (
	"errors"
	"syscall"
)

// Alive reports whether pid names a live process that this one can see
// (one of another user still counts: signal 0 then fails with EPERM).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
