package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/internal/connlimit"
	memtable "github.com/pymooncake/pymooncake/core/memory"
)

// serverIdle is how long a server connection may wait for its next header
// before it is closed (a Mooncake client keeps lanes open between requests).
const serverIdle = 10 * time.Minute

// Connection limits of the data server (Config.MaxConns, MaxConnsPerPeer).
const (
	// DefaultMaxConns is the total bound when the descriptor limit allows
	// it: by default the server takes at most a quarter of the process's
	// descriptors (RLIMIT_NOFILE), never fewer than MinConnsPerPeer, and
	// never fewer than an explicit MaxConnsPerPeer.
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerPeer is the bound per remote IP, lowered to the
	// total when that is lower.
	DefaultMaxConnsPerPeer = 1024
	// MinConnsPerPeer is the least a peer may be allowed: a pymooncake
	// client keeps up to MaxLanes pipelined and MaxLanes synchronous
	// connections to each target.
	MinConnsPerPeer = 2 * MaxLanes
	// MaxConnsLimit bounds both settings.
	MaxConnsLimit = 1 << 20
)

// connLimits fills the zero connection limits of c and checks them.
func (c *Config) connLimits() error {
	if c.MaxConns == 0 {
		c.MaxConns = max(MinConnsPerPeer, c.MaxConnsPerPeer, min(DefaultMaxConns, fdLimit()/4))
	}
	if c.MaxConnsPerPeer == 0 {
		c.MaxConnsPerPeer = min(DefaultMaxConnsPerPeer, c.MaxConns)
	}
	switch {
	case c.MaxConns < MinConnsPerPeer:
		return fmt.Errorf("max connections %d below %d: %w", c.MaxConns, MinConnsPerPeer, ErrInvalidConfig)
	case c.MaxConnsPerPeer < MinConnsPerPeer || c.MaxConnsPerPeer > MaxConnsLimit:
		return fmt.Errorf("max connections per peer %d outside [%d, %d]: %w", c.MaxConnsPerPeer, MinConnsPerPeer, MaxConnsLimit, ErrInvalidConfig)
	case c.MaxConns > MaxConnsLimit:
		return fmt.Errorf("max connections %d above %d: %w", c.MaxConns, MaxConnsLimit, ErrInvalidConfig)
	case c.MaxConns < c.MaxConnsPerPeer:
		return fmt.Errorf("max connections %d below the %d per peer: %w", c.MaxConns, c.MaxConnsPerPeer, ErrInvalidConfig)
	}
	return nil
}

// fdLimit is the process's soft descriptor limit (Go raises it to the hard
// limit at start), or DefaultMaxConns*4 when unknown or unlimited.
func fdLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<40 {
		return DefaultMaxConns * 4
	}
	return int(l.Cur)
}

var (
	okFrame       = EncodeStatus(StatusOK)
	rejectedFrame = EncodeStatus(StatusRejected)
	partialFrame  = EncodeStatus(StatusPartial)
)

// server answers requests against the local registered memory.
//
// It admits connections through conns (see connlimit): a connection is idle
// while it waits for its next header and busy while it serves a request.
// When a limit is reached, the longest-idle connection of the IP holding the
// most (or, over the per-peer limit, of the same IP) is closed to make room;
// with every connection busy, a connection over its IP's limit is closed at
// once, and over the total the server stops accepting until one finishes.
type server struct {
	ln       net.Listener
	mem      Memory
	gpu      GPU         // nil: all registered memory is host memory
	log      *zap.Logger // sampled: peers choose how often it is called
	io, idle time.Duration
	poll     time.Duration // see Config.PollBudget; 0: never poll
	wg       *sync.WaitGroup
	conns    *connlimit.Limiter
	// stopping ends every connection's polling at once when close begins.
	stopping atomic.Bool
	// polling is held by the one connection that may poll at a time: a
	// burst over many connections would otherwise keep every core spinning
	// while the clients, on the same cores, need them to send.
	polling atomic.Bool
}

// acceptLoop runs until the listener is closed or ctx ends.
func (s *server) acceptLoop(ctx context.Context) {
	backoff := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or a similar transient failure: wait and retry.
			s.log.Warn("tcp server: accept failed", zap.Error(err))
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		lc, err := s.conns.Admit(ctx, c)
		if err != nil {
			_ = c.Close()
			if errors.Is(err, connlimit.ErrPeerLimit) {
				s.log.Warn("tcp server: connection limit of the peer reached, connection refused",
					zap.Stringer("peer", c.RemoteAddr()), zap.Int("limit", s.conns.PerPeer()))
				continue
			}
			return // closing
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer lc.Release()
			s.serveConn(lc)
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
	s.conns.Close()
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
// rejected, an I/O step fails or times out, or c is shed to make room. It
// closes c.
func (s *server) serveConn(lc *connlimit.Conn) {
	c := lc.Conn
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
	got := 0 // bytes of the next header that polling read
	for {
		if got == 0 {
			// Waiting for the client, idle: the connection may be shed.
			lc.Idle()
			if err := c.SetReadDeadline(time.Now().Add(s.idle)); err != nil {
				return
			}
			n, err := c.Read(st.hdr[:])
			if n == 0 {
				if err == nil {
					err = io.ErrNoProgress
				}
				s.logNextHeader(c, err)
				return
			}
			got = n
		}
		// Part of a request has come (read here or by polling): from
		// now on the connection is mid-request and never shed, and the
		// rest of the header must come soon (a header is one segment
		// from any real client; one byte must not buy a slot for long).
		if !lc.Busy() {
			return // shed as the first bytes came in
		}
		if got < len(st.hdr) {
			if err := c.SetReadDeadline(time.Now().Add(min(s.io, headerRest))); err != nil {
				return
			}
			if _, err := io.ReadFull(c, st.hdr[got:]); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				s.logNextHeader(c, err)
				return
			}
		}
		got = 0
		h := DecodeHeader(&st.hdr)
		if h.isSG() {
			if err := s.serveSG(st, h); err != nil {
				s.log.Debug("tcp server: scatter-gather request failed", zap.Stringer("peer", c.RemoteAddr()), zap.Error(err))
				return
			}
			var err error
			if got, err = s.pollNext(pl, st, h.Size); err != nil {
				s.logNextHeader(c, err)
				return
			}
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
		if got, err = s.pollNext(pl, st, h.Size); err != nil {
			s.logNextHeader(c, err)
			return
		}
	}
}

// headerRest bounds the wait for the rest of a header whose first bytes
// came.
const headerRest = time.Second

// logNextHeader logs why the next header could not be read, unless the
// client just closed the connection.
func (s *server) logNextHeader(c net.Conn, err error) {
	if err != io.EOF && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("tcp server: reading header", zap.Stringer("peer", c.RemoteAddr()), zap.Error(err))
	}
}

// pollMax is the largest request after whose reply the server polls for
// the next header, and the largest write whose status the client polls
// for: after larger ones the other side takes long to come back.
const pollMax = 64 << 10

// pollNext polls for the next header after a reply of size bytes: only
// after small requests, since a large one's client takes long to come
// back, and meanwhile needs the cores (polling after 1 MiB replies halved
// the throughput of 1 MiB writes).
// What arrives is read into st's header buffer: it returns how many bytes,
// or the connection's end or error.
func (s *server) pollNext(pl *poller, st *serverConn, size uint64) (int, error) {
	if pl == nil || size > pollMax || !s.polling.CompareAndSwap(false, true) {
		return 0, nil
	}
	defer s.polling.Store(false)
	return pl.waitInto(st.hdr[:])
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
