package httpstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// Defaults applied by New to zero Config fields; the timeouts are Mooncake's.
const (
	DefaultConnectTimeout = 1500 * time.Millisecond
	DefaultTimeout        = 3000 * time.Millisecond
	DefaultMaxResponse    = 64 << 20
)

const (
	// snippetLen bounds the body quoted in a StatusError.
	snippetLen = 256
	// drainLimit bounds what is read of an unwanted body so the connection
	// can be reused; a longer body costs the connection instead.
	drainLimit = 64 << 10
	// tcpKeepAlive is the TCP keep-alive period (curl sets TCP_KEEPALIVE).
	tcpKeepAlive = 30 * time.Second
	// maxIdleConns bounds the idle connections kept for reuse.
	maxIdleConns    = 8
	idleConnTimeout = 90 * time.Second
)

// Config configures a Store. Zero fields mean the documented default.
type Config struct {
	// URL is the full connection string, e.g. "http://host:8080/metadata";
	// "?key=<escaped key>" is appended to it. http and https are accepted.
	URL string
	// ConnectTimeout bounds each TCP connect and TLS handshake (1500 ms).
	ConnectTimeout time.Duration
	// Timeout bounds each request, body included (3000 ms).
	Timeout time.Duration
	// MaxResponse bounds the body of a GET answer in bytes (64 MiB).
	MaxResponse int64
	// Logger receives the Store's logs; nil means none.
	Logger *zap.Logger
}

// Store is a metadata.Store speaking Mooncake's HTTP metadata protocol. It
// is safe for concurrent use.
type Store struct {
	cfg    Config
	log    *zap.Logger
	tr     *http.Transport
	client *http.Client
	closed atomic.Bool
}

var _ metadata.Store = (*Store)(nil)

// New checks cfg and prepares the client; it makes no request.
func New(cfg Config) (*Store, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: url %q: %w", ErrConfig, cfg.URL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: url %q: want http://host[:port]/path or https://...", ErrConfig, cfg.URL)
	}
	if u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(cfg.URL, "?#") {
		return nil, fmt.Errorf("%w: url %q: must not have a query or fragment (\"?key=\" is appended)", ErrConfig, cfg.URL)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"connect timeout", &cfg.ConnectTimeout, DefaultConnectTimeout},
		{"timeout", &cfg.Timeout, DefaultTimeout},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("%w: negative %s %v", ErrConfig, d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.MaxResponse < 0 {
		return nil, fmt.Errorf("%w: negative max response %d", ErrConfig, cfg.MaxResponse)
	}
	if cfg.MaxResponse == 0 {
		cfg.MaxResponse = DefaultMaxResponse
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment, // as libcurl
		DialContext:           (&net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: tcpKeepAlive}).DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConns:          maxIdleConns,
		MaxIdleConnsPerHost:   maxIdleConns,
		IdleConnTimeout:       idleConnTimeout,
	}
	s := &Store{
		cfg: cfg,
		log: cfg.Logger.Named("httpstore"),
		tr:  tr,
		client: &http.Client{
			Transport: tr,
			// libcurl does not follow redirects unless told to: a 3xx is
			// an answer other than 200, hence a failure.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	s.log.Info("http metadata store", zap.String("url", cfg.URL),
		zap.Duration("connect_timeout", cfg.ConnectTimeout), zap.Duration("timeout", cfg.Timeout))
	return s, nil
}

// Get returns the value stored under key, or an error matching
// metadata.ErrNotFound on HTTP 404.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	return s.do(ctx, http.MethodGet, key, nil)
}

// Put stores value under key. Mooncake's servers answer 400 to a PUT of an
// existing rpc_meta key; that is a *StatusError.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	_, err := s.do(ctx, http.MethodPut, key, value)
	return err
}

// Delete removes key. A 404 (no such key) is success.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.do(ctx, http.MethodDelete, key, nil)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return nil
	}
	return err
}

// Close drops idle connections; later calls fail with ErrClosed. Requests
// in flight finish within their timeout. It is idempotent.
func (s *Store) Close() error {
	s.closed.Store(true)
	s.tr.CloseIdleConnections()
	return nil
}

// do sends one request. It returns the body of a 200 answer to GET, a
// *StatusError for any other status, or the transport's error.
func (s *Store) do(ctx context.Context, method, key string, body []byte) ([]byte, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("httpstore: %s %q: %w", method, key, ErrClosed)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.cfg.URL+"?key="+escapeKey(key), rd)
	if err != nil {
		return nil, fmt.Errorf("httpstore: %s %q: build request: %w", method, key, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("httpstore: %s %q: %w", method, key, err)
	}
	defer func() {
		// Drain a little so the connection can be reused, then close.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainLimit))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, snippetLen))
		return nil, &StatusError{Method: method, Key: key, Code: resp.StatusCode, Body: string(snippet)}
	}
	if method != http.MethodGet {
		return nil, nil
	}
	if resp.ContentLength > s.cfg.MaxResponse {
		return nil, fmt.Errorf("httpstore: get %q: %d bytes: %w", key, resp.ContentLength, ErrTooLarge)
	}
	value, err := io.ReadAll(io.LimitReader(resp.Body, s.cfg.MaxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("httpstore: get %q: read body: %w", key, err)
	}
	if int64(len(value)) > s.cfg.MaxResponse {
		return nil, fmt.Errorf("httpstore: get %q: over %d bytes: %w", key, s.cfg.MaxResponse, ErrTooLarge)
	}
	return value, nil
}

// escapeKey percent-encodes key as curl_easy_escape does: every byte but
// A-Z a-z 0-9 - . _ ~ becomes %XX with upper-case hex. (url.QueryEscape
// differs: it turns a space into '+'.)
func escapeKey(key string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(key) * 3)
	for i := 0; i < len(key); i++ {
		c := key[i]
		if unreserved(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

func unreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
