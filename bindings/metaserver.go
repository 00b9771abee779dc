package bindings

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core"
	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/metadata/httpserver"
)

// metaShutdownTimeout bounds the graceful shutdown after Stop.
const metaShutdownTimeout = 5 * time.Second

// MetadataServer is pymooncake's HTTP metadata server (the CLI's
// `pymooncake metadata-server`), a drop-in for Mooncake's
// mooncake_http_metadata_server.
type MetadataServer struct {
	srv      *httpserver.Server
	log      *zap.Logger
	stop     chan struct{}
	stopOnce sync.Once
}

// NewMetadataServer binds addr ("host:port"; port 0 picks one) and starts
// serving. With persistFile the store is loaded from and saved to it.
// environ is as in NewEngine; only MC_LOG_LEVEL is read from it.
func NewMetadataServer(addr, persistFile, environ string) (_ *MetadataServer, err error) {
	const op = "metadata_server"
	defer recoverInto(op, nil, &err)
	lookup, err := environLookup(environ)
	if err != nil {
		return nil, fail(op, err)
	}
	level := config.Defaults().LogLevel
	if v, ok := lookup("MC_LOG_LEVEL"); ok {
		if level, err = config.ParseLogLevel(v); err != nil {
			return nil, invalid(op, "MC_LOG_LEVEL=%q: %v", v, err)
		}
	}
	log := core.NewLogger(level)
	srv, err := httpserver.New(httpserver.Config{Addr: addr, PersistFile: persistFile, Logger: log})
	if err != nil {
		return nil, fail(op, err)
	}
	return &MetadataServer{srv: srv, log: log, stop: make(chan struct{})}, nil
}

// Addr is the bound address, e.g. "127.0.0.1:8080".
func (m *MetadataServer) Addr() (addr string, err error) {
	defer recoverInto("metadata_server", m.log, &err)
	return m.srv.Addr(), nil
}

// Wait blocks until Stop is called, then shuts the server down gracefully.
// Python calls it from a thread other than the main one, so that the main
// thread can take SIGINT and SIGTERM and call Stop.
func (m *MetadataServer) Wait() (rc int, err error) {
	const op = "metadata_server"
	defer recoverInto(op, m.log, &err)
	if m.srv == nil || m.stop == nil {
		return 0, invalid(op, "metadata server was not created by NewMetadataServer")
	}
	<-m.stop
	ctx, cancel := context.WithTimeout(context.Background(), metaShutdownTimeout)
	defer cancel()
	cerr := m.srv.Close(ctx)
	m.log.Sync() //nolint:errcheck // best effort on stderr
	if cerr != nil {
		return 0, fail(op, cerr)
	}
	return 0, nil
}

// Stop makes Wait return. It is idempotent.
func (m *MetadataServer) Stop() (rc int, err error) {
	defer recoverInto("metadata_server", m.log, &err)
	m.stopOnce.Do(func() { close(m.stop) })
	return 0, nil
}
