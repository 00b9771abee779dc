package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// Defaults applied by New to zero Config fields, as Mooncake's etcd wrapper.
const (
	DefaultDialTimeout = 5 * time.Second
	DefaultOpTimeout   = 5 * time.Second
	// MaxMsgSize bounds gRPC messages both ways, as Mooncake (32 MiB).
	MaxMsgSize = 32 << 20
)

// Re-grant backoff after a lost lease.
const (
	minRegrantBackoff = 100 * time.Millisecond
	maxRegrantBackoff = 2 * time.Second
)

// Config configures a Store. Zero durations mean the documented default.
type Config struct {
	// Endpoints are etcd client addresses, "host:port" or "http://host:port".
	// At least one is required.
	Endpoints []string
	// DialTimeout bounds the reachability probe New makes (default 5 s).
	DialTimeout time.Duration
	// OpTimeout bounds each etcd request (default 5 s).
	OpTimeout time.Duration
	// LeaseTTL, when positive, attaches every Put to a lease of this TTL
	// (rounded up to whole seconds; etcd may raise it to its minimum) that the
	// Store keeps alive. Zero means no lease, as Mooncake (MC_METADATA_LEASE_TTL).
	LeaseTTL time.Duration
	// Logger receives the Store's and the etcd client's logs; nil means none.
	Logger *zap.Logger
	// OnReconnect is called by the keeper goroutine after a lost lease has
	// been replaced and the Store's own keys re-put, so the owner can
	// republish everything else. Its ctx is cancelled by Close; it must
	// return promptly then and must not call Close. Only used with LeaseTTL.
	OnReconnect func(ctx context.Context)
}

// Store is a metadata.Store backed by etcd. It is safe for concurrent use.
type Store struct {
	cfg Config
	log *zap.Logger
	cli *clientv3.Client

	ctx    context.Context // cancelled by Close; owns the keeper
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	// sem serialises writes (Put, Delete) with the keeper's re-put of own
	// keys, so a re-put never overwrites a newer value. A channel rather
	// than a mutex so that waiting honours ctx.
	sem chan struct{}
	// lease is the current lease ID (0 without a lease). Written under sem.
	lease atomic.Int64
	// leaseChanged is closed when lease is replaced. Guarded by sem.
	leaseChanged chan struct{}
	// own holds the keys this Store put and did not delete since. Guarded by
	// sem. Kept only with a lease.
	own map[string][]byte
	// lost carries a lease ID that a Put found missing on the server to the
	// keeper, which may not have noticed yet.
	lost chan clientv3.LeaseID

	closeOnce sync.Once
	closeErr  error
}

var _ metadata.Store = (*Store)(nil)

// New connects to etcd, checks within cfg.DialTimeout that an endpoint
// answers, and with cfg.LeaseTTL grants the lease and starts keeping it alive.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger.Named("etcdstore")
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:          cfg.Endpoints,
		DialTimeout:        cfg.DialTimeout,
		MaxCallSendMsgSize: MaxMsgSize,
		MaxCallRecvMsgSize: MaxMsgSize,
		// The client warns on every retried call; the Store reports what
		// matters (failed calls as errors, a lost lease as a warning).
		Logger: cfg.Logger.Named("etcd-client").WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel)),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: create client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	if err := probe(ctx, cli, cfg); err != nil {
		_ = cli.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg:          cfg,
		log:          log,
		cli:          cli,
		ctx:          sctx,
		cancel:       cancel,
		sem:          make(chan struct{}, 1),
		leaseChanged: make(chan struct{}),
		lost:         make(chan clientv3.LeaseID, 1),
	}
	if cfg.LeaseTTL > 0 {
		id, err := s.grant(ctx)
		if err != nil {
			cancel()
			_ = cli.Close()
			return nil, err
		}
		s.lease.Store(int64(id))
		s.own = map[string][]byte{}
		s.wg.Add(1)
		go s.keep(id)
	}
	log.Info("connected to etcd",
		zap.Strings("endpoints", cfg.Endpoints),
		zap.Duration("lease_ttl", cfg.LeaseTTL),
		zap.Int64("lease", s.lease.Load()))
	return s, nil
}

