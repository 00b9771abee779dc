package cudaipc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/memory"
)

// server is the exporting side: it answers the open requests of the
// initiators that connect to this engine's socket, and makes them drop
// their mappings of a buffer before its unregistration returns.
type server struct {
	t  *Transport
	ln *net.UnixListener

	mu      sync.Mutex
	conns   map[*serverConn]struct{} // guarded by mu
	regions map[uint64]uint64        // guarded by mu: registered GPU buffers, address → length
	seq     uint64                   // guarded by mu: drop requests sent
	closed  bool                     // guarded by mu
}

// serverConn is one initiator's connection.
type serverConn struct {
	c    *net.UnixConn
	wmu  sync.Mutex // serialises writes
	mu   sync.Mutex
	lent map[uint64]bool          // guarded by mu: buffers (by address) it was granted
	acks map[uint64]chan struct{} // guarded by mu: drops awaiting their reply
	done chan struct{}            // closed when its reader stops
}

// send writes one message by deadline. An initiator that takes nothing
// (stopped, wedged) is dropped then: a reply is sent while its buffer is
// pinned, and an unregistration waits for that pin.
func (sc *serverConn) send(b []byte, fd int, deadline time.Time) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if err := sc.c.SetWriteDeadline(deadline); err != nil {
		return err
	}
	return send(sc.c, b, fd)
}

func listen(t *Transport, name string) (*server, error) {
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: name, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("cudaipc: listen on %s: %w", name, err)
	}
	return &server{t: t, ln: ln, conns: map[*serverConn]struct{}{}, regions: map[uint64]uint64{}}, nil
}

// serve accepts connections until the listener closes.
func (s *server) serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.t.log.Warn("accept on the CUDA IPC socket failed; the endpoint stops", zap.Error(err))
			}
			return
		}
		if err := sameUser(c); err != nil {
			s.t.log.Warn("refused a CUDA IPC connection", zap.Error(err))
			c.Close()
			continue
		}
		sc := &serverConn{c: c, lent: map[uint64]bool{}, acks: map[uint64]chan struct{}{}, done: make(chan struct{})}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[sc] = struct{}{}
		s.mu.Unlock()
		if !s.t.lt.Go(func() { s.serveConn(sc) }) {
			s.forget(sc)
			return
		}
	}
}

// sameUser refuses a connection whose other end runs as another user: an
// initiator would get handles to this process's GPU memory; a target
// would get this process's data.
func sameUser(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("peer credentials: %w", cerr)
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("pid %d runs as uid %d, not %d", cred.Pid, cred.Uid, os.Getuid())
	}
	return nil
}

func (s *server) forget(sc *serverConn) {
	sc.c.Close()
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
}

// serveConn reads one initiator's messages until it goes away. Peer input:
// a panic stops at this goroutine's top and drops the connection.
func (s *server) serveConn(sc *serverConn) {
	defer func() {
		if r := recover(); r != nil {
			s.t.log.Error("panic serving a CUDA IPC peer; connection dropped", zap.Any("panic", r), zap.Stack("stack"))
		}
		close(sc.done)
		s.forget(sc)
	}()
	buf, oob := make([]byte, maxMessage), make([]byte, syscall.CmsgSpace(4*4))
	for {
		b, fds, err := recv(sc.c, buf, oob)
		closeAll(fds) // initiators send none
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !isEOF(err) {
				s.t.log.Debug("CUDA IPC peer connection ended", zap.Error(err))
			}
			return
		}
		m, err := decode(b)
		if err != nil {
			s.t.log.Warn("CUDA IPC peer sent a malformed message; connection dropped", zap.Error(err))
			return
		}
		switch m := m.(type) {
		case openRequest:
			r, fd, unpin := s.open(sc, m)
			// Sent before the buffer is unpinned: its unregistration
			// waits for the pin, so a drop request for it always
			// follows this reply on the connection (the initiator
			// relies on that order, see peerState.noteDrop).
			err := sc.send(r.encode(), fd, time.Now().Add(s.t.cfg.openTimeout()))
			unpin()
			if fd >= 0 {
				_ = syscall.Close(fd)
			}
			if err != nil {
				return
			}
		case dropReply:
			sc.mu.Lock()
			if ch, ok := sc.acks[m.seq]; ok {
				close(ch)
				delete(sc.acks, m.seq)
			}
			sc.mu.Unlock()
		default:
			s.t.log.Warn("CUDA IPC peer sent an unexpected message; connection dropped", zap.String("type", fmt.Sprintf("%T", m)))
			return
		}
	}
}

