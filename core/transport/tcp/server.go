package tcp

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	memtable "github.com/pymooncake/pymooncake/core/memory"
)

// serverIdle is how long a server connection may wait for its next header
// before it is closed (a Mooncake client keeps lanes open between requests).
const serverIdle = 10 * time.Minute

var (
	okFrame       = EncodeStatus(StatusOK)
	rejectedFrame = EncodeStatus(StatusRejected)
	partialFrame  = EncodeStatus(StatusPartial)
)

// server answers requests against the local registered memory.
type server struct {
	ln       net.Listener
	mem      Memory
	gpu      GPU         // nil: all registered memory is host memory
	log      *zap.Logger // sampled: peers choose how often it is called
	io, idle time.Duration
	poll     time.Duration // see Config.PollBudget; 0: never poll
	wg       *sync.WaitGroup
	// stopping ends every connection's polling at once when close begins.
	stopping atomic.Bool
	// polling is held by the one connection that may poll at a time: a
	// burst over many connections would otherwise keep every core spinning
	// while the clients, on the same cores, need them to send.
	polling atomic.Bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // guarded by mu
	closed bool                  // guarded by mu
}

// acceptLoop runs until the listener is closed.
func (s *server) acceptLoop(done <-chan struct{}) {
	backoff := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or a similar transient failure: wait and retry.
			s.log.Warn("tcp server: accept failed", zap.Error(err))
			select {
			case <-time.After(backoff):
			case <-done:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// close closes the listener and every connection, which ends their
// goroutines; the caller waits for them.
func (s *server) close() error {
	s.stopping.Store(true)
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	return err
}

// pin pins [addr, addr+size) when it is a non-empty range of registered
// memory; ranges that wrap around or are absurdly large never reach the
// table.
func (s *server) pin(addr, size uint64) (memtable.Pin, bool) {
	if size == 0 || size >= maxSize || addr+size < addr {
		return memtable.Pin{}, false
	}
	return s.mem.Pin(addr, size)
}

// serveConn answers requests on c until the peer closes it, a request is
// rejected, or an I/O step fails or times out. It closes c.
func (s *server) serveConn(c net.Conn) {
	defer c.Close()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("tcp server: panic while serving peer, connection dropped",
				zap.Stringer("peer", c.RemoteAddr()), zap.Any("panic", r), zap.StackSkip("stack", 1))
		}
	}()
	st := &serverConn{stream: newStream(c, nil)}
	// After each reply, the client's next header usually follows within
	// microseconds: poll for it before parking in the netpoller.
	pl := newPoller(c, s.poll, s.stopping.Load)
	for {
		if err := c.SetReadDeadline(time.Now().Add(s.idle)); err != nil {
			return
		}
		if _, err := io.ReadFull(c, st.hdr[:]); err != nil {
			if err != io.EOF && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("tcp server: reading header", zap.Stringer("peer", c.RemoteAddr()), zap.Error(err))
			}
			return
		}
		h := DecodeHeader(&st.hdr)
		if h.isSG() {
			if err := s.serveSG(st, h); err != nil {
				s.log.Debug("tcp server: scatter-gather request failed", zap.Stringer("peer", c.RemoteAddr()), zap.Error(err))
				return
			}
			s.pollNext(pl, h.Size)
			continue
		}
		pin, ok := s.pin(h.Addr, h.Size)
		if !ok {
			s.log.Warn("tcp server: request rejected: address range not registered",
				zap.Stringer("peer", c.RemoteAddr()), zap.Uint64("addr", h.Addr),
				zap.Uint64("size", h.Size), zap.Uint8("opcode", h.Opcode))
			if h.isV2() {
				// Close without draining the body, as Mooncake does.
				_ = st.write(rejectedFrame[:], nil, s.io)
			}
			return
		}
		// GPU memory goes through a stage's page-locked buffers.
		stage, err := stageFor(s.gpu, h.Addr, h.Size)
		if err != nil {
			pin.Unpin()
			s.log.Warn("tcp server: cannot serve GPU memory, connection dropped", zap.Stringer("peer", c.RemoteAddr()),
				zap.Uint64("addr", h.Addr), zap.Uint64("size", h.Size), zap.Error(err))
			return
		}
		if h.isWrite() {
			if stage != nil {
				_, err = st.recvStaged(stage, uintptr(h.Addr), h.Size, s.io)
			} else {
				_, err = st.readFull(memory(uintptr(h.Addr), h.Size), s.io)
			}
			if err == nil && h.isV2() {
				err = st.write(okFrame[:], nil, s.io)
			}
		} else {
			var prefix []byte
			if h.isV2() {
				prefix = okFrame[:]
			}
			if stage != nil {
				err = st.sendStaged(prefix, stage, uintptr(h.Addr), h.Size, s.io)
			} else {
				err = st.write(prefix, memory(uintptr(h.Addr), h.Size), s.io)
			}
		}
		if stage != nil {
			stage.Release()
		}
		pin.Unpin()
		if err != nil {
			s.log.Debug("tcp server: transfer failed", zap.Stringer("peer", c.RemoteAddr()),
				zap.Uint64("addr", h.Addr), zap.Uint64("size", h.Size), zap.Uint8("opcode", h.Opcode), zap.Error(err))
			return
		}
		s.pollNext(pl, h.Size)
	}
}

// pollNext polls for the next header after a reply of size bytes: only
// after small requests, since a large one's client takes long to come
// back, and meanwhile needs the cores.
func (s *server) pollNext(pl *poller, size uint64) {
	if pl != nil && size <= InlineMax && s.polling.CompareAndSwap(false, true) {
		pl.wait()
		s.polling.Store(false)
	}
}

// serverConn is the per-connection state, allocated once per connection;
// its buffers grow to the largest request served and are reused.
type serverConn struct {
	stream
	hdr     [HeaderSize]byte
	table   []byte         // a scatter-gather table as read
	ranges  []Range        // ... decoded
	refused []byte         // ... and the bitmap of the refused ones
	bufs    [][]byte       // the memory of a request's ranges
	out     [][]byte       // a reply: status, bitmap, data
	pins    []memtable.Pin // what a scatter-gather request holds
	scratch []byte         // where refused WRITE ranges are read and dropped
}
