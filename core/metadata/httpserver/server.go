package httpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Path is the server's only route, as Mooncake's.
const Path = "/metadata"

// Defaults applied by New to zero Config fields.
const (
	DefaultAddr    = ":8080" // Mooncake's server listens on 0.0.0.0:8080
	DefaultMaxBody = 16 << 20
)

// http.Server limits: a slow or silent client cannot hold a connection.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = time.Minute
	writeTimeout      = time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 1 << 20
	// runShutdownTimeout bounds Run's graceful shutdown.
	runShutdownTimeout = 5 * time.Second
)

// Config configures a Server. Zero fields mean the documented default.
type Config struct {
	// Addr is the host:port to listen on; port 0 picks a free port
	// (see Server.Addr). Default ":8080".
	Addr string
	// PersistFile, if set, is loaded at start (a missing file is an empty
	// store) and rewritten atomically after every change.
	PersistFile string
	// MaxBody bounds a PUT body in bytes (default 16 MiB); larger gets 413.
	MaxBody int64
	// Logger receives the server's logs; nil means none.
	Logger *zap.Logger
}

// Server is a running metadata server.
type Server struct {
	log  *zap.Logger
	ln   net.Listener
	srv  *http.Server
	done chan struct{} // closed when Serve has returned
	// serveErr is Serve's error other than http.ErrServerClosed; read it
	// only after done is closed.
	serveErr error

	closeOnce sync.Once
	closeErr  error
}

// New loads cfg.PersistFile, binds cfg.Addr and starts serving in a
// goroutine owned by the Server.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.MaxBody < 0 {
		return nil, fmt.Errorf("%w: negative max body %d", ErrConfig, cfg.MaxBody)
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	log := cfg.Logger.Named("metadata-server")
	h, err := newHandler(cfg, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("httpserver: listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{
		log: log,
		ln:  ln,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          zap.NewStdLog(log),
		},
		done: make(chan struct{}),
	}
	go s.serve()
	log.Info("metadata server listening",
		zap.String("addr", s.Addr()), zap.String("persist_file", cfg.PersistFile),
		zap.Int("keys", len(h.data)), zap.Int64("max_body", cfg.MaxBody))
	return s, nil
}

func newHandler(cfg Config, log *zap.Logger) (*handler, error) {
	h := &handler{log: log, maxBody: cfg.MaxBody, persist: cfg.PersistFile, data: map[string][]byte{}}
	if cfg.PersistFile != "" {
		data, err := loadSnapshot(cfg.PersistFile)
		if err != nil {
			return nil, err
		}
		h.data = data
	}
	return h, nil
}

func (s *Server) serve() {
	defer close(s.done)
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.serveErr = fmt.Errorf("httpserver: serve on %s: %w", s.Addr(), err)
		s.log.Error("metadata server stopped", zap.Error(err))
	}
}

// Addr is the address the server is bound to, e.g. "127.0.0.1:41234".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops accepting, waits for in-flight requests until ctx is done and
// then drops the remaining connections. It is idempotent.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
			s.closeErr = fmt.Errorf("httpserver: graceful shutdown: %w", err)
		}
		<-s.done
		if s.closeErr == nil {
			s.closeErr = s.serveErr
		}
	})
	return s.closeErr
}

// Run serves cfg until ctx is done, then shuts down gracefully. It returns
// an error if the server cannot start or stops on its own.
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.done:
	}
	sctx, cancel := context.WithTimeout(context.Background(), runShutdownTimeout)
	defer cancel()
	return s.Close(sctx)
}
