package core

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/metadata"
)

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// requireSame compares byte slices without dumping megabytes on failure.
func requireSame(tb testing.TB, want, got []byte, msg ...any) {
	tb.Helper()
	if len(want) != len(got) {
		tb.Fatalf("length %d, want %d %v", len(got), len(want), msg)
	}
	for i := range want {
		if want[i] != got[i] {
			tb.Fatalf("first difference at byte %d of %d: got %#x, want %#x %v", i, len(want), got[i], want[i], msg)
		}
	}
}

func fill(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// testLogger attaches logs to a failing test; benchmarks get none.
func testLogger(tb testing.TB) *zap.Logger {
	if _, ok := tb.(*testing.B); ok {
		return zap.NewNop()
	}
	return zaptest.NewLogger(tb)
}

// configOf parses env as initialize does, for a test engine on loopback
// without a GPU.
func configOf(tb testing.TB, env map[string]string) Config {
	tb.Helper()
	cfg, err := FromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	require.NoError(tb, err)
	cfg.LocalName, cfg.Metadata, cfg.NoGPU = "127.0.0.1", "P2PHANDSHAKE", true
	cfg.Logger = testLogger(tb)
	return cfg
}

// descOf is e's descriptor as its peers decode it.
func descOf(tb testing.TB, e *engine.Engine) *metadata.SegmentDesc {
	tb.Helper()
	d, err := metadata.DecodeSegmentDesc(e.Descriptor())
	require.NoError(tb, err)
	return d
}
