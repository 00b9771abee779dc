package handshake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/internal/connlimit"
)

// Handler answers one request. t is the request's type (Legacy requests are
// given to the Connection handler with t == Legacy) and payload its JSON body,
// already checked to be valid JSON. It returns the reply JSON; nil or empty
// means JSON null ("null\n"). ctx is cancelled when the server closes, and a
// handler must then return promptly; PeerFromContext(ctx) is the remote IP
// of the request. Handlers run concurrently.
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
	// HeaderTimeout bounds the wait for the first 8 bytes of the request
	// (its length), counted from the accept: a connection that has sent
	// nothing within it is closed. Mooncake clients write the request as
	// soon as they connect. 0 means DefaultHeaderTimeout; it is never
	// above RecvTimeout (PYMOONCAKE_HANDSHAKE_HEADER_TIMEOUT_MS).
	HeaderTimeout time.Duration
	// MaxConns bounds the connections served at once; 0 means
	// DefaultMaxConns (PYMOONCAKE_HANDSHAKE_MAX_CONNS).
	MaxConns int
	// MaxConnsPerPeer bounds the connections of one remote IP; 0 means
	// DefaultMaxConnsPerPeer, and it is never above MaxConns
	// (PYMOONCAKE_HANDSHAKE_MAX_CONNS_PER_PEER).
	MaxConnsPerPeer int
	// Logger receives the server's logs; nil means none.
	Logger *zap.Logger
}

// Defaults of ServerConfig.
const (
	// DefaultServerRecvTimeout is ServerConfig.RecvTimeout's default.
	DefaultServerRecvTimeout = 5 * time.Second
	// DefaultHeaderTimeout is ServerConfig.HeaderTimeout's default.
	DefaultHeaderTimeout = time.Second
	// DefaultMaxConns is ServerConfig.MaxConns's default. Mooncake serves
	// one connection at a time.
	DefaultMaxConns = 256
	// DefaultMaxConnsPerPeer is ServerConfig.MaxConnsPerPeer's default.
	DefaultMaxConnsPerPeer = 64
)

// headerLen is how much of a request HeaderTimeout waits for: the frame's
// length field.
const headerLen = 8

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
	ln            net.Listener
	maxFrame      uint64
	recvTimeout   time.Duration
	headerTimeout time.Duration
	handlers      map[MsgType]Handler
	log           *zap.Logger // Debug: per connection
	warn          *zap.Logger // sampled: bad input from peers
	conns         *connlimit.Limiter

	ctx    context.Context // cancelled by Close; given to handlers
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// NewServer serves handshake requests on ln, which it takes ownership of,
// dispatching each request by type to handlers (copied; a type with no
// handler is answered with JSON null). It starts serving at once in its own
// goroutines; Close stops it.
//
// Connections are admitted within cfg's limits. A connection is idle until
// its whole request is read, and again once its reply is written (while the
// server waits for the client to close, as Mooncake's does); it is working
// in between. When a limit is reached the longest-idle connection is closed
// to make room: of the same remote IP over MaxConnsPerPeer, of the IP with
// the most connections over MaxConns. A connection over MaxConnsPerPeer
// when all of its IP's are working is closed at once; over MaxConns with
// all working, the server stops accepting until one finishes (new
// connections wait in the listen backlog).
func NewServer(ln net.Listener, cfg ServerConfig, handlers map[MsgType]Handler) *Server {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("handshake").With(zap.Stringer("listen", ln.Addr()))
	s := &Server{
		ln:            ln,
		maxFrame:      cfg.MaxFrame,
		recvTimeout:   cfg.RecvTimeout,
		headerTimeout: cfg.HeaderTimeout,
		handlers:      map[MsgType]Handler{},
		log:           log,
		warn: log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return zapcore.NewSamplerWithOptions(c, badLogTick, badLogFirst, 0)
		})),
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
	if s.headerTimeout <= 0 {
		s.headerTimeout = DefaultHeaderTimeout
	}
	s.headerTimeout = min(s.headerTimeout, s.recvTimeout)
	maxConns, perPeer := cfg.MaxConns, cfg.MaxConnsPerPeer
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	if perPeer <= 0 {
		perPeer = DefaultMaxConnsPerPeer
	}
	s.conns, _ = connlimit.New(maxConns, perPeer) // both positive: cannot fail
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
		err := s.ln.Close()
		s.conns.Close() // the connections' goroutines close them too
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
		lc, err := s.conns.Admit(s.ctx, conn)
		if err != nil {
			_ = conn.Close()
			if errors.Is(err, connlimit.ErrPeerLimit) {
				s.warn.Warn("handshake connection limit of the peer reached; refusing connection",
					zap.Stringer("peer", conn.RemoteAddr()), zap.Int("limit", s.conns.PerPeer()))
				continue
			}
			return // closing
		}
		s.wg.Add(1)
		go s.serveConn(lc)
	}
}

