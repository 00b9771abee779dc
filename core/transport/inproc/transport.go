package inproc

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/gpucopy"
	"github.com/pymooncake/pymooncake/core/transport/internal/lifetime"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

// The sentinels this transport reports.
var (
	// ErrRejected is a remote range that is not inside the engine's
	// registered memory.
	ErrRejected = transport.ErrRejected
	// ErrClosed is a call on a closed transport.
	ErrClosed = transport.ErrClosed
	// ErrInvalidConfig is a Config that New refuses.
	ErrInvalidConfig = errors.New("inproc: invalid config")
)

// Name is the transport's name in logs.
const Name = "inproc"

// Config says how to build the transport.
type Config struct {
	// Off: PYMOONCAKE_SAME_HOST=0. The composition root then does not build
	// the transport, and the engine's own segment goes over its data
	// transport (TCP loopback), as in Mooncake.
	Off bool
	// Instance is the engine's incarnation id (engine.Services.Instance):
	// the descriptor that carries it is the engine's own. Required.
	Instance string
	// Memory is the engine's registered memory: both ends of every
	// transfer. Required.
	Memory *memory.Table
	// GPU is the GPU driver; nil means that all memory is host memory.
	GPU gpu.Driver
	// Logger receives the transport's logs; nil discards them.
	Logger *zap.Logger
}

// ConfigFromEnv reads PYMOONCAKE_SAME_HOST through lookup: a false
// spelling (0) turns the transport off; its other values choose the
// host-memory transport's paths, whose parser validates them.
func ConfigFromEnv(lookup config.LookupFunc) (Config, error) {
	p := config.NewParser(lookup)
	return Config{Off: p.SameHostOff()}, p.Err()
}

// Transport copies between the registered memory of its own engine. It
// implements transport.Transport and transport.StreamSubmitter.
type Transport struct {
	cfg     Config
	log     *zap.Logger
	lt      *lifetime.Lifetime
	copiers *gpucopy.Pool
}

var (
	_ transport.Transport       = (*Transport)(nil)
	_ transport.StreamSubmitter = (*Transport)(nil)
)

// New returns the transport of the engine whose instance and memory cfg
// names.
func New(cfg Config) (*Transport, error) {
	if cfg.Instance == "" || cfg.Memory == nil {
		return nil, fmt.Errorf("inproc: instance %q, memory table %v: %w", cfg.Instance, cfg.Memory != nil, ErrInvalidConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Transport{cfg: cfg, log: log.Named(Name), lt: lifetime.New(), copiers: gpucopy.New(cfg.GPU)}, nil
}

// Name implements transport.Transport.
func (t *Transport) Name() string { return Name }

// Accept implements transport.Transport: only the engine's own descriptor.
func (t *Transport) Accept(desc *metadata.SegmentDesc) error {
	if id := desc.Instance(); id != t.cfg.Instance {
		return fmt.Errorf("%s: %q is not this engine's own segment", Name, desc.Name)
	}
	return nil
}

// Submit implements transport.Transport. A synchronous call runs on the
// caller's goroutine, which waits for it anyway; others get a goroutine.
func (t *Transport) Submit(ctx context.Context, peer transport.Peer, tasks []*transport.Task, opts transport.SubmitOptions) {
	if !t.lt.Enter() {
		submit.FailAll(tasks, ErrClosed)
		return
	}
	defer t.lt.Exit()
	if opts.Sync {
		t.run(ctx, tasks)
		return
	}
	if !t.lt.Go(func() { t.run(ctx, tasks) }) {
		submit.FailAll(tasks, ErrClosed)
	}
}

// run copies the tasks in order, failing what is left once ctx ends or the
// transport closes.
func (t *Transport) run(ctx context.Context, tasks []*transport.Task) {
	for i, task := range tasks {
		if err := ctx.Err(); err != nil {
			submit.FailAll(tasks[i:], err)
			return
		}
		if t.lt.Ended() {
			submit.FailAll(tasks[i:], ErrClosed)
			return
		}
		task.Start(1)
		if task.Length == 0 {
			task.PartDone(0, nil)
			continue
		}
		if err := t.copy(task.Request); err != nil {
			task.PartDone(0, err)
			continue
		}
		task.PartDone(task.Length, nil)
	}
}

// ends returns a request's destination and source.
func ends(r transport.Request) (dst, src uint64) {
	if r.Opcode == transport.Read {
		return uint64(r.Local), r.Remote
	}
	return r.Remote, uint64(r.Local)
}

// copy moves one request, its remote range pinned as a server pins it.
func (t *Transport) copy(r transport.Request) error {
	pin, ok := t.cfg.Memory.Pin(r.Remote, r.Length)
	if !ok {
		return fmt.Errorf("%s: %s of [%#x, +%d): not inside registered memory: %w", Name, r.Opcode, r.Remote, r.Length, ErrRejected)
	}
	defer pin.Unpin()
	dst, src := ends(r)
	dd, sd := t.cfg.Memory.Device(dst, r.Length), t.cfg.Memory.Device(src, r.Length)
	if dd == memory.Host && sd == memory.Host {
		copy(unsafe.Slice((*byte)(ptr(dst)), r.Length), unsafe.Slice((*byte)(ptr(src)), r.Length))
		return nil
	}
	ord := dd
	if ord == memory.Host {
		ord = sd
	}
	if err := t.copiers.Copy(ord, uintptr(dst), uintptr(src), int(r.Length)); err != nil {
		return fmt.Errorf("%s: %s of %d bytes on device %d: %w", Name, r.Opcode, r.Length, ord, err)
	}
	return nil
}

// ptr turns an address of registered memory (outside the Go heap) into a
// pointer, for unsafe.Slice.
func ptr(a uint64) unsafe.Pointer {
	p := uintptr(a)
	return *(*unsafe.Pointer)(unsafe.Pointer(&p))
}

// SubmitOnStream implements transport.StreamSubmitter: every request is
// validated first, then its copy is queued on the caller's stream.
func (t *Transport) SubmitOnStream(_ transport.Peer, reqs []transport.Request, stream uintptr, device int) error {
	if !t.lt.Enter() {
		return ErrClosed
	}
	defer t.lt.Exit()
	if t.cfg.GPU == nil {
		return fmt.Errorf("%s: copies on a CUDA stream need a GPU driver: %w", Name, gpu.ErrNotSupported)
	}
	for i, r := range reqs {
		if r.Length > 0 && !t.cfg.Memory.Contains(r.Remote, r.Length) {
			return fmt.Errorf("%s: request %d: %s of [%#x, +%d): not inside registered memory: %w", Name, i, r.Opcode, r.Remote, r.Length, ErrRejected)
		}
	}
	for i, r := range reqs {
		if r.Length == 0 {
			continue
		}
		dst, src := ends(r)
		if err := t.cfg.GPU.CopyAsync(stream, device, uintptr(dst), uintptr(src), int(r.Length)); err != nil {
			return fmt.Errorf("%s: request %d of %d (the %d before it are queued): %w", Name, i, len(reqs), i, err)
		}
	}
	return nil
}

// ClosePeer implements transport.Transport: there is no connection.
func (t *Transport) ClosePeer(string) {}

// Close implements transport.Transport.
func (t *Transport) Close() error {
	if t.lt.Ended() {
		return nil
	}
	t.lt.End()
	t.lt.Wait()
	return t.copiers.Close()
}
