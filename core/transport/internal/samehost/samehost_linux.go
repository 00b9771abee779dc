//go:build linux

package samehost

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Local returns this process's identity.
func Local() (Identity, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return Identity{}, fmt.Errorf("samehost: read the boot id: %w: %w", ErrUnavailable, err)
	}
	id := Identity{BootID: strings.TrimSpace(string(b)), PID: os.Getpid()}
	if id.NetNS, err = os.Readlink("/proc/self/ns/net"); err != nil {
		return Identity{}, fmt.Errorf("samehost: network namespace: %w: %w", ErrUnavailable, err)
	}
	if id.PidNS, err = os.Readlink("/proc/self/ns/pid"); err != nil {
		return Identity{}, fmt.Errorf("samehost: pid namespace: %w: %w", ErrUnavailable, err)
	}
	return id, nil
}

// Alive reports whether pid names a live process that this one can see
// (one of another user still counts: signal 0 then fails with EPERM).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
