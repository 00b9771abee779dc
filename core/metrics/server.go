package metrics

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Server serves a Set over HTTP: /metrics in Prometheus's text format
// (the Set's own registry, nothing process-wide), /metrics/json as its
// Snapshot. It owns its goroutine; Close stops it.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Serve serves s on ln until Close; the Server takes ln over.
func Serve(ln net.Listener, s *Set, log *zap.Logger) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.Registry(), promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      promLogger{log},
	}))
	mux.HandleFunc("/metrics/json", func(w http.ResponseWriter, _ *http.Request) {
		b, err := json.Marshal(s.Snapshot())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	sv := &Server{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       time.Minute,
			ErrorLog:          zap.NewStdLog(log),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(sv.done)
		if err := sv.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics endpoint stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
		}
	}()
	return sv
}

// Addr is the address the endpoint listens on.
func (sv *Server) Addr() string { return sv.ln.Addr().String() }

// Close stops the endpoint: the listener and every connection are closed
// at once, and Close returns once its goroutine has ended. It is
// idempotent.
func (sv *Server) Close() error {
	err := sv.srv.Close()
	<-sv.done
	if err != nil {
		return fmt.Errorf("close metrics endpoint %s: %w", sv.Addr(), err)
	}
	return nil
}

// promLogger is promhttp's error log over zap.
type promLogger struct{ log *zap.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn("metrics endpoint: " + fmt.Sprint(v...)) }
