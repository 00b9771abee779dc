package hostmem

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/transport"
)

// server is the target side: it answers initiators on the control socket,
// hands them the registration table and a pin area (cross-memory attach),
// or serves their requests through the shared-memory ring they pass.
type server struct {
	t   *Transport
	ln  *net.UnixListener
	log *zap.Logger // sampled

	mu       sync.Mutex
	closed   bool                       // guarded by mu
	conns    map[*net.UnixConn]struct{} // guarded by mu; at most Config.MaxConns
	refusing int                        // guarded by mu; busy answers being sent
	wg       sync.WaitGroup             // accept loop and connections
}

// maxRefusing bounds the goroutines that tell initiators beyond
// Config.MaxConns that the target is busy; beyond it a new connection is
// closed at once (its initiator then fails its setup, as with a target
// that exited, rather than falling back).
const maxRefusing = 16

func (s *server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.isClosed() {
				return
			}
			// Out of descriptors, or a connection reset before accept:
			// keep serving the others.
			s.log.Warn("accept on the control socket", zap.Error(err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		switch s.track(c) {
		case admitted:
			s.wg.Add(1)
			go s.serve(c)
		case busy:
			s.wg.Add(1)
			go s.refuse(c)
		case shed:
			c.Close()
		default: // closed
			c.Close()
			return
		}
	}
}

// Outcomes of track.
const (
	admitted = iota
	busy     // over Config.MaxConns: answer statusBusy
	shed     // over the busy answers too: close
	stopped  // the server is closing
)

func (s *server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track admits c as one of the initiators served, unless the server
// serves Config.MaxConns already or is closing.
func (s *server) track(c *net.UnixConn) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return stopped
	case len(s.conns)-s.refusing < s.t.cfg.MaxConns:
		s.conns[c] = struct{}{}
		return admitted
	case s.refusing < maxRefusing:
		s.refusing++
		s.conns[c] = struct{}{} // so that close reaches it
		return busy
	default:
		return shed
	}
}

// refuse answers an initiator beyond Config.MaxConns: it reads the hello
// and replies statusBusy, so that the initiator reaches this engine through
// its fallback instead of failing. The wait is short: the hello is the
// initiator's first message.
func (s *server) refuse(c *net.UnixConn) {
	defer s.wg.Done()
	defer func() {
		// Together, so that track never counts c as served.
		s.mu.Lock()
		delete(s.conns, c)
		s.refusing--
		s.mu.Unlock()
		c.Close()
	}()
	s.log.Warn("control socket at its connection limit: an initiator is told to use the fallback",
		zap.Int("max_conns", s.t.cfg.MaxConns))
	if err := c.SetDeadline(time.Now().Add(min(s.t.cfg.DialTimeout, time.Second))); err != nil {
		return
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	if _, err := parseHello(buf[:n]); err != nil {
		return
	}
	_, _ = c.Write(welcome{status: statusBusy}.marshal())
}

func (s *server) untrack(c *net.UnixConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// close stops accepting, closes every connection and waits for their
// goroutines.
func (s *server) close() error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// serve runs one initiator's connection: the handshake, then the lease
// (cross-memory attach) or the ring. It recovers from any panic that peer
// input could cause, and drops the connection.
func (s *server) serve(c *net.UnixConn) {
	defer s.wg.Done()
	defer s.untrack(c)
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("control connection panicked; dropped", zap.Any("panic", r), zap.Stack("stack"))
		}
	}()
	if err := s.session(c); err != nil && !s.isClosed() && !errors.Is(err, net.ErrClosed) {
		s.log.Info("control connection ended", zap.Error(err))
	}
}

func (s *server) session(c *net.UnixConn) error {
	t := s.t
	if err := c.SetDeadline(time.Now().Add(t.cfg.DialTimeout)); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	flags, err := parseHello(buf[:n])
	if err != nil {
		return err
	}
	w := welcome{status: statusOK, pid: uint32(os.Getpid())}
	var area *pinArea
	var oob []byte
	if flags&flagCMA != 0 {
		// The initiator may copy by itself: it gets the table and a pin
		// area of its own.
		a, pinsFD, err := t.tbl.newArea()
		if err != nil {
			_, _ = c.Write(welcome{status: statusRefused}.marshal())
			return fmt.Errorf("pin area: %w", err)
		}
		area = a
		defer func() {
			if area != nil {
				t.tbl.drop(area)
			}
		}()
		defer closeFD(pinsFD)
		w.tableAddr, w.tableSize, w.capacity = uint64(t.tbl.addr()), uint64(tableBytes(t.tbl.capacity)), uint32(t.tbl.capacity)
		oob = rightsOOB(t.roFD, pinsFD)
	}
	if _, _, err := c.WriteMsgUnix(w.marshal(), oob, nil); err != nil {
		return fmt.Errorf("send welcome: %w", err)
	}
	in := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, in)
	if err != nil {
		return fmt.Errorf("read use: %w", err)
	}
	fds, err := parseRights(in[:oobn])
	if err != nil {
		return err
	}
	defer func() {
		for _, fd := range fds {
			closeFD(fd)
		}
	}()
	u, err := parseUse(buf[:n])
	if err != nil {
		return err
	}
	switch u.path {
	case pathCMA:
		if area == nil || len(fds) != 0 {
			return fmt.Errorf("use cma with %d descriptors: %w", len(fds), ErrMalformed)
		}
		if _, err := c.Write(readyMsg(statusOK)); err != nil {
			return fmt.Errorf("send ready: %w", err)
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			return err
		}
		return s.lease(c)
	case pathRing:
		if area != nil {
			t.tbl.drop(area)
			area = nil
		}
		ring, err := s.openRing(u, fds)
		if err != nil {
			_, _ = c.Write(readyMsg(statusRefused))
			return err
		}
		defer unmap(ring)
		if _, err := c.Write(readyMsg(statusOK)); err != nil {
			return fmt.Errorf("send ready: %w", err)
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			return err
		}
		return s.serveRing(c, ring)
	}
	return fmt.Errorf("use path %d: %w", u.path, ErrMalformed)
}

