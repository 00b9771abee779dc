package tcp

import (
	"io"
	"syscall"
	"time"
	"unsafe"
)

// maxIOV is how many slices one readv or writev takes (Linux's IOV_MAX).
const maxIOV = 1024

// ioBatchBytes is how many bytes one deadline covers in vectored I/O:
// like progressChunk, a batch that makes no way within the I/O timeout
// fails the transfer.
const ioBatchBytes = 1 << 20

// writev sends bufs back to back with as few writev calls as the kernel
// allows, arming the write deadline d for every batch of at most maxIOV
// slices and about ioBatchBytes. bufs' contents are not changed; the
// stream's vector is reused, so nothing is allocated.
func (s *stream) writev(bufs [][]byte, d time.Duration) error {
	for len(bufs) > 0 {
		n, size := 0, 0
		for n < len(bufs) && n < maxIOV && (n == 0 || size+len(bufs[n]) <= ioBatchBytes) {
			size += len(bufs[n])
			n++
		}
		if err := s.arm(false, d); err != nil {
			return err
		}
		s.wv = append(s.wv[:0], bufs[:n]...)
		s.bufs = s.wv // WriteTo consumes its receiver: a field, not a local that would escape
		_, err := s.bufs.WriteTo(s.c)
		s.bufs = nil
		clear(s.wv)
		if err != nil {
			return err
		}
		bufs = bufs[n:]
	}
	return nil
}

// readvOnce is readv's system call, for RawConn.Read: it records the
// result in s.rn and s.rerr and returns false (wait) only on EAGAIN. A
// method value bound once, with results in the stream, so that a readv
// allocates nothing.
func (s *stream) readvOnce(fd uintptr) bool {
	for {
		r, _, errno := syscall.Syscall(syscall.SYS_READV, fd, uintptr(unsafe.Pointer(&s.iov[0])), uintptr(len(s.iov)))
		switch errno {
		case 0:
			s.rn = int(r)
			if s.rn == 0 {
				s.rerr = io.ErrUnexpectedEOF
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until readable, under the deadline
		}
		s.rerr = errno
		return true
	}
}

// readv fills bufs in order with readv calls of at most maxIOV slices,
// arming the read deadline d before each call, so that a peer that keeps
// sending is never cut off. It returns how many bytes it read.
func (s *stream) readv(bufs [][]byte, d time.Duration) (int, error) {
	if s.raw == nil {
		// No descriptor (a test's pipe): read slice by slice.
		total := 0
		for _, b := range bufs {
			n, err := s.readFull(b, d)
			total += n
			if err != nil {
				return total, err
			}
		}
		return total, nil
	}
	total := 0
	first, off := 0, 0 // the next byte to read: bufs[first][off]
	for first < len(bufs) {
		s.iov = s.iov[:0]
		for i := first; i < len(bufs) && len(s.iov) < maxIOV; i++ {
			b := bufs[i]
			if i == first {
				b = b[off:]
			}
			if len(b) == 0 {
				continue
			}
			s.iov = append(s.iov, syscall.Iovec{Base: &b[0], Len: uint64(len(b))})
		}
		if len(s.iov) == 0 {
			break
		}
		if err := s.arm(true, d); err != nil {
			return total, err
		}
		if s.readvFor != s { // bound on first use, and again if the stream was copied
			s.readvF, s.readvFor = s.readvOnce, s
		}
		s.rn, s.rerr = 0, nil
		err := s.raw.Read(s.readvF)
		clear(s.iov) // no stale pointers into peer-visible memory
		if err == nil {
			err = s.rerr
		}
		n := s.rn
		total += n
		// Advance past what was read.
		for n > 0 && first < len(bufs) {
			left := len(bufs[first]) - off
			if n < left {
				off += n
				n = 0
				break
			}
			n -= left
			first++
			off = 0
		}
		for first < len(bufs) && len(bufs[first]) == 0 {
			first++
		}
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