// serveConn answers the one request of conn, then closes it. A panic, in the
// parsing or in a handler, drops this connection only.
func (s *Server) serveConn(conn *connlimit.Conn) {
	peer := conn.RemoteAddr().String()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic serving handshake connection; dropped",
				zap.String("peer", peer), zap.Any("panic", r), zap.StackSkip("stack", 1))
		}
		_ = conn.Close()
		conn.Release()
		s.wg.Done()
	}()
	if ce := s.log.Check(zap.DebugLevel, "handshake connection"); ce != nil {
		ce.Write(zap.String("peer", peer))
	}
	s.exchange(conn, peer)
}

// exchange reads one request from conn, replies, and waits for the client to
// close. It returns early, without replying, on any problem with the request,
// as Mooncake does, and when conn was closed to make room for others.
func (s *Server) exchange(conn *connlimit.Conn, peer string) {
	start := time.Now()
	_ = conn.SetDeadline(start.Add(s.headerTimeout))
	r := &headerReader{Conn: conn, then: start.Add(s.recvTimeout)}
	t, payload, err := ReadFrame(r, s.maxFrame)
	switch {
	case err == nil:
	case s.ctx.Err() != nil:
		return // closing
	case errors.Is(err, io.EOF) && !errors.Is(err, ErrTruncated):
		if ce := s.log.Check(zap.DebugLevel, "handshake peer closed without a request"); ce != nil {
			ce.Write(zap.String("peer", peer))
		}
		return
	case r.n < headerLen && isTimeout(err):
		if ce := s.log.Check(zap.DebugLevel, "handshake peer sent no request in time; closed"); ce != nil {
			ce.Write(zap.String("peer", peer), zap.Int("bytes", r.n), zap.Duration("header_timeout", s.headerTimeout))
		}
		return
	default:
		s.warn.Warn("bad handshake request; closing without reply", zap.String("peer", peer), zap.Error(err))
		return
	}
	if !conn.Busy() {
		return // closed to make room while the request came in
	}
	if !json.Valid(payload) {
		s.warn.Warn("malformed handshake JSON; closing without reply",
			zap.String("peer", peer), zap.Stringer("type", t), zap.Int("length", len(payload)))
		return
	}

	ctx := context.WithValue(s.ctx, peerKey{}, connlimit.PeerOf(conn))
	reply := s.dispatch(ctx, t, payload)
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
	// The wait is idle: it may be cut short to make room.
	conn.Idle()
	cw, ok := conn.Conn.(interface{ CloseWrite() error })
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

// headerReader reads a request from a connection whose read deadline is
// the header deadline: once the first headerLen bytes are in, it moves the
// deadline to then.
type headerReader struct {
	*connlimit.Conn
	then time.Time
	n    int // bytes read so far, up to headerLen
}

func (r *headerReader) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if r.n < headerLen && n > 0 {
		r.n = min(r.n+n, headerLen)
		if r.n == headerLen {
			_ = r.Conn.SetReadDeadline(r.then)
		}
	}
	return n, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

type peerKey struct{}

// PeerFromContext returns the remote IP of the connection whose request a
// Handler is answering (IPv4 unmapped); false outside a handler, or for a
// connection that has no IP.
func PeerFromContext(ctx context.Context) (netip.Addr, bool) {
	a, ok := ctx.Value(peerKey{}).(netip.Addr)
	return a, ok && a.IsValid()
}

// dispatch runs the handler for t and returns its reply, or JSON null.
func (s *Server) dispatch(ctx context.Context, t MsgType, payload []byte) []byte {
	key := t
	if t == Legacy {
		key = Connection
	}
	h := s.handlers[key]
	if h == nil {
		return []byte(nullReply)
	}
	reply := h(ctx, t, payload)
	if len(reply) == 0 {
		return []byte(nullReply)
	}
	return reply
}
