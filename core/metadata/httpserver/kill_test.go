package httpserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// helperEnv, when set in the environment of this test binary, makes it a
// metadata server persisting to the named file instead of running tests:
// see TestMain and runHelperServer.
const helperEnv = "PYMOONCAKE_TEST_METADATA_SERVER_FILE"

func TestMain(m *testing.M) {
	if file := os.Getenv(helperEnv); file != "" {
		os.Exit(runHelperServer(file))
	}
	os.Exit(m.Run())
}

// runHelperServer serves with file as the persist file, prints its address
// on stdout, and runs until stdin closes (the parent exited) or it is
// killed.
func runHelperServer(file string) int {
	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(s.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := s.Close(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startHelperServer runs this test binary as a server on file in a child
// process and returns it with its address.
func startHelperServer(t *testing.T, file string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+file)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr // the helper's failures show in the test's output
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
	}()
	select {
	case addr := <-line:
		require.NotEmpty(t, addr, "helper server failed")
		return cmd, addr
	case <-time.After(30 * time.Second):
		t.Fatal("helper server did not start")
		return nil, ""
	}
}

// keyState is what a writer knows of one of its keys: the state its last
// acknowledged request left (value, or absent), and the request it had in
// flight when the server died, whose outcome is unknown.
type keyState struct {
	present bool
	value   []byte
	// pending is set while a request is in flight.
	pending        bool
	pendingPresent bool
	pendingValue   []byte
}

// allows reports whether finding (present, value) after a crash agrees
// with what was acknowledged.
func (s *keyState) allows(present bool, value []byte) bool {
	if present == s.present && bytes.Equal(value, s.value) {
		return true
	}
	return s.pending && present == s.pendingPresent && bytes.Equal(value, s.pendingValue)
}

// TestKillNineKeepsAcknowledgedWrites kills a server process with SIGKILL
// while writers are busy, right after a given number of acknowledged
// writes, and checks that the file opens and holds every acknowledged
// write.
func TestKillNineKeepsAcknowledgedWrites(t *testing.T) {
	testutil.ResourceCheck(t)
	const writers, keysPerWriter, ackTarget = 8, 20, 1500
	file := filepath.Join(t.TempDir(), "meta.db")
	cmd, addr := startHelperServer(t, file)
	c := testClient(t)
	base := "http://" + addr + Path + "?key="

	var acks atomic.Int64
	enough := make(chan struct{})
	var enoughOnce sync.Once
	states := make([][]keyState, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		states[w] = make([]keyState, keysPerWriter)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			for n := 0; ; n++ {
				k := rng.Intn(keysPerWriter)
				st := &states[w][k]
				method, value := http.MethodPut, []byte(fmt.Sprintf("w%d-k%d-n%d-", w, k, n))
				switch r := rng.Intn(10); {
				case r == 0 && st.present:
					method, value = http.MethodDelete, nil
				case r == 1: // sometimes a value with a bucket of its own
					value = append(value, bytes.Repeat([]byte("L"), largeValue)...)
				}
				st.pending, st.pendingPresent, st.pendingValue = true, value != nil, value
				req, err := http.NewRequest(method, base+fmt.Sprintf("w%d/k%d", w, k), bytes.NewReader(value))
				if err != nil {
					t.Error(err)
					return
				}
				resp, err := c.Do(req)
				if err != nil {
					return // the server is gone; this request stays pending
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Errorf("%s w%d/k%d: status %d", method, w, k, resp.StatusCode)
					return
				}
				st.pending, st.present, st.value = false, value != nil, value
				if acks.Add(1) >= ackTarget {
					enoughOnce.Do(func() { close(enough) })
				}
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(2 * time.Minute):
		t.Error("writers did not reach their target")
	}
	require.NoError(t, cmd.Process.Kill())
	err := cmd.Wait()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "helper server exit: %v", err)
	wg.Wait()
	if t.Failed() {
		return
	}

	s, err := New(Config{Addr: "127.0.0.1:0", PersistFile: file, Logger: zaptest.NewLogger(t)})
	require.NoError(t, err, "the file opens after kill -9")
	defer func() { require.NoError(t, s.Close(context.Background())) }()
	c.CloseIdleConnections()
	for w := range states {
		for k := range states[w] {
			code, got := do(t, c, http.MethodGet, keyURL(s, fmt.Sprintf("w%d/k%d", w, k)), nil)
			require.Contains(t, []int{200, 404}, code)
			if code == 404 {
				got = nil
			}
			st := &states[w][k]
			require.True(t, st.allows(code == 200, got), "w%d/k%d: found %v %.30q; acknowledged %v %.30q, pending %v",
				w, k, code == 200, got, st.present, st.value, st.pending)
		}
	}
	t.Logf("%d writes acknowledged before kill -9, all found", acks.Load())
}