func isEOF(err error) bool { return err != nil && strings.Contains(err.Error(), "EOF") }

// open exports the allocation holding the requested address, which must lie
// in a registered GPU buffer. The buffer is pinned, so that the grant is
// recorded, and the reply sent, before an unregistration of it looks for
// grants to revoke. It returns the reply, the descriptor to send with it
// (-1: none), which the caller closes, and the unpin to call once the
// reply is sent.
func (s *server) open(sc *serverConn, m openRequest) (_ openReply, fd int, unpin func()) {
	r := openReply{id: m.id}
	unpin = func() {}
	reg, ok := s.t.mem.Find(m.addr, 1)
	if !ok || reg.Device == memory.Host {
		r.status, r.text = statusRejected, "not in a registered GPU buffer"
		return r, -1, unpin
	}
	pin, ok := s.t.mem.Pin(reg.Addr, reg.Length)
	if !ok {
		r.status, r.text = statusRejected, "being unregistered"
		return r, -1, unpin
	}
	unpin = pin.Unpin
	h, err := s.t.ipc.ExportIPC(uintptr(m.addr))
	switch {
	case errors.Is(err, gpu.ErrNotSupported) || errors.Is(err, gpu.ErrInvalidRange):
		r.status, r.text = statusNotExportable, err.Error()
		return r, -1, unpin
	case err != nil:
		s.t.log.Warn("export GPU memory for a same-host peer", zap.Uint64("addr", m.addr), zap.Error(err))
		r.status, r.text = statusFailed, err.Error()
		return r, -1, unpin
	}
	base, end := uint64(h.Base), uint64(h.Base)+h.Size
	lo, hi := max(reg.Addr, base), min(reg.End(), end)
	if lo >= hi || m.addr < lo || m.addr >= hi {
		_ = h.Close()
		r.status, r.text = statusFailed, fmt.Sprintf("allocation [%#x, %#x) does not hold %#x", base, end, m.addr)
		return r, -1, unpin
	}
	sc.mu.Lock()
	sc.lent[reg.Addr] = true
	sc.mu.Unlock()
	r.status, r.kind, r.base, r.size, r.grant, r.grantLen, r.device, r.legacy = statusOK, h.Kind, base, h.Size, lo, hi-lo, h.Device, h.Legacy
	return r, h.FD, unpin
}

// register records a GPU buffer that initiators may map.
func (s *server) register(addr, length uint64) {
	s.mu.Lock()
	s.regions[addr] = length
	s.mu.Unlock()
}

// unregister makes every initiator that was granted the buffer at addr
// drop its mappings of it, and waits for them (DropTimeout); one that does
// not answer in time is disconnected, and the error says so.
func (s *server) unregister(addr uint64) error {
	type wait struct {
		sc  *serverConn
		seq uint64
		ch  chan struct{}
	}
	var waits []wait
	s.mu.Lock()
	length, ok := s.regions[addr]
	delete(s.regions, addr)
	if ok {
		for sc := range s.conns {
			sc.mu.Lock()
			if sc.lent[addr] {
				delete(sc.lent, addr)
				s.seq++
				w := wait{sc: sc, seq: s.seq, ch: make(chan struct{})}
				sc.acks[w.seq] = w.ch
				waits = append(waits, w)
			}
			sc.mu.Unlock()
		}
	}
	s.mu.Unlock()
	if len(waits) == 0 {
		return nil
	}
	// One deadline for the requests and the answers: initiators that take
	// nothing do not delay the others' requests one after another.
	deadline := time.Now().Add(s.t.cfg.dropTimeout())
	for _, w := range waits {
		if err := w.sc.send(dropRequest{seq: w.seq, addr: addr, length: length}.encode(), -1, deadline); err != nil {
			w.sc.c.Close() // its reader ends and closes done
		}
	}
	ctx, cancel := context.WithDeadline(s.t.lt.Context(), deadline)
	defer cancel()
	var errs []error
	for _, w := range waits {
		select {
		case <-w.ch:
		case <-w.sc.done: // disconnected: that process keeps no grant
		case <-ctx.Done():
			w.sc.c.Close()
			errs = append(errs, fmt.Errorf("cudaipc: a same-host peer did not drop its mapping of [%#x, +%d) within %v; disconnected it: %w",
				addr, length, s.t.cfg.dropTimeout(), ctx.Err()))
		}
	}
	return errors.Join(errs...)
}

// close stops accepting and drops every connection.
func (s *server) close() {
	s.mu.Lock()
	s.closed = true
	conns := make([]*serverConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	s.ln.Close()
	for _, sc := range conns {
		sc.c.Close()
	}
}
