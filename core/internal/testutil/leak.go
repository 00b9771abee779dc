// Package testutil holds helpers shared by the tests of core's packages.
package testutil

import (
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// ResourceCheck snapshots the running goroutines and open file descriptors
// and, when the test's cleanups have run, fails the test if more of either
// remain than before. Call it first in a test, so its cleanup runs last
// (cleanups run in reverse order). Not for parallel tests.
func ResourceCheck(tb testing.TB) {
	tb.Helper()
	startG := goroutines()
	startFD := openFDs()
	tb.Cleanup(func() {
		if tb.Failed() {
			return
		}
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = diff(startG, goroutines())
			fds := openFDs()
			if len(leaked) == 0 && fds <= startFD {
				return
			}
			if time.Now().After(deadline) {
				if len(leaked) > 0 {
					tb.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
				}
				if fds > startFD {
					tb.Errorf("file descriptors leaked: %d open before, %d after", startFD, fds)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// goroutines returns the stacks of all goroutines but the caller's, keyed by
// their top function so that a count change can be reported readably.
func goroutines() map[string]int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]int{}
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || ignorable(g) {
			continue // the first stack is ours
		}
		out[stackKey(g)]++
	}
	return out
}

// ignorable reports goroutines owned by the runtime or the test framework.
func ignorable(stack string) bool {
	for _, s := range []string{
		"testing.(*T).Run", "testing.(*M).", "testing.tRunner.func1",
		"runtime.goexit", "os/signal.signal_recv", "runtime.ensureSigM",
		"testing.(*T).Parallel", "created by runtime.gc", "runtime.ReadTrace",
	} {
		if strings.Contains(firstFrames(stack), s) {
			return true
		}
	}
	return false
}

func firstFrames(stack string) string {
	lines := strings.Split(stack, "\n")
	if len(lines) > 3 {
		lines = lines[:3]
	}
	return strings.Join(lines, "\n")
}

func stackKey(stack string) string {
	lines := strings.Split(stack, "\n")
	// lines[0] is "goroutine N [state]:"; the rest is the stack.
	return strings.Join(lines[1:], "\n")
}

func diff(before, after map[string]int) []string {
	var out []string
	for k, n := range after {
		if n > before[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}
