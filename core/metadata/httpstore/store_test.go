package httpstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/metadata/httpserver"
)

func newStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	s, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// startMetadataServer runs our httpserver and returns its conn string.
func startMetadataServer(t *testing.T) string {
	t.Helper()
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0", Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, srv.Close(context.Background())) })
	return "http://" + srv.Addr() + httpserver.Path
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEscapeKey(t *testing.T) {
	tests := []struct {
		name, key, want string
	}{
		{"segment key", "mooncake/ram/1.2.3.4:5", "mooncake%2Fram%2F1.2.3.4%3A5"},
		{"rpc meta", "mooncake/rpc_meta/host-a_b~c", "mooncake%2Frpc_meta%2Fhost-a_b~c"},
		{"unreserved kept", "AZaz09-._~", "AZaz09-._~"},
		{"space and plus", "a b+c", "a%20b%2Bc"},
		{"query chars", "?&=#%", "%3F%26%3D%23%25"},
		{"bytes", "\x00\x7f\x80\xff", "%00%7F%80%FF"},
		{"utf8", "é", "%C3%A9"},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, escapeKey(tc.key))
		})
	}
}

func FuzzEscapeKey(f *testing.F) {
	for _, seed := range []string{"mooncake/ram/1.2.3.4:5", "a b+c", "\x00\xff", "é", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, key string) {
		esc := escapeKey(key)
		for i := 0; i < len(esc); i++ {
			c := esc[i]
			if c == '%' {
				if i+2 >= len(esc) || !strings.ContainsRune("0123456789ABCDEF", rune(esc[i+1])) ||
					!strings.ContainsRune("0123456789ABCDEF", rune(esc[i+2])) {
					t.Fatalf("bad escape at %d in %q", i, esc)
				}
				i += 2
				continue
			}
			if !unreserved(c) {
				t.Fatalf("reserved byte %q left in %q", c, esc)
			}
		}
		back, err := url.QueryUnescape(esc)
		if err != nil || back != key {
			t.Fatalf("round trip %q -> %q -> %q (%v)", key, esc, back, err)
		}
	})
}

func TestAgainstServer(t *testing.T) {
	testutil.ResourceCheck(t)
	s := newStore(t, Config{URL: startMetadataServer(t)})
	ctx := ctxT(t)
	tests := []struct {
		name  string
		key   string
		value []byte
	}{
		{"segment", "mooncake/ram/1.2.3.4:5", []byte(`{"name":"1.2.3.4:5","protocol":"tcp"}`)},
		{"cluster prefix", "mooncake/c1/ram/host:1", []byte(`{}`)},
		{"odd key", "mooncake/ a+b?c&key=d#e%", []byte("x")},
		{"binary value", "mooncake/bin", []byte{0, 0xff, '\n', 0x80}},
		{"empty value", "mooncake/empty", []byte{}},
		{"one MiB", "mooncake/big", bytes.Repeat([]byte("0123456789abcdef"), 1<<16)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, s.Put(ctx, tc.key, tc.value))
			got, err := s.Get(ctx, tc.key)
			require.NoError(t, err)
			require.True(t, bytes.Equal(tc.value, got), "value changed")
			require.NoError(t, s.Delete(ctx, tc.key))
			_, err = s.Get(ctx, tc.key)
			require.ErrorIs(t, err, metadata.ErrNotFound)
			require.NoError(t, s.Delete(ctx, tc.key), "deleting a missing key is not an error")
		})
	}

	t.Run("duplicate rpc_meta", func(t *testing.T) {
		key := "mooncake/rpc_meta/host:1"
		require.NoError(t, s.Put(ctx, key, []byte(`{"rpc_port":1}`)))
		err := s.Put(ctx, key, []byte(`{"rpc_port":2}`))
		var se *StatusError
		require.ErrorAs(t, err, &se)
		require.Equal(t, http.StatusBadRequest, se.Code)
		require.Equal(t, http.MethodPut, se.Method)
		require.Equal(t, key, se.Key)
		require.Equal(t, "Duplicate rpc_meta key not allowed", se.Body)
		require.NotErrorIs(t, err, metadata.ErrNotFound)
		require.NoError(t, s.Delete(ctx, key))
	})

	t.Run("missing key", func(t *testing.T) {
		got, err := s.Get(ctx, "mooncake/ram/nobody")
		require.Nil(t, got)
		require.ErrorIs(t, err, metadata.ErrNotFound)
	})
}