func (c *Config) setDefaults() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrConfig)
	}
	for _, ep := range c.Endpoints {
		if strings.TrimSpace(ep) == "" {
			return fmt.Errorf("%w: empty endpoint in %q", ErrConfig, c.Endpoints)
		}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"dial timeout", &c.DialTimeout, DefaultDialTimeout},
		{"op timeout", &c.OpTimeout, DefaultOpTimeout},
		{"lease ttl", &c.LeaseTTL, 0},
	} {
		if *d.v < 0 {
			return fmt.Errorf("%w: negative %s %v", ErrConfig, d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	c.Endpoints = append([]string(nil), c.Endpoints...)
	return nil
}

// probe makes one linearizable read, which needs a reachable endpoint with
// a quorum behind it: clientv3.New itself does not dial.
func probe(ctx context.Context, cli *clientv3.Client, cfg Config) error {
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	_, err := cli.Get(pctx, "mooncake/", clientv3.WithCountOnly())
	if err == nil {
		return nil
	}
	err = clientv3.ContextError(pctx, err)
	eps := strings.Join(cfg.Endpoints, ",")
	if ctx.Err() != nil {
		return fmt.Errorf("etcdstore: probe %s: %w", eps, ctx.Err())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer from %s within %v: %w", ErrUnreachable, eps, cfg.DialTimeout, err)
	}
	return fmt.Errorf("etcdstore: probe %s: %w", eps, err)
}

// opContext bounds one etcd request by OpTimeout and by the Store's life.
func (s *Store) opContext(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// Get returns the value stored under key, or an error matching
// metadata.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("etcdstore: get %q: %w", key, ErrClosed)
	}
	octx, done := s.opContext(ctx)
	defer done()
	resp, err := s.cli.Get(octx, key)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: get %q: %w", key, s.opError(octx, err))
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcdstore: get %q: %w", key, metadata.ErrNotFound)
	}
	return resp.Kvs[0].Value, nil
}

// Put stores value under key, attached to the Store's lease if it has one.
// If the server no longer knows the lease, Put waits (within ctx) for the
// keeper to grant a new one and tries once more.
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	value = append([]byte(nil), value...) // own may keep it
	for attempt := 0; ; attempt++ {
		changed, err := s.put(ctx, key, value)
		if err == nil {
			return nil
		}
		if changed == nil || attempt > 0 {
			return fmt.Errorf("etcdstore: put %q: %w", key, err)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("etcdstore: put %q: waiting for a new lease: %w", key, ctx.Err())
		case <-s.ctx.Done():
			return fmt.Errorf("etcdstore: put %q: %w", key, ErrClosed)
		}
	}
}

// put makes one attempt. When the lease was not found on the server it
// returns, with the error, a channel closed once the lease is replaced.
func (s *Store) put(ctx context.Context, key string, value []byte) (<-chan struct{}, error) {
	if err := s.acquire(ctx); err != nil {
		return nil, err
	}
	defer s.release()
	var opts []clientv3.OpOption
	lease := clientv3.LeaseID(s.lease.Load())
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(lease))
	}
	octx, done := s.opContext(ctx)
	defer done()
	if _, err := s.cli.Put(octx, key, string(value), opts...); err != nil {
		err = s.opError(octx, err)
		if lease != 0 && errors.Is(err, rpctypes.ErrLeaseNotFound) {
			select {
			case s.lost <- lease:
			default:
			}
			return s.leaseChanged, fmt.Errorf("lease %x: %w", int64(lease), err)
		}
		return nil, err
	}
	if s.own != nil {
		s.own[key] = value
	}
	return nil, nil
}

// Delete removes key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.acquire(ctx); err != nil {
		return fmt.Errorf("etcdstore: delete %q: %w", key, err)
	}
	defer s.release()
	octx, done := s.opContext(ctx)
	defer done()
	if _, err := s.cli.Delete(octx, key); err != nil {
		return fmt.Errorf("etcdstore: delete %q: %w", key, s.opError(octx, err))
	}
	if s.own != nil {
		delete(s.own, key)
	}
	return nil
}

// acquire takes sem, honouring ctx and Close.
func (s *Store) acquire(ctx context.Context) error {
	if s.closed.Load() {
		return ErrClosed
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return ErrClosed
	}
	if s.closed.Load() {
		<-s.sem
		return ErrClosed
	}
	return nil
}

func (s *Store) release() { <-s.sem }

// opError maps a failed request's error: ErrClosed once Close ran, the
// context's error on a deadline or cancellation, else the etcd error.
func (s *Store) opError(octx context.Context, err error) error {
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	return clientv3.ContextError(octx, err)
}