// lease holds an initiator's pin area for as long as its control
// connection is open: it copies by itself, so nothing more comes here. Its
// end (the initiator exited or closed the peer) stops counting its pins.
func (s *server) lease(c *net.UnixConn) error {
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil // closed: the normal end of a lease
		}
		if n > 0 {
			return fmt.Errorf("%d-byte message on a cross-memory-attach lease: %w", n, ErrMalformed)
		}
	}
}

// openRing maps the ring an initiator passed, after checking that it is
// sealed against shrinking and as large as it says.
func (s *server) openRing(u use, fds []int) ([]byte, error) {
	if len(fds) != 1 {
		return nil, fmt.Errorf("use ring with %d descriptors: %w", len(fds), ErrMalformed)
	}
	if u.slots < 1 || u.slots > MaxRingSlots || u.ringBytes == 0 || u.ringBytes > MaxRingBytes || u.ringBytes%pageBytes != 0 {
		return nil, fmt.Errorf("ring of %d bytes in %d slots: %w", u.ringBytes, u.slots, ErrMalformed)
	}
	if err := checkSealed(fds[0], int(u.ringBytes)); err != nil {
		return nil, fmt.Errorf("ring: %w", err)
	}
	return mapShared(fds[0], int(u.ringBytes), true)
}

// serveRing answers ring requests in order until the connection ends.
func (s *server) serveRing(c *net.UnixConn, ring []byte) error {
	buf := make([]byte, maxMsg+1)
	var ents []reqEntry
	var status []uint8
	var out []byte
	for {
		n, _, flags, _, err := c.ReadMsgUnix(buf, nil)
		if err != nil {
			return nil // closed: the initiator is done with us
		}
		if flags&syscall.MSG_TRUNC != 0 || n > maxMsg {
			return fmt.Errorf("ring request over %d bytes: %w", maxMsg, ErrMalformed)
		}
		var seq uint64
		seq, ents, err = parseRequest(buf[:n], ents)
		if err != nil {
			return err
		}
		status = status[:0]
		for _, e := range ents {
			status = append(status, s.serveEntry(ring, e))
		}
		out = appendReply(out, seq, status)
		if err := c.SetWriteDeadline(time.Now().Add(s.t.cfg.IOTimeout)); err != nil {
			return err
		}
		if _, err := c.Write(out); err != nil {
			return fmt.Errorf("send ring reply: %w", err)
		}
	}
}

// serveEntry moves one range between the ring and local memory, after the
// same check the TCP server makes: the range lies inside one registered
// region, pinned while it is touched so that unregister_memory waits.
func (s *server) serveEntry(ring []byte, e reqEntry) uint8 {
	n := uint64(e.length)
	if n == 0 || e.ringOff > uint64(len(ring)) || n > uint64(len(ring))-e.ringOff {
		s.log.Warn("ring request outside the ring", zap.Uint64("ring_offset", e.ringOff), zap.Uint64("size", n))
		return statusBadRing
	}
	if e.op != uint8(transport.Read) && e.op != uint8(transport.Write) {
		s.log.Warn("ring request with an unknown opcode", zap.Uint8("opcode", e.op))
		return statusBadRing
	}
	pin, ok := s.t.mem.Pin(e.remote, n)
	if !ok {
		s.log.Warn("rejected a ring request outside registered memory", zap.Uint64("addr", e.remote), zap.Uint64("size", n))
		return statusRejected
	}
	defer pin.Unpin()
	if s.t.mem.Device(e.remote, n) != memory.Host {
		s.log.Warn("rejected a ring request into GPU memory", zap.Uint64("addr", e.remote), zap.Uint64("size", n))
		return statusNotHost
	}
	mem := bytesAt(uintptr(e.remote), n)
	r := ring[e.ringOff : e.ringOff+n]
	if e.op == uint8(transport.Write) {
		copy(mem, r)
	} else {
		copy(r, mem)
	}
	return statusOK
}

// ptr turns an address of registered memory (outside the Go heap) into a
// pointer for unsafe.Slice, without vet's complaint about uintptr to
// unsafe.Pointer conversions; no Go object is ever behind it.
func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// bytesAt is the n bytes of memory at addr.
func bytesAt(addr uintptr, n uint64) []byte { return unsafe.Slice((*byte)(ptr(addr)), int(n)) }