func TestConcurrent(t *testing.T) {
	testutil.ResourceCheck(t)
	s := newStore(t, Config{URL: startMetadataServer(t)})
	ctx := ctxT(t)
	const workers, rounds = 32, 10
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				key := fmt.Sprintf("mooncake/ram/w%d", w)
				for i := 0; i < rounds; i++ {
					v := []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
					if err := s.Put(ctx, key, v); err != nil {
						return err
					}
					if err := s.Put(ctx, "mooncake/shared", v); err != nil {
						return err
					}
					got, err := s.Get(ctx, key)
					if err != nil {
						return err
					}
					if !bytes.Equal(got, v) {
						return fmt.Errorf("worker %d read %q, want %q", w, got, v)
					}
					if _, err := s.Get(ctx, "mooncake/shared"); err != nil {
						return err
					}
				}
				return s.Delete(ctx, key)
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// recorded is one request as a recording server saw it.
type recorded struct {
	method, rawQuery, contentType string
	body                          []byte
}

// recordingServer answers every request with handle and records it.
func recordingServer(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, func() []recorded) {
	var mu sync.Mutex
	var reqs []recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, recorded{r.Method, r.URL.RawQuery, r.Header.Get("Content-Type"), body})
		mu.Unlock()
		handle(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []recorded {
		mu.Lock()
		defer mu.Unlock()
		return append([]recorded(nil), reqs...)
	}
}

func TestWireFormat(t *testing.T) {
	testutil.ResourceCheck(t)
	srv, requests := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"v":1}`)
	})
	s := newStore(t, Config{URL: srv.URL + "/metadata"})
	ctx := ctxT(t)
	key := "mooncake/ram/1.2.3.4:5"
	require.NoError(t, s.Put(ctx, key, []byte(`{"a":1}`)))
	got, err := s.Get(ctx, key)
	require.NoError(t, err)
	require.Equal(t, `{"v":1}`, string(got))
	require.NoError(t, s.Delete(ctx, key))
	require.NoError(t, s.Put(ctx, "a b", nil))

	want := []recorded{
		{http.MethodPut, "key=mooncake%2Fram%2F1.2.3.4%3A5", "application/json", []byte(`{"a":1}`)},
		{http.MethodGet, "key=mooncake%2Fram%2F1.2.3.4%3A5", "", []byte{}},
		{http.MethodDelete, "key=mooncake%2Fram%2F1.2.3.4%3A5", "", []byte{}},
		{http.MethodPut, "key=a%20b", "application/json", []byte{}},
	}
	require.Equal(t, want, requests())
}

func TestConnectionReuse(t *testing.T) {
	testutil.ResourceCheck(t)
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			http.Error(w, "metadata not found", http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, "metadata updated")
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s := newStore(t, Config{URL: srv.URL + "/metadata"})
	ctx := ctxT(t)
	for i := 0; i < 20; i++ {
		require.NoError(t, s.Put(ctx, "k", []byte("v")))
		_, err := s.Get(ctx, "k")
		require.ErrorIs(t, err, metadata.ErrNotFound)
	}
	require.EqualValues(t, 1, conns.Load(), "connections were not reused")
}

func TestStatuses(t *testing.T) {
	testutil.ResourceCheck(t)
	long := strings.Repeat("e", 10000)
	tests := []struct {
		name     string
		status   int
		body     string
		method   string
		wantCode int // 0: success
		notFound bool
	}{
		{"get 200", 200, "v", http.MethodGet, 0, false},
		{"get 404", 404, "metadata not found", http.MethodGet, 404, true},
		{"get 500 long body", 500, long, http.MethodGet, 500, false},
		{"get 201 is not success", 201, "v", http.MethodGet, 201, false},
		{"get 204 is not success", 204, "", http.MethodGet, 204, false},
		{"redirect not followed", 302, "", http.MethodGet, 302, false},
		{"put 404 is not ErrNotFound", 404, "nope", http.MethodPut, 404, false},
		{"put 405", 405, "Method not allowed", http.MethodPut, 405, false},
		{"delete 404 is success", 404, "metadata not found", http.MethodDelete, 0, false},
		{"delete 500", 500, "boom", http.MethodDelete, 500, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.status == 302 {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			s := newStore(t, Config{URL: srv.URL + "/metadata"})
			var err error
			switch tc.method {
			case http.MethodGet:
				var v []byte
				v, err = s.Get(ctxT(t), "k")
				if err != nil {
					require.Nil(t, v)
				}
			case http.MethodPut:
				err = s.Put(ctxT(t), "k", []byte("v"))
			case http.MethodDelete:
				err = s.Delete(ctxT(t), "k")
			}
			if tc.wantCode == 0 {
				require.NoError(t, err)
				return
			}
			var se *StatusError
			require.ErrorAs(t, err, &se)
			require.Equal(t, tc.wantCode, se.Code)
			require.LessOrEqual(t, len(se.Body), snippetLen)
			require.True(t, strings.HasPrefix(tc.body, se.Body))
			require.Equal(t, tc.notFound, errors.Is(err, metadata.ErrNotFound))
		})
	}
}

func TestResponseTooLarge(t *testing.T) {
	testutil.ResourceCheck(t)
	tests := []struct {
		name    string
		chunked bool
	}{
		{"content length", false},
		{"chunked", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
				if !tc.chunked {
					w.Header().Set("Content-Length", "1000")
				}
				_, _ = w.Write(bytes.Repeat([]byte("x"), 1000))
			})
			s := newStore(t, Config{URL: srv.URL + "/metadata", MaxResponse: 100})
			v, err := s.Get(ctxT(t), "k")
			require.Nil(t, v)
			require.ErrorIs(t, err, ErrTooLarge)
		})
	}
	srv, _ := recordingServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("x"), 100))
	})
	s := newStore(t, Config{URL: srv.URL + "/metadata", MaxResponse: 100})
	v, err := s.Get(ctxT(t), "k")
	require.NoError(t, err)
	require.Len(t, v, 100)
}

// silentServer accepts connections and never answers.
func silentServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func TestUnreachable(t *testing.T) {
	testutil.ResourceCheck(t)
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		return ln.Addr().String()
	}()
	tests := []struct {
		name    string
		addr    string
		timeout bool
	}{
		{"connection refused", closed, false},
		{"server never answers", silentServer(t), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, Config{URL: "http://" + tc.addr + "/metadata", Timeout: 300 * time.Millisecond})
			start := time.Now()
			_, err := s.Get(context.Background(), "k")
			require.Error(t, err)
			require.Less(t, time.Since(start), 2*time.Second)
			if tc.timeout {
				require.ErrorIs(t, err, context.DeadlineExceeded)
			}
			require.Error(t, s.Put(context.Background(), "k", []byte("v")))
		})
	}
}

func TestContextHonoured(t *testing.T) {
	testutil.ResourceCheck(t)
	s := newStore(t, Config{URL: "http://" + silentServer(t) + "/metadata"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Get(ctx, "k")
	require.ErrorIs(t, err, context.Canceled)

	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.Put(ctx, "k", []byte("v"))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), time.Second, "the caller's shorter deadline wins over Timeout")
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"empty", Config{}},
		{"no scheme", Config{URL: "127.0.0.1:8080/metadata"}},
		{"etcd scheme", Config{URL: "etcd://127.0.0.1:2379"}},
		{"no host", Config{URL: "http:///metadata"}},
		{"query", Config{URL: "http://h:1/metadata?x=1"}},
		{"fragment", Config{URL: "http://h:1/metadata#x"}},
		{"negative timeout", Config{URL: "http://h:1/metadata", Timeout: -1}},
		{"negative connect timeout", Config{URL: "http://h:1/metadata", ConnectTimeout: -1}},
		{"negative max response", Config{URL: "http://h:1/metadata", MaxResponse: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			require.Nil(t, s)
			require.ErrorIs(t, err, ErrConfig)
		})
	}
}

func TestClosed(t *testing.T) {
	testutil.ResourceCheck(t)
	s, err := New(Config{URL: startMetadataServer(t)})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	_, err = s.Get(ctxT(t), "k")
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, s.Put(ctxT(t), "k", nil), ErrClosed)
	require.ErrorIs(t, s.Delete(ctxT(t), "k"), ErrClosed)
}
