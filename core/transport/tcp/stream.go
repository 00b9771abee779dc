package tcp

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// progressChunk is how many bytes one socket deadline covers: a transfer
// fails when a chunk of this size makes no way within the I/O timeout, so a
// slow but live peer (more than progressChunk per timeout) is never cut off.
const progressChunk = 256 << 10

// maxSize bounds what a header may ask for, so that the size converts to int
// for unsafe.Slice; no real buffer comes near it.
const maxSize = 1 << 62

// ptr turns an address of registered memory (outside the Go heap) into a
// pointer without tripping vet's unsafeptr check.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// memory is the n bytes of registered memory at addr, in place. n must be
// below maxSize and addr must have been validated (server) or handed over by
// the engine as registered (client).
func memory(addr uintptr, n uint64) []byte {
	return unsafe.Slice((*byte)(ptr(addr)), int(n))
}

// stream does deadline-bounded I/O on one connection, reusing its buffers
// so that a request allocates nothing. A connection has one stream per
// direction of use (the client's writer and reader are different
// goroutines).
type stream struct {
	c   net.Conn
	raw syscall.RawConn // nil when c exposes no descriptor
	// stopped, on the client, says why I/O must stop (the request was
	// cancelled, the connection interrupted); it is checked each time a
	// deadline is armed. nil on the server.
	stopped func() error
	vec     [2][]byte
	bufs    net.Buffers
	wv      [][]byte        // writev's vector
	iov     []syscall.Iovec // readv's vector
	// readvF is s.readvOnce, bound once (for readvFor, this stream) so
	// that readv allocates nothing; rn and rerr are its results.
	readvF   func(fd uintptr) bool
	readvFor *stream
	rn       int
	rerr     error
}

// newStream returns a stream over c.
func newStream(c net.Conn, stopped func() error) stream {
	s := stream{c: c, stopped: stopped}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			s.raw = raw
		}
	}
	return s
}

// arm sets the read or write deadline d from now, then checks that the
// I/O was not stopped meanwhile: a cancellation that set a past deadline
// before this call would otherwise be overwritten and lost.
func (s *stream) arm(read bool, d time.Duration) error {
	dl := time.Now().Add(d)
	var err error
	if read {
		err = s.c.SetReadDeadline(dl)
	} else {
		err = s.c.SetWriteDeadline(dl)
	}
	if err != nil {
		return err
	}
	if s.stopped != nil {
		return s.stopped()
	}
	return nil
}

// readFull fills b; each progressChunk must arrive within d. It returns the
// number of bytes read.
func (s *stream) readFull(b []byte, d time.Duration) (int, error) {
	done := 0
	for done < len(b) {
		if err := s.arm(true, d); err != nil {
			return done, err
		}
		end := min(done+progressChunk, len(b))
		n, err := io.ReadFull(s.c, b[done:end])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// write sends prefix (a header or a status frame, may be empty) followed by
// body; each progressChunk must leave within d. The prefix and the first
// chunk go in one writev.
func (s *stream) write(prefix, body []byte, d time.Duration) error {
	first := min(len(body), progressChunk)
	if err := s.arm(false, d); err != nil {
		return err
	}
	var err error
	switch {
	case len(prefix) > 0 && first > 0:
		s.vec[0], s.vec[1] = prefix, body[:first]
		s.bufs = s.vec[:]
		_, err = s.bufs.WriteTo(s.c)
		s.vec[0], s.vec[1] = nil, nil
	case len(prefix) > 0:
		_, err = s.c.Write(prefix)
	case first > 0:
		_, err = s.c.Write(body[:first])
	}
	for off := first; err == nil && off < len(body); {
		end := min(off+progressChunk, len(body))
		if err = s.arm(false, d); err == nil {
			_, err = s.c.Write(body[off:end])
		}
		off = end
	}
	return err
}