// grant asks for a new lease of cfg.LeaseTTL, bounded by OpTimeout.
func (s *Store) grant(ctx context.Context) (clientv3.LeaseID, error) {
	ttl := int64((s.cfg.LeaseTTL + time.Second - 1) / time.Second)
	gctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	resp, err := s.cli.Grant(gctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("etcdstore: grant lease of %ds: %w", ttl, clientv3.ContextError(gctx, err))
	}
	return resp.ID, nil
}

// keep keeps the lease alive and re-establishes it whenever it is lost,
// until Close.
func (s *Store) keep(id clientv3.LeaseID) {
	defer s.wg.Done()
	for {
		s.watch(id)
		if s.ctx.Err() != nil {
			return
		}
		s.log.Warn("etcd lease lost; re-establishing it when etcd answers", zap.Int64("lease", int64(id)))
		next, ok := s.reestablish(id)
		if !ok {
			return
		}
		s.log.Info("etcd lease re-established", zap.Int64("old_lease", int64(id)), zap.Int64("lease", int64(next)))
		id = next
		if s.cfg.OnReconnect != nil {
			s.cfg.OnReconnect(s.ctx)
		}
	}
}

// watch returns when lease id is lost (the keep-alive channel closes, or a
// Put reports the lease missing) or when the Store closes.
func (s *Store) watch(id clientv3.LeaseID) {
	kctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	ch, err := s.cli.KeepAlive(kctx, id)
	if err != nil {
		s.log.Warn("etcd lease keep-alive failed", zap.Int64("lease", int64(id)), zap.Error(err))
		return
	}
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case lost := <-s.lost:
			if lost == id {
				return
			}
		case <-s.ctx.Done():
			return
		}
	}
}

// reestablish grants a new lease, re-puts own keys under it and revokes the
// old one, retrying with backoff until it succeeds or the Store closes.
func (s *Store) reestablish(old clientv3.LeaseID) (clientv3.LeaseID, bool) {
	backoff := minRegrantBackoff
	for {
		id, err := s.grant(s.ctx)
		if err == nil {
			err = s.republish(id)
			if err != nil {
				s.revoke(id)
			}
		}
		if err == nil {
			s.revoke(old)
			return id, true
		}
		if s.ctx.Err() != nil {
			return 0, false
		}
		s.log.Debug("etcd lease not re-established yet", zap.Error(err), zap.Duration("retry_in", backoff))
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return 0, false
		}
		backoff = min(2*backoff, maxRegrantBackoff)
	}
}

// republish re-puts every own key under lease id and makes id current.
func (s *Store) republish(id clientv3.LeaseID) error {
	if err := s.acquire(s.ctx); err != nil {
		return err
	}
	defer s.release()
	for key, value := range s.own {
		octx, done := s.opContext(s.ctx)
		_, err := s.cli.Put(octx, key, string(value), clientv3.WithLease(id))
		done()
		if err != nil {
			return fmt.Errorf("etcdstore: re-put %q under lease %x: %w", key, int64(id), s.opError(octx, err))
		}
	}
	s.lease.Store(int64(id))
	close(s.leaseChanged)
	s.leaseChanged = make(chan struct{})
	// A Put may have reported the old lease missing meanwhile.
	select {
	case <-s.lost:
	default:
	}
	return nil
}

// revoke drops lease id for the keeper, best effort: a lease left behind
// expires after its TTL anyway.
func (s *Store) revoke(id clientv3.LeaseID) {
	ctx, done := s.opContext(s.ctx)
	defer done()
	if _, err := s.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.log.Debug("revoke etcd lease", zap.Int64("lease", int64(id)), zap.Error(err))
	}
}

// Close stops the keeper, revokes the lease (bounded by OpTimeout) so the
// Store's keys vanish, and closes the client. It is idempotent and returns
// the first error.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.cancel()
		s.wg.Wait()
		if id := clientv3.LeaseID(s.lease.Load()); id != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.OpTimeout)
			_, err := s.cli.Revoke(ctx, id)
			cancel()
			if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.closeErr = fmt.Errorf("etcdstore: revoke lease %x: %w", int64(id), clientv3.ContextError(ctx, err))
			}
		}
		if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) && s.closeErr == nil {
			s.closeErr = fmt.Errorf("etcdstore: close client: %w", err)
		}
	})
	return s.closeErr
}
