package httpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// writeJSONFile writes data at path in the JSON format (version 1) that
// pymooncake used before the bbolt store.
func writeJSONFile(t testing.TB, path string, data map[string][]byte) {
	t.Helper()
	snap := snapshot{Version: snapshotVersion}
	for k, v := range data {
		snap.Entries = append(snap.Entries, entry{Key: []byte(k), Value: v})
	}
	b, err := json.Marshal(snap)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

// requireStore checks that the server at s holds exactly want, by GET.
func requireStore(t *testing.T, c *http.Client, s *Server, want map[string][]byte) {
	t.Helper()
	require.Equal(t, len(want), s.h.keys())
	for k, v := range want {
		code, body := do(t, c, http.MethodGet, keyURL(s, k), nil)
		require.Equal(t, 200, code, "%.40q", k)
		require.True(t, bytes.Equal(v, body), "%.40q: got %d bytes, want %d", k, len(body), len(v))
	}
}

func TestMigrateJSONFile(t *testing.T) {
	testutil.ResourceCheck(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "meta.json")
	data := map[string][]byte{
		"mooncake/ram/1.2.3.4:5": []byte(`{"name":"1.2.3.4:5"}`),
		"mooncake/rpc_meta/h:1":  []byte(`{"rpc_port":1}`),
		"odd \xff\x00 key":       {0, 1, 2, 0xff},
		"mooncake/empty":         {},
		"mooncake/large":         bytes.Repeat([]byte("L"), largeValue+1),
	}
	writeJSONFile(t, file, data)
	// A migration that a crash interrupted left its temporary file behind.
	require.NoError(t, os.WriteFile(file+migrateSuffix, []byte("partial"), 0o600))

	c := testClient(t)
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	requireStore(t, c, s, data)
	code, _ := do(t, c, http.MethodPut, keyURL(s, "mooncake/rpc_meta/h:1"), []byte("x"))
	require.Equal(t, 400, code, "migrated rpc_meta keys keep the duplicate rule")
	code, _ = do(t, c, http.MethodPut, keyURL(s, "mooncake/after"), []byte("a"))
	require.Equal(t, 200, code)
	data["mooncake/after"] = []byte("a")
	require.NoError(t, s.Close(context.Background()))
	c.CloseIdleConnections()

	kind, err := sniff(file)
	require.NoError(t, err)
	require.Equal(t, fileBolt, kind, "the file is now a store")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left")
	s = startServer(t, Config{PersistFile: file})
	requireStore(t, c, s, data)
}

func TestMigrationFailureKeepsFile(t *testing.T) {
	testutil.ResourceCheck(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "meta.json")
	// bbolt refuses keys over 32 KiB, which the JSON format could hold.
	writeJSONFile(t, file, map[string][]byte{"k": []byte("v"), string(bytes.Repeat([]byte("k"), 40000)): []byte("v")})
	before, err := os.ReadFile(file)
	require.NoError(t, err)
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, Logger: zaptest.NewLogger(t)})
	require.Nil(t, s)
	require.ErrorIs(t, err, ErrPersistFile)
	after, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, before, after)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)
}

func TestKeyLengthLimitWhenPersisting(t *testing.T) {
	testutil.ResourceCheck(t)
	c := testClient(t)
	longest := string(bytes.Repeat([]byte("k"), 32768))
	tooLong := longest + "k"
	s := startServer(t, Config{PersistFile: filepath.Join(t.TempDir(), "meta.db")})
	code, body := do(t, c, http.MethodPut, keyURL(s, tooLong), []byte("v"))
	require.Equal(t, http.StatusRequestURITooLong, code)
	require.Equal(t, msgKeyTooLong, string(body))
	code, _ = do(t, c, http.MethodGet, keyURL(s, tooLong), nil)
	require.Equal(t, 404, code)
	code, _ = do(t, c, http.MethodPut, keyURL(s, longest), []byte("v"))
	require.Equal(t, 200, code)
	// Without a file, any key is accepted, as by Mooncake's server.
	m := startServer(t, Config{})
	code, _ = do(t, c, http.MethodPut, keyURL(m, tooLong), []byte("v"))
	require.Equal(t, 200, code)
}

// blockingDisk is a beforeCommit hook that, once armed, holds the next
// commit until released.
type blockingDisk struct {
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
	commits atomic.Int64
}

func newBlockingDisk() *blockingDisk {
	return &blockingDisk{entered: make(chan struct{}, 1), release: make(chan struct{})}
}

func (d *blockingDisk) hook() error {
	d.commits.Add(1)
	if d.armed.CompareAndSwap(true, false) {
		d.entered <- struct{}{}
		<-d.release
	}
	return nil
}

func TestGetsDoNotWaitForDiskWrites(t *testing.T) {
	testutil.ResourceCheck(t)
	disk := newBlockingDisk()
	s := startServer(t, Config{PersistFile: filepath.Join(t.TempDir(), "meta.db"), beforeCommit: disk.hook})
	c := testClient(t)
	code, _ := do(t, c, http.MethodPut, keyURL(s, "k"), []byte("old"))
	require.Equal(t, 200, code)
	code, _ = do(t, c, http.MethodPut, keyURL(s, "other"), []byte("o"))
	require.Equal(t, 200, code)

	disk.armed.Store(true)
	putDone := make(chan int, 1)
	go func() {
		code, _ := do(t, c, http.MethodPut, keyURL(s, "k"), []byte("new"))
		putDone <- code
	}()
	<-disk.entered // the PUT's commit is now stuck on the disk
	// Reads answer (testClient's timeout bounds them), and see only what
	// is on disk: the value being written is not visible yet.
	code, body := do(t, c, http.MethodGet, keyURL(s, "k"), nil)
	require.Equal(t, 200, code)
	require.Equal(t, "old", string(body))
	code, body = do(t, c, http.MethodGet, keyURL(s, "other"), nil)
	require.Equal(t, 200, code)
	require.Equal(t, "o", string(body))
	code, _ = do(t, c, http.MethodGet, keyURL(s, "missing"), nil)
	require.Equal(t, 404, code)
	select {
	case code := <-putDone:
		t.Fatalf("PUT answered %d before its commit finished", code)
	default:
	}
	close(disk.release)
	require.Equal(t, 200, <-putDone)
	code, body = do(t, c, http.MethodGet, keyURL(s, "k"), nil)
	require.Equal(t, 200, code)
	require.Equal(t, "new", string(body))
}

