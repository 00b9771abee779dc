package handshake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Handler answers one request. t is the request's type (Legacy requests are
// given to the Connection handler with t == Legacy) and payload its JSON body,
// already checked to be valid JSON. It returns the reply JSON; nil or empty
// means JSON null ("null\n"). ctx is cancelled when the server closes, and a
// handler must then return promptly. Handlers run concurrently.
type Handler func(ctx context.Context, t MsgType, payload []byte) []byte

// ServerConfig configures a Server. The zero value is usable.
type ServerConfig struct {
	// MaxFrame bounds a request's declared length (MC_HANDSHAKE_MAX_LENGTH).
	// 0 means DefaultMaxFrame; above MaxFrameLimit it is lowered to
	// MaxFrameLimit.
	MaxFrame uint64
	// RecvTimeout bounds, per connection, the wait for the request, the
	// write of the reply, and the wait for the client to close afterwards.
	// 0 means 5 s (Mooncake HEAD's SO_RCVTIMEO).
	RecvTimeout time.Duration
	// Logger receives the server's logs; nil means none.
	Logger *zap.Logger
}

// DefaultServerRecvTimeout is ServerConfig.RecvTimeout's default.
const DefaultServerRecvTimeout = 5 * time.Second

// maxConns bounds the connections a Server serves at once. Mooncake serves
// one at a time; a connection beyond the bound is closed at once.
const maxConns = 256

// Bad-input warnings are sampled: per message, the first badLogFirst each
// badLogTick are logged and the rest dropped, so a misbehaving peer cannot
// flood the log.
const (
	badLogTick  = time.Second
	badLogFirst = 5
)

// Server answers handshake requests on one listener, one request per
// connection, serving connections concurrently. See the package doc for the
// protocol and ownership.
type Server struct {
	ln          net.Listener
	maxFrame    uint64
	recvTimeout time.Duration
	handlers    map[MsgType]Handler
	log         *zap.Logger // Debug: per connection
	warn        *zap.Logger // sampled: bad input from peers
	slots       chan struct{}

	ctx    context.Context // cancelled by Close; given to handlers
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // +checklocks:mu
	closed bool                  // +checklocks:mu

	closeOnce sync.Once
	closeErr  error
}

// NewServer serves handshake requests on ln, which it takes ownership of,
// dispatching each request by type to handlers (copied; a type with no
// handler is answered with JSON null). It starts serving at once in its own
// goroutines; Close stops it.
func NewServer(ln net.Listener, cfg ServerConfig, handlers map[MsgType]Handler) *Server {
	return newServer(ln, cfg, handlers, maxConns)
}

func newServer(ln net.Listener, cfg ServerConfig, handlers map[MsgType]Handler, limit int) *Server {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("handshake").With(zap.Stringer("listen", ln.Addr()))
	s := &Server{
		ln:          ln,
		maxFrame:    cfg.MaxFrame,
		recvTimeout: cfg.RecvTimeout,
		handlers:    map[MsgType]Handler{},
		log:         log,
		warn: log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return zapcore.NewSamplerWithOptions(c, badLogTick, badLogFirst, 0)
		})),
		slots: make(chan struct{}, limit),
		conns: map[net.Conn]struct{}{},
	}
	switch {
	case s.maxFrame == 0:
		s.maxFrame = DefaultMaxFrame
	case s.maxFrame > MaxFrameLimit:
		log.Warn("handshake max frame lowered to the limit",
			zap.Uint64("asked", s.maxFrame), zap.Uint64("limit", MaxFrameLimit))
		s.maxFrame = MaxFrameLimit
	}
	if s.recvTimeout <= 0 {
		s.recvTimeout = DefaultServerRecvTimeout
	}
	for t, h := range handlers {
		if t.typed() && h != nil {
			s.handlers[t] = h
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// Addr is the listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, closes the listener and every live connection,
// cancels the handlers' context and waits for every goroutine of the server.
// It is idempotent; every call returns the first call's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.mu.Lock()
		s.closed = true
		live := make([]net.Conn, 0, len(s.conns))
		for c := range s.conns {
			live = append(live, c)
		}
		s.mu.Unlock()
		err := s.ln.Close()
		for _, c := range live {
			_ = c.Close() // the connection's goroutine closes it too
		}
		s.wg.Wait()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = fmt.Errorf("close handshake listener %s: %w", s.ln.Addr(), err)
		}
	})
	return s.closeErr
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (EMFILE, ECONNABORTED, ...): back off and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.warn.Warn("handshake accept failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		select {
		case s.slots <- struct{}{}:
		default:
			s.warn.Warn("handshake connection limit reached; refusing connection",
				zap.Stringer("peer", conn.RemoteAddr()), zap.Int("limit", cap(s.slots)))
			_ = conn.Close()
			continue
		}
		if !s.track(conn) {
			<-s.slots
			_ = conn.Close()
			return
		}
		s.wg.Add(1)
		go s.serveConn(conn)
	}
}

