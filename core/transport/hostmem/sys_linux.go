//go:build linux

package hostmem

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// iovec is the kernel's struct iovec. Addresses are integers: the memory
// is registered memory outside the Go heap, or the peer's.
type iovec struct {
	base uintptr
	len  uint64
}

// maxIOV is how many iovecs one process_vm_readv/writev takes per side
// (Linux's IOV_MAX).
const maxIOV = 1024

// cma copies between this process and pid: local to remote for a write,
// remote to local for a read, in one system call. It returns the bytes
// moved, which may be fewer than asked when a range faults part way.
func cma(write bool, pid int, local, remote []iovec) (int, error) {
	nr := uintptr(unix.SYS_PROCESS_VM_READV)
	if write {
		nr = unix.SYS_PROCESS_VM_WRITEV
	}
	n, _, errno := syscall.Syscall6(nr, uintptr(pid),
		uintptr(unsafe.Pointer(&local[0])), uintptr(len(local)),
		uintptr(unsafe.Pointer(&remote[0])), uintptr(len(remote)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// newMemfd creates a sealed shared-memory file of size bytes: it can be
// neither shrunk nor grown, so that no process holding it can make another's
// mapping fault (SIGBUS) by truncating it.
func newMemfd(name string, size int) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("size shared memory to %d bytes: %w", size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seal shared memory: %w", err)
	}
	return fd, nil
}

// checkSealed verifies that fd, a peer's shared-memory file, is sealed
// against shrinking and holds at least size bytes: only then can it be
// mapped without the peer being able to make our accesses fault.
func checkSealed(fd, size int) error {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("read seals: %w", err)
	}
	if seals&unix.F_SEAL_SHRINK == 0 {
		return errors.New("shared memory is not sealed against shrinking")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat shared memory: %w", err)
	}
	if st.Size < int64(size) {
		return fmt.Errorf("shared memory holds %d bytes, want %d", st.Size, size)
	}
	return nil
}

// reopenReadOnly opens a new read-only description of fd (a memfd), to hand
// to peers that may only read it: they can neither write nor map it
// writable.
func reopenReadOnly(fd int) (int, error) {
	r, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("reopen shared memory read-only: %w", err)
	}
	return r, nil
}

// mapShared maps size bytes of fd, writable or not.
func mapShared(fd, size int, writable bool) ([]byte, error) {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	b, err := unix.Mmap(fd, 0, size, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of shared memory: %w", size, err)
	}
	return b, nil
}

func unmap(b []byte) error {
	if b == nil {
		return nil
	}
	return unix.Munmap(b)
}

func closeFD(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// pidfdOpen returns a descriptor that refers to process pid for as long as
// it is open, whatever process later reuses the number.
func pidfdOpen(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	return fd, nil
}

// exited reports whether the process of pidfd has exited (it is then
// readable).
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// peerCred returns the pid (as this process's PID namespace numbers it, 0
// when it is not visible here) and uid of the process at the other end of a
// Unix socket, as the kernel recorded them at connect or listen time.
func peerCred(fd uintptr) (pid int, uid uint32, err error) {
	c, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, 0, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	return int(c.Pid), c.Uid, nil
}

// rightsOOB is the control message that passes fds; parseRights reads the
// fds out of one. Every received fd is close-on-exec (MSG_CMSG_CLOEXEC is
// not available through net.UnixConn, so it is set right after).
func rightsOOB(fds ...int) []byte { return unix.UnixRights(fds...) }

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, fmt.Errorf("control message: %w", err)
		}
		fds = append(fds, got...)
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	return fds, nil
}

// ptraceScope describes Yama's ptrace_scope for the log: "" where Yama is
// not built in.
func ptraceScope() string {
	b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// errnoIs reports whether err is one of the errnos.
func errnoIs(err error, errnos ...syscall.Errno) bool {
	var e syscall.Errno
	if !errors.As(err, &e) {
		return false
	}
	for _, x := range errnos {
		if e == x {
			return true
		}
	}
	return false
}

const (
	errESRCH  = unix.ESRCH
	errEPERM  = unix.EPERM
	errEFAULT = unix.EFAULT
	errEACCES = unix.EACCES
	errENOSYS = unix.ENOSYS
)

// available says whether this kernel and process can run the transport at
// all: memfd_create must work (the shared table and ring live in memfds).
func available() error {
	fd, err := newMemfd("pymooncake-probe", 4096)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	unix.Close(fd)
	return nil
}
