package httpserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	s, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close(context.Background())) })
	return s
}

// testClient is an HTTP client whose connections are closed at cleanup.
func testClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// do sends one request and returns the status and body.
func do(t *testing.T, c *http.Client, method, rawURL string, body []byte) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, rawURL, rd)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func keyURL(s *Server, key string) string {
	return "http://" + s.Addr() + Path + "?key=" + url.QueryEscape(key)
}

func TestStatusCodes(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, Config{MaxBody: 1024})
	c := testClient(t)
	base := "http://" + s.Addr()
	seg := base + "/metadata?key=mooncake%2Fram%2F1.2.3.4%3A5"
	rpc := base + "/metadata?key=mooncake%2Frpc_meta%2Fhost%3A1"
	// Steps run in order: the store's state carries over.
	steps := []struct {
		name     string
		method   string
		url      string
		body     []byte
		wantCode int
		wantBody string
	}{
		{"get missing", http.MethodGet, seg, nil, 404, msgNotFound},
		{"delete missing", http.MethodDelete, seg, nil, 404, msgNotFound},
		{"put", http.MethodPut, seg, []byte(`{"a":1}`), 200, msgUpdated},
		{"get", http.MethodGet, seg, nil, 200, `{"a":1}`},
		{"overwrite segment", http.MethodPut, seg, []byte("\x00\xff raw"), 200, msgUpdated},
		{"get raw bytes", http.MethodGet, seg, nil, 200, "\x00\xff raw"},
		{"put rpc_meta", http.MethodPut, rpc, []byte(`{"rpc_port":1}`), 200, msgUpdated},
		{"duplicate rpc_meta", http.MethodPut, rpc, []byte(`{"rpc_port":2}`), 400, msgDuplicate},
		{"duplicate rpc_meta same body", http.MethodPut, rpc, []byte(`{"rpc_port":1}`), 400, msgDuplicate},
		{"rpc_meta unchanged", http.MethodGet, rpc, nil, 200, `{"rpc_port":1}`},
		{"delete rpc_meta", http.MethodDelete, rpc, nil, 200, msgDeleted},
		{"rpc_meta again after delete", http.MethodPut, rpc, []byte(`{"rpc_port":3}`), 200, msgUpdated},
		{"post", http.MethodPost, seg, []byte("x"), 405, msgMethod},
		{"head", http.MethodHead, seg, nil, 405, ""},
		{"patch", http.MethodPatch, seg, nil, 405, msgMethod},
		{"empty key", http.MethodGet, base + "/metadata?key=", nil, 400, msgNoKey},
		{"blank key", http.MethodPut, base + "/metadata?key=%20%09%0A", []byte("x"), 400, msgNoKey},
		{"no key", http.MethodGet, base + "/metadata", nil, 400, msgNoKey},
		{"key is stripped", http.MethodGet, base + "/metadata?key=%20mooncake%2Fram%2F1.2.3.4%3A5%0A", nil, 200, "\x00\xff raw"},
		{"empty body", http.MethodPut, base + "/metadata?key=e", nil, 200, msgUpdated},
		{"get empty body", http.MethodGet, base + "/metadata?key=e", nil, 200, ""},
		{"body at limit", http.MethodPut, base + "/metadata?key=big", bytes.Repeat([]byte("b"), 1024), 200, msgUpdated},
		{"body over limit", http.MethodPut, base + "/metadata?key=big", bytes.Repeat([]byte("c"), 1025), 413, msgTooLarge},
		{"over-limit put left value", http.MethodGet, base + "/metadata?key=big", nil, 200, strings.Repeat("b", 1024)},
		{"other path", http.MethodGet, base + "/other?key=a", nil, 404, "404 page not found"},
		{"sub path", http.MethodGet, base + "/metadata/x?key=a", nil, 404, "404 page not found"},
		{"delete", http.MethodDelete, seg, nil, 200, msgDeleted},
		{"get deleted", http.MethodGet, seg, nil, 404, msgNotFound},
	}
	for _, st := range steps {
		code, body := do(t, c, st.method, st.url, st.body)
		require.Equal(t, st.wantCode, code, st.name)
		require.Equal(t, st.wantBody, string(body), st.name)
	}
}

func TestBodyOverLimitWithoutContentLength(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, Config{MaxBody: 16})
	c := testClient(t)
	// A reader of unknown length makes the client send chunked encoding.
	body := io.MultiReader(strings.NewReader(strings.Repeat("x", 10)), strings.NewReader(strings.Repeat("y", 10)))
	req, err := http.NewRequest(http.MethodPut, keyURL(s, "k"), body)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	code, _ := do(t, c, http.MethodGet, keyURL(s, "k"), nil)
	require.Equal(t, http.StatusNotFound, code)
}

