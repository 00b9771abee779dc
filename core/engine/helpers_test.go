package engine

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/listen"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/metadata/etcdstore"
	"github.com/pymooncake/pymooncake/core/metadata/httpserver"
	"github.com/pymooncake/pymooncake/core/metadata/httpstore"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// The engine's tests run it over the TCP transport, built here as the
// composition root (package core) builds it; core's own tests cover the
// root itself (transport selection, RDMA and barex over fakes, stores).

// testEngine is what a test starts an engine from.
type testEngine struct {
	local, meta string
	// env holds the variables set, parsed as initialize parses them.
	env map[string]string
	// envOverride, when not nil, edits the parsed engine environment.
	envOverride func(*config.Env)
	gpu         gpu.Driver
	staging     gpu.StagingConfig
	log         *zap.Logger
	// noMetrics starts the engine without metrics (Config.NoMetrics).
	noMetrics bool
	// wrap, when not nil, wraps the TCP transport (a test double's
	// behaviour over it).
	wrap func(transport.Transport) transport.Transport
}

// start starts e, returning initialize's error.
func (te testEngine) start(tb testing.TB) (*Engine, error) {
	tb.Helper()
	if te.log == nil {
		te.log = testLogger(tb)
	}
	cfg, err := te.config()
	require.NoError(tb, err)
	return New(context.Background(), cfg)
}

// config is the engine configuration of te.
func (te testEngine) config() (Config, error) {
	lookup := func(k string) (string, bool) { v, ok := te.env[k]; return v, ok }
	env, err := config.FromEnv(lookup)
	if err != nil {
		return Config{}, err
	}
	tcpCfg, err := tcp.ConfigFromEnv(lookup)
	if err != nil {
		return Config{}, err
	}
	if te.envOverride != nil {
		te.envOverride(&env)
	}
	if te.local == "" {
		te.local = "127.0.0.1"
	}
	if te.meta == "" {
		te.meta = "P2PHANDSHAKE"
	}
	log := te.log
	if log == nil {
		log = zap.NewNop()
	}
	var staging *gpu.Staging
	var atClose []func() error
	if te.gpu != nil {
		cfg := te.staging
		if cfg.Chunk == 0 {
			cfg.Chunk = 256 << 10
		}
		if staging, err = gpu.NewStaging(te.gpu, cfg); err != nil {
			return Config{}, err
		}
		atClose = append(atClose, staging.Close)
	}
	return Config{
		LocalName: te.local, Metadata: te.meta, Env: env, Logger: log, GPU: te.gpu, AtClose: atClose, NoMetrics: te.noMetrics,
		Transports: func(_ context.Context, s Services) ([]transport.Transport, error) {
			ln, err := listen.RandomPort(env.MinPort, env.MaxPort, env.IPv6)
			if err != nil {
				return nil, err
			}
			tcpCfg.DialTimeout = env.HandshakeConnectTimeout
			tcpCfg.Logger = log
			if staging != nil {
				tcpCfg.GPU = &stagedGPU{mem: s.Memory, staging: staging}
			}
			t, err := tcp.New(tcpCfg, ln, s.Memory)
			if err != nil {
				ln.Close()
				return nil, err
			}
			if te.wrap != nil {
				return []transport.Transport{te.wrap(t)}, nil
			}
			return []transport.Transport{t}, nil
		},
		OpenStore: func(ctx context.Context, cs metadata.ConnString, republish func(context.Context) error) (metadata.Store, error) {
			switch cs.Kind {
			case metadata.Etcd:
				s, err := etcdstore.New(ctx, etcdstore.Config{Endpoints: cs.Endpoints, Logger: log,
					OnReconnect: func(ctx context.Context) { _ = republish(ctx) }})
				if err != nil {
					return nil, err
				}
				return s, nil
			case metadata.HTTP:
				s, err := httpstore.New(httpstore.Config{URL: cs.URL, Logger: log})
				if err != nil {
					return nil, err
				}
				probe := &handshake.Client{ConnectTimeout: env.HandshakeConnectTimeout, MaxFrame: env.HandshakeMaxFrame}
				return httpstore.ReclaimStaleNames(s, probe.Probe, log), nil
			}
			return nil, ErrNotSupported
		},
	}, nil
}

// mustStart starts e and closes it when the test ends.
func (te testEngine) mustStart(tb testing.TB) *Engine {
	tb.Helper()
	e, err := te.start(tb)
	require.NoError(tb, err)
	tb.Cleanup(func() { require.NoError(tb, e.Close()) })
	return e
}

// stagedGPU is tcp.GPU over the engine's registrations and a staging pool.
type stagedGPU struct {
	mem     *memory.Table
	staging *gpu.Staging
}

func (g *stagedGPU) Device(addr, n uint64) int { return g.mem.Device(addr, n) }

func (g *stagedGPU) Stage(ord int) (tcp.Stage, error) {
	st, err := g.staging.Get(ord)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// descOf is e's descriptor as its peers decode it.
func descOf(tb testing.TB, e *Engine) *metadata.SegmentDesc {
	tb.Helper()
	d, err := metadata.DecodeSegmentDesc(e.Descriptor())
	require.NoError(tb, err)
	return d
}

func startHTTPMetadata(t *testing.T) string {
	t.Helper()
	srv, err := httpserver.New(httpserver.Config{Addr: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	})
	return "http://" + srv.Addr() + "/metadata"
}

func httpGet(t *testing.T, base, key string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(base + "?key=" + url.QueryEscape(key))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// bindLoopback makes store-mode engines advertise 127.0.0.1.
func bindLoopback(env *config.Env) { env.TCPBindAddress = "127.0.0.1" }

func newStoreEngine(t *testing.T, name, meta string) *Engine {
	t.Helper()
	e, err := testEngine{local: name, meta: meta, envOverride: bindLoopback}.start(t)
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

func httpPut(t *testing.T, base, key string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, base+"?key="+url.QueryEscape(key), bytes.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}