func TestConcurrentWritesShareCommits(t *testing.T) {
	testutil.ResourceCheck(t)
	disk := newBlockingDisk()
	s := startServer(t, Config{PersistFile: filepath.Join(t.TempDir(), "meta.db"), beforeCommit: disk.hook})
	c := testClient(t)
	disk.armed.Store(true)
	const writers = 16
	codes := make(chan int, writers+1)
	go func() {
		code, _ := do(t, c, http.MethodPut, keyURL(s, "first"), []byte("v"))
		codes <- code
	}()
	<-disk.entered
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := do(t, c, http.MethodPut, keyURL(s, fmt.Sprintf("k%d", i)), []byte("v"))
			codes <- code
		}()
	}
	// Wait until all of them are queued behind the stuck commit.
	require.Eventually(t, func() bool { return len(s.h.ops) == writers }, 10*time.Second, time.Millisecond)
	close(disk.release)
	wg.Wait()
	for i := 0; i <= writers; i++ {
		require.Equal(t, 200, <-codes)
	}
	require.EqualValues(t, 2, disk.commits.Load(), "the queued writes share one commit")
	require.Equal(t, writers+1, s.h.keys())
}

func TestLargeValues(t *testing.T) {
	testutil.ResourceCheck(t)
	file := filepath.Join(t.TempDir(), "meta.db")
	c := testClient(t)
	const big = 16 << 20
	value := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	want := map[string][]byte{}
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, MaxBody: big, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	put := func(k string, v []byte) {
		t.Helper()
		code, _ := do(t, c, http.MethodPut, keyURL(s, k), v)
		require.Equal(t, 200, code, k)
		want[k] = v
	}
	for i, k := range []string{"big/a", "big/b", "big/c", "big/d"} {
		put(k, value(byte('a'+i), big))
		put(k+"/small", value(byte('A'+i), 10))
	}
	put("big/a", value('z', big-1))     // large over large
	put("big/b", value('y', 100))       // large to inline
	put("big/c/small", value('x', big)) // inline to large
	put("edge", value('e', largeValue))
	put("edge+1", value('f', largeValue+1))
	code, _ := do(t, c, http.MethodDelete, keyURL(s, "big/d"), nil)
	require.Equal(t, 200, code)
	delete(want, "big/d")
	requireStore(t, c, s, want)
	require.NoError(t, s.Close(context.Background()))
	c.CloseIdleConnections()

	s = startServer(t, Config{PersistFile: file, MaxBody: big})
	requireStore(t, c, s, want)
}

func TestHundredThousandKeys(t *testing.T) {
	testutil.ResourceCheck(t)
	const n = 100_000
	file := filepath.Join(t.TempDir(), "meta.db")
	key := func(i int) string {
		return fmt.Sprintf("mooncake/ram/10.0.%d.%d:%d", i/65536, i%65536/256, 10000+i%256)
	}
	val := func(i, gen int) []byte {
		return []byte(fmt.Sprintf(`{"name":"%d","gen":%d,"pad":"%0200d"}`, i, gen, i))
	}
	// Fill the file through the store, in commits of 1,000 keys.
	st, data, err := openStore(file, zap.NewNop(), nil)
	require.NoError(t, err)
	require.Empty(t, data)
	for lo := 0; lo < n; lo += 1000 {
		changes := make([]change, 0, 1000)
		for i := lo; i < lo+1000; i++ {
			changes = append(changes, change{key: key(i), value: val(i, 0)})
		}
		require.NoError(t, st.write(changes))
	}
	require.NoError(t, st.close())

	c := testClient(t)
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err)
	require.Equal(t, n, s.h.keys())
	// Overwrite every 100th key, delete every 1000th, add 100.
	for i := 0; i < n; i += 100 {
		code, _ := do(t, c, http.MethodPut, keyURL(s, key(i)), val(i, 1))
		require.Equal(t, 200, code)
	}
	for i := 0; i < n; i += 1000 {
		code, _ := do(t, c, http.MethodDelete, keyURL(s, key(i)), nil)
		require.Equal(t, 200, code)
	}
	for i := n; i < n+100; i++ {
		code, _ := do(t, c, http.MethodPut, keyURL(s, key(i)), val(i, 1))
		require.Equal(t, 200, code)
	}
	require.NoError(t, s.Close(context.Background()))
	c.CloseIdleConnections()

	st, data, err = openStore(file, zap.NewNop(), nil)
	require.NoError(t, err)
	require.NoError(t, st.close())
	require.Len(t, data, n-n/1000+100)
	for i := 0; i < n+100; i++ {
		got, ok := data[key(i)]
		switch {
		case i < n && i%1000 == 0:
			require.False(t, ok, key(i))
		case i%100 == 0 || i >= n:
			require.Equal(t, string(val(i, 1)), string(got), key(i))
		default:
			require.Equal(t, string(val(i, 0)), string(got), key(i))
		}
	}
}