// track records a live connection; false when the server is closing.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// serveConn answers the one request of conn, then closes it. A panic, in the
// parsing or in a handler, drops this connection only.
func (s *Server) serveConn(conn net.Conn) {
	peer := conn.RemoteAddr().String()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic serving handshake connection; dropped",
				zap.String("peer", peer), zap.Any("panic", r), zap.StackSkip("stack", 1))
		}
		_ = conn.Close()
		<-s.slots
		s.untrack(conn) // after the slot is free: untracked means reusable
		s.wg.Done()
	}()
	if ce := s.log.Check(zap.DebugLevel, "handshake connection"); ce != nil {
		ce.Write(zap.String("peer", peer))
	}
	s.exchange(conn, peer)
}

// exchange reads one request from conn, replies, and waits for the client to
// close. It returns early, without replying, on any problem with the request,
// as Mooncake does.
func (s *Server) exchange(conn net.Conn, peer string) {
	_ = conn.SetDeadline(time.Now().Add(s.recvTimeout))
	t, payload, err := ReadFrame(conn, s.maxFrame)
	switch {
	case err == nil:
	case s.ctx.Err() != nil:
		return // closing
	case errors.Is(err, io.EOF) && !errors.Is(err, ErrTruncated):
		if ce := s.log.Check(zap.DebugLevel, "handshake peer closed without a request"); ce != nil {
			ce.Write(zap.String("peer", peer))
		}
		return
	default:
		s.warn.Warn("bad handshake request; closing without reply", zap.String("peer", peer), zap.Error(err))
		return
	}
	if !json.Valid(payload) {
		s.warn.Warn("malformed handshake JSON; closing without reply",
			zap.String("peer", peer), zap.Stringer("type", t), zap.Int("length", len(payload)))
		return
	}

	reply := s.dispatch(t, payload)
	if s.ctx.Err() != nil {
		return // closing: the handler was cancelled, its reply is not an answer
	}

	_ = conn.SetDeadline(time.Now().Add(s.recvTimeout))
	if err := WriteFrame(conn, t, reply); err != nil {
		if s.ctx.Err() == nil {
			s.warn.Warn("handshake reply failed", zap.String("peer", peer), zap.Stringer("type", t), zap.Error(err))
		}
		return
	}
	// Mooncake's order: half-close, then wait (bounded) for the client to
	// close, so the client reads the whole reply before the socket goes.
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	var one [1]byte
	if n, _ := conn.Read(one[:]); n > 0 {
		if ce := s.log.Check(zap.DebugLevel, "handshake peer sent bytes after its request"); ce != nil {
			ce.Write(zap.String("peer", peer))
		}
	}
}

// dispatch runs the handler for t and returns its reply, or JSON null.
func (s *Server) dispatch(t MsgType, payload []byte) []byte {
	key := t
	if t == Legacy {
		key = Connection
	}
	h := s.handlers[key]
	if h == nil {
		return []byte(nullReply)
	}
	reply := h(s.ctx, t, payload)
	if len(reply) == 0 {
		return []byte(nullReply)
	}
	return reply
}
