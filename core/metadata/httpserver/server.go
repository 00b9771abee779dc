package httpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
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
	// PersistFile, if set, is the store's file: a bbolt database, created
	// if missing, loaded at start, and written incrementally (each change
	// is on disk before its reply). A file in the earlier JSON format is
	// migrated to it. The file is locked while the server runs.
	PersistFile string
	// MaxBody bounds a PUT body in bytes (default 16 MiB); larger gets 413.
	// With a PersistFile it may not exceed bbolt's value limit (2 GiB).
	MaxBody int64
	// Logger receives the server's logs; nil means none.
	Logger *zap.Logger

	// beforeCommit is a test hook: see store.beforeCommit.
	beforeCommit func() error
}

// Server is a running metadata server.
type Server struct {
	log  *zap.Logger
	h    *handler
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
	if cfg.PersistFile != "" && cfg.MaxBody > bolt.MaxValueSize {
		return nil, fmt.Errorf("%w: max body %d exceeds the persist file's value limit %d",
			ErrConfig, cfg.MaxBody, int64(bolt.MaxValueSize))
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
		_ = h.close()
		return nil, fmt.Errorf("httpserver: listen on %s: %w", cfg.Addr, err)
	}
	s := &Server{
		log: log,
		h:   h,
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
		zap.Int("keys", h.keys()), zap.Int64("max_body", cfg.MaxBody))
	return s, nil
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
// then drops the remaining connections, then closes the persist file after
// the write in progress, if any. It is idempotent.
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
		if err := s.h.close(); err != nil && s.closeErr == nil {
			s.closeErr = fmt.Errorf("httpserver: %w", err)
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
