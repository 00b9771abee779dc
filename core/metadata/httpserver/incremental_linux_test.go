package httpserver

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// bytesWritten is this process's wchar: the bytes passed so far to write
// system calls (files and sockets alike).
func bytesWritten(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if os.IsNotExist(err) {
		t.Skip("no /proc/self/io")
	}
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err)
			return n
		}
	}
	t.Fatalf("no wchar in /proc/self/io: %q", b)
	return 0
}

// TestSmallWriteNextToLargeValues checks that a change costs the pages it
// touches, not the store: next to 64 MiB of large values, each small PUT
// writes well under 1 MiB. The whole-file rewrite wrote the whole store
// (base64) per change.
func TestSmallWriteNextToLargeValues(t *testing.T) {
	testutil.ResourceCheck(t)
	const big = 16 << 20
	s := startServer(t, Config{PersistFile: filepath.Join(t.TempDir(), "meta.db"), MaxBody: big})
	c := testClient(t)
	for i := 0; i < 4; i++ {
		code, _ := do(t, c, http.MethodPut, keyURL(s, fmt.Sprintf("k%d", i)), bytes.Repeat([]byte{byte(i)}, big))
		require.Equal(t, 200, code)
	}
	for i := 0; i < 4; i++ {
		// Keys sort between the large ones: each lands in a leaf next to them.
		key := fmt.Sprintf("k%d/small", i)
		before := bytesWritten(t)
		code, _ := do(t, c, http.MethodPut, keyURL(s, key), []byte("0123456789"))
		require.Equal(t, 200, code)
		require.Less(t, bytesWritten(t)-before, int64(1<<20), key)
	}
}