func TestConcurrentClients(t *testing.T) {
	testutil.ResourceCheck(t)
	s := startServer(t, Config{})
	c := testClient(t)
	const workers, rounds = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- worker(c, s, w, rounds)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	// The shared key holds one of the written values, intact.
	code, body := do(t, c, http.MethodGet, keyURL(s, "mooncake/shared"), nil)
	require.Equal(t, 200, code)
	require.Regexp(t, `^value-\d+-\d+-[x]{1000}$`, string(body))
}

// worker puts and reads back its own key and races on a shared one.
func worker(c *http.Client, s *Server, w, rounds int) error {
	call := func(method, key string, body []byte) (int, []byte, error) {
		req, err := http.NewRequest(method, keyURL(s, key), bytes.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	own := fmt.Sprintf("mooncake/ram/worker-%d", w)
	for i := 0; i < rounds; i++ {
		value := []byte(fmt.Sprintf("value-%d-%d-%s", w, i, strings.Repeat("x", 1000)))
		for _, key := range []string{own, "mooncake/shared"} {
			if code, _, err := call(http.MethodPut, key, value); err != nil || code != 200 {
				return fmt.Errorf("worker %d put %s: %d %v", w, key, code, err)
			}
		}
		code, got, err := call(http.MethodGet, own, nil)
		if err != nil || code != 200 || !bytes.Equal(got, value) {
			return fmt.Errorf("worker %d get own: %d %v %.40q", w, code, err, got)
		}
		if code, _, err := call(http.MethodGet, "mooncake/shared", nil); err != nil || code != 200 {
			return fmt.Errorf("worker %d get shared: %d %v", w, code, err)
		}
	}
	if code, _, err := call(http.MethodDelete, own, nil); err != nil || code != 200 {
		return fmt.Errorf("worker %d delete: %d %v", w, code, err)
	}
	return nil
}

func TestPersistAcrossRestart(t *testing.T) {
	testutil.ResourceCheck(t)
	file := filepath.Join(t.TempDir(), "meta.json")
	c := testClient(t)
	values := map[string][]byte{
		"mooncake/ram/1.2.3.4:5":  []byte(`{"name":"1.2.3.4:5"}`),
		"mooncake/rpc_meta/h:1":   []byte(`{"rpc_port":1}`),
		"odd \xff\x00 key":        {0, 1, 2, 0xff},
		"mooncake/empty":          {},
		"mooncake/ram/deleted:42": []byte("gone"),
	}
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	for k, v := range values {
		code, _ := do(t, c, http.MethodPut, keyURL(s, k), v)
		require.Equal(t, 200, code, k)
	}
	code, _ := do(t, c, http.MethodDelete, keyURL(s, "mooncake/ram/deleted:42"), nil)
	require.Equal(t, 200, code)
	delete(values, "mooncake/ram/deleted:42")
	require.NoError(t, s.Close(context.Background()))
	c.CloseIdleConnections()

	// No temporary files are left behind.
	entries, err := os.ReadDir(filepath.Dir(file))
	require.NoError(t, err)
	require.Len(t, entries, 1)

	s2 := startServer(t, Config{PersistFile: file})
	for k, v := range values {
		code, body := do(t, c, http.MethodGet, keyURL(s2, k), nil)
		require.Equal(t, 200, code, k)
		require.Equal(t, v, body, k)
	}
	code, _ = do(t, c, http.MethodGet, keyURL(s2, "mooncake/ram/deleted:42"), nil)
	require.Equal(t, 404, code)
	// The duplicate rule holds for persisted rpc_meta keys too.
	code, body := do(t, c, http.MethodPut, keyURL(s2, "mooncake/rpc_meta/h:1"), []byte("x"))
	require.Equal(t, 400, code)
	require.Equal(t, msgDuplicate, string(body))
}

func TestPersistFailureChangesNothing(t *testing.T) {
	testutil.ResourceCheck(t)
	file := filepath.Join(t.TempDir(), "meta.db")
	var failing atomic.Bool
	errDisk := errors.New("injected disk failure")
	hook := func() error {
		if failing.Load() {
			return errDisk
		}
		return nil
	}
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, beforeCommit: hook, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	c := testClient(t)
	code, _ := do(t, c, http.MethodPut, keyURL(s, "kept"), []byte("v"))
	require.Equal(t, 200, code)
	failing.Store(true)

	code, body := do(t, c, http.MethodPut, keyURL(s, "new"), []byte("v"))
	require.Equal(t, 500, code)
	require.Equal(t, msgPersist, string(body))
	code, _ = do(t, c, http.MethodGet, keyURL(s, "new"), nil)
	require.Equal(t, 404, code, "failed put must not be applied")

	// After a failed commit the file's state is unknown: every later
	// change is refused, even once the disk works again.
	failing.Store(false)
	code, _ = do(t, c, http.MethodPut, keyURL(s, "kept"), []byte("changed"))
	require.Equal(t, 500, code)
	code, _ = do(t, c, http.MethodDelete, keyURL(s, "kept"), nil)
	require.Equal(t, 500, code)
	code, body = do(t, c, http.MethodGet, keyURL(s, "kept"), nil)
	require.Equal(t, 200, code, "failed delete must not be applied")
	require.Equal(t, "v", string(body), "failed overwrite must not be applied")
	// Answers that change nothing are still given.
	code, body = do(t, c, http.MethodDelete, keyURL(s, "missing"), nil)
	require.Equal(t, 404, code)
	require.Equal(t, msgNotFound, string(body))
	require.NoError(t, s.Close(context.Background()))
	c.CloseIdleConnections()

	// A restart reopens the file at its last commit.
	s = startServer(t, Config{PersistFile: file})
	code, body = do(t, c, http.MethodGet, keyURL(s, "kept"), nil)
	require.Equal(t, 200, code)
	require.Equal(t, "v", string(body))
	code, _ = do(t, c, http.MethodGet, keyURL(s, "new"), nil)
	require.Equal(t, 404, code)
	code, _ = do(t, c, http.MethodPut, keyURL(s, "new"), []byte("v"))
	require.Equal(t, 200, code)
}

func TestNewErrors(t *testing.T) {
	testutil.ResourceCheck(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	held := filepath.Join(dir, "held.db")
	startServer(t, Config{PersistFile: held})
	tests := []struct {
		name    string
		cfg     Config
		wantErr error
	}{
		{"corrupt persist file", Config{PersistFile: write("bad.json", "{not json")}, ErrPersistFile},
		{"wrong version", Config{PersistFile: write("v2.json", `{"version":2,"entries":[]}`)}, ErrPersistFile},
		{"empty key in file", Config{PersistFile: write("empty.json", `{"version":1,"entries":[{"key":"","value":"eA=="}]}`)}, ErrPersistFile},
		{"persist path is a directory", Config{PersistFile: dir}, ErrPersistFile},
		{"neither JSON nor bbolt", Config{PersistFile: write("junk.db", "\x00\x01 not a database"+strings.Repeat("x", 8192))}, ErrPersistFile},
		{"bbolt file of another program", Config{PersistFile: boltFile(t, dir, "other.db", "other", "")}, ErrPersistFile},
		{"unknown layout", Config{PersistFile: boltFile(t, dir, "layout.db", string(bucketInfo), "99")}, ErrPersistFile},
		{"file in use by a running server", Config{PersistFile: held}, ErrPersistFile},
		{"negative max body", Config{MaxBody: -1}, ErrConfig},
		{"max body over the store's value limit", Config{PersistFile: filepath.Join(dir, "big.db"), MaxBody: 4 << 30}, ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Addr = "127.0.0.1:0"
			before, _ := os.ReadFile(tc.cfg.PersistFile)
			s, err := New(tc.cfg)
			require.Nil(t, s)
			require.ErrorIs(t, err, tc.wantErr)
			after, _ := os.ReadFile(tc.cfg.PersistFile)
			require.Equal(t, before, after, "a refused file is left unchanged")
		})
	}
	s, err := New(Config{Addr: busy.Addr().String()})
	require.Nil(t, s)
	require.ErrorContains(t, err, "address already in use")
	// A failed listen releases the persist file it opened.
	s, err = New(Config{Addr: busy.Addr().String(), PersistFile: filepath.Join(dir, "listen.db")})
	require.Nil(t, s)
	require.ErrorContains(t, err, "address already in use")
	startServer(t, Config{PersistFile: filepath.Join(dir, "listen.db")})
}

// boltFile makes a bbolt file at dir/name holding one bucket; with value,
// the bucket holds keyLayout -> value.
func boltFile(t *testing.T, dir, name, bucket, value string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	db, err := bolt.Open(p, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte(bucket))
		if err != nil || value == "" {
			return err
		}
		return b.Put(keyLayout, []byte(value))
	}))
	require.NoError(t, db.Close())
	return p
}

func TestRun(t *testing.T) {
	testutil.ResourceCheck(t)
	port := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		return ln.Addr().String()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, Config{Addr: port, Logger: zaptest.NewLogger(t)}) }()
	c := testClient(t)
	// Run binds asynchronously: poll until it answers.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Get("http://" + port + Path + "?key=a")
		if err == nil {
			resp.Body.Close()
			require.Equal(t, 404, resp.StatusCode)
			break
		}
		require.True(t, time.Now().Before(deadline), "server did not come up: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	_, err := c.Get("http://" + port + Path + "?key=a")
	require.Error(t, err, "server still answering after Run returned")
}

func TestCloseIdempotent(t *testing.T) {
	testutil.ResourceCheck(t)
	s, err := New(Config{Addr: "127.0.0.1:0"})
	require.NoError(t, err)
	require.NoError(t, s.Close(context.Background()))
	require.NoError(t, s.Close(context.Background()))
}
