package bindings

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core"
	"github.com/pymooncake/pymooncake/core/config"
	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/metadata"
)

// initTimeout bounds NewEngine's store connection and first publication.
const initTimeout = 30 * time.Second

// Engine is one pymooncake transfer engine, as Python's TransferEngine sees
// it after initialize. All methods are safe for concurrent use.
type Engine struct {
	eng *engine.Engine
	log *zap.Logger
	env config.Env

	// ctx is cancelled by Close; it bounds the calls this package makes.
	ctx    context.Context
	cancel context.CancelFunc

	// memMu is held shared while this package copies bytes in registered
	// memory, and exclusively by Close, so a copy never races the unmapping
	// of managed buffers.
	memMu  sync.RWMutex
	closed atomic.Bool
}

// NewEngine starts an engine. It is Mooncake's initialize when metadataType
// is empty (server is a connection string: "P2PHANDSHAKE", "etcd://h:p",
// "http://h:p/metadata" or a bare "h:p" meaning etcd), and initialize_ext
// otherwise (the connection string is metadataType://server unless server
// already has a scheme or is P2PHANDSHAKE). devices is the comma-separated
// NIC filter. protocol is accepted as Mooncake's is: it does not select the
// transport, except that "xgmi" is refused as Mooncake refuses it.
//
// environ is the Python process's environment as a JSON object, read by the
// caller at this call: the Go runtime's own copy of the environment is taken
// when the extension loads and misses later changes to os.environ, which
// Mooncake (calling getenv) would see. An empty environ means the Go
// runtime's copy. Every variable is parsed here, strictly (core.FromEnv).
func NewEngine(localName, server, metadataType, protocol, devices, environ string) (_ *Engine, err error) {
	defer recoverInto("initialize", nil, &err)
	if protocol == "xgmi" {
		return nil, invalid("initialize", "protocol %q is not exposed in the Python API; use \"hip\"", protocol)
	}
	lookup, err := environLookup(environ)
	if err != nil {
		return nil, fail("initialize", err)
	}
	cfg, err := core.FromEnv(lookup)
	if err != nil {
		return nil, fail("initialize", fmt.Errorf("%w: %w", engine.ErrInvalidArgument, err))
	}
	cfg.LocalName = localName
	cfg.Metadata = server
	if metadataType != "" {
		cfg.Metadata = metadata.ConnStringFromType(server, metadataType)
	}
	cfg.Devices = splitList(devices)
	cfg.Logger = core.NewLogger(cfg.Env.LogLevel)
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()
	eng, err := core.New(ctx, cfg)
	if err != nil {
		cfg.Logger.Sync() //nolint:errcheck // best effort on stderr
		return nil, fail("initialize", err)
	}
	if protocol != "" && protocol != eng.Protocol() {
		cfg.Logger.Debug("the protocol argument does not select the transport (as in Mooncake)",
			zap.String("protocol", protocol), zap.String("published", eng.Protocol()))
	}
	e := &Engine{eng: eng, log: cfg.Logger, env: cfg.Env}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e, nil
}

// Close stops the engine and waits for its goroutines. It is idempotent;
// every later call on e fails with the closed code.
func (e *Engine) Close() (rc int, err error) {
	defer recoverInto("close", e.log, &err)
	e.memMu.Lock()
	first := e.closed.CompareAndSwap(false, true)
	e.memMu.Unlock()
	if !first {
		return 0, nil
	}
	e.cancel()
	cerr := e.eng.Close()
	e.log.Sync() //nolint:errcheck // best effort on stderr
	if cerr != nil {
		return 0, fail("close", cerr)
	}
	return 0, nil
}

// environLookup returns a lookup function over environ, a JSON object of
// strings, or os.LookupEnv when environ is empty.
func environLookup(environ string) (config.LookupFunc, error) {
	if environ == "" {
		return os.LookupEnv, nil
	}
	m := map[string]string{}
	if err := json.Unmarshal([]byte(environ), &m); err != nil {
		return nil, fmt.Errorf("environment: %w: %w", engine.ErrInvalidArgument, err)
	}
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}, nil
}

// check returns ErrClosed's failure once the engine is closed.
func (e *Engine) check(op string) error {
	if e.closed.Load() {
		return fail(op, engine.ErrClosed)
	}
	return nil
}

// Name is the segment name peers open this engine by (in P2P mode the
// renamed "host:rpc_port").
func (e *Engine) Name() (name string, err error) {
	defer recoverInto("get_local_name", e.log, &err)
	if err := e.check("get_local_name"); err != nil {
		return "", err
	}
	return e.eng.Name(), nil
}

// RPCPort is the port of the handshake listener (get_rpc_port).
func (e *Engine) RPCPort() (port int, err error) {
	defer recoverInto("get_rpc_port", e.log, &err)
	if err := e.check("get_rpc_port"); err != nil {
		return 0, err
	}
	return e.eng.RPCPort(), nil
}

// RegisterMemory registers [addr, addr+length) at location ("*", "cpu:N",
// "cuda:N").
func (e *Engine) RegisterMemory(addr uintptr, length int64, location string) (rc int, err error) {
	const op = "register_memory"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	if length < 0 {
		return 0, invalid(op, "negative length %d", length)
	}
	if err := e.eng.RegisterMemory(addr, uint64(length), location); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// UnregisterMemory unregisters the region that starts at addr.
func (e *Engine) UnregisterMemory(addr uintptr) (rc int, err error) {
	const op = "unregister_memory"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	if err := e.eng.UnregisterMemory(addr); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// RegisterMemoryBatch registers n regions, all or none. addrs and lengths
// point at n uint64 values each.
func (e *Engine) RegisterMemoryBatch(addrs, lengths uintptr, n int, location string) (rc int, err error) {
	const op = "batch_register_memory"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	a, err := readList(op, "buffer_addresses", addrs, n)
	if err != nil {
		return 0, err
	}
	l, err := readList(op, "capacities", lengths, n)
	if err != nil {
		return 0, err
	}
	ptrs := make([]uintptr, n)
	for i, v := range a {
		ptrs[i] = uintptr(v)
	}
	if err := e.eng.RegisterMemoryBatch(ptrs, l, location); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// UnregisterMemoryBatch unregisters n regions by start address, all or none.
func (e *Engine) UnregisterMemoryBatch(addrs uintptr, n int) (rc int, err error) {
	const op = "batch_unregister_memory"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	a, err := readList(op, "buffer_addresses", addrs, n)
	if err != nil {
		return 0, err
	}
	ptrs := make([]uintptr, n)
	for i, v := range a {
		ptrs[i] = uintptr(v)
	}
	if err := e.eng.UnregisterMemoryBatch(ptrs); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// AllocateManaged returns a registered buffer of at least length bytes from
// the engine's buddy allocator (allocate_managed_buffer).
func (e *Engine) AllocateManaged(length int64) (addr uintptr, err error) {
	const op = "allocate_managed_buffer"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	if length < 0 {
		return 0, invalid(op, "negative length %d", length)
	}
	a, err := e.eng.AllocateManaged(uint64(length))
	if err != nil {
		return 0, fail(op, err)
	}
	return a, nil
}

// FreeManaged returns a buffer from AllocateManaged; length must be the one
// it was allocated with.
func (e *Engine) FreeManaged(addr uintptr, length int64) (rc int, err error) {
	const op = "free_managed_buffer"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	if length < 0 {
		return 0, invalid(op, "negative length %d", length)
	}
	if err := e.eng.FreeManaged(addr, uint64(length)); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// CopyIn copies n bytes from src, memory the caller owns (a Python bytes
// object), to dst, which must lie in registered memory
// (write_bytes_to_buffer). Mooncake copies to any address; refusing
// unregistered destinations turns a bad address into an error instead of a
// crash.
func (e *Engine) CopyIn(dst, src uintptr, n int64) (rc int, err error) {
	const op = "write_bytes_to_buffer"
	defer recoverInto(op, e.log, &err)
	e.memMu.RLock()
	defer e.memMu.RUnlock()
	if err := e.check(op); err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, invalid(op, "negative length %d", n)
	}
	if n == 0 {
		return 0, nil
	}
	if err := e.eng.CheckLocal(dst, uint64(n)); err != nil {
		return 0, fail(op, err)
	}
	if src == 0 {
		return 0, invalid(op, "null source")
	}
	copy(bytesAt(dst, n), bytesAt(src, n))
	return 0, nil
}

// CopyOut copies n bytes from src, which must lie in registered memory, to
// dst, memory the caller owns (a Python bytearray) (read_bytes_from_buffer).
func (e *Engine) CopyOut(dst, src uintptr, n int64) (rc int, err error) {
	const op = "read_bytes_from_buffer"
	defer recoverInto(op, e.log, &err)
	e.memMu.RLock()
	defer e.memMu.RUnlock()
	if err := e.check(op); err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, invalid(op, "negative length %d", n)
	}
	if n == 0 {
		return 0, nil
	}
	if err := e.eng.CheckLocal(src, uint64(n)); err != nil {
		return 0, fail(op, err)
	}
	if dst == 0 {
		return 0, invalid(op, "null destination")
	}
	copy(bytesAt(dst, n), bytesAt(src, n))
	return 0, nil
}

// FirstBufferAddress returns the address of the first buffer the segment
// publishes (get_first_buffer_address). A segment with no buffer is an
// error; so is one that cannot be opened (Mooncake dereferences null).
func (e *Engine) FirstBufferAddress(segment string) (addr uintptr, err error) {
	const op = "get_first_buffer_address"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.env.TransferTimeout)
	defer cancel()
	a, err := e.eng.FirstBufferAddress(ctx, segment)
	if err != nil {
		return 0, fail(op, err)
	}
	return uintptr(a), nil
}

// Notifies moves the oldest notifies received, at most max of them, into
// [dst, dst+capacity), memory the caller owns (a Python bytearray), for
// get_notifies, which calls it until the queue is drained: each call costs
// what it moves, never the whole queue. It writes, little-endian:
//
//	u64 taken, u64 left (notifies still queued)
//	taken times: u32 name length, u32 msg length, name, msg
//
// and returns the bytes written; 0, writing nothing, when no notify is
// queued. When the oldest notify does not fit, it takes nothing and returns
// minus the capacity that would hold it.
func (e *Engine) Notifies(dst uintptr, capacity int64, max int64) (n int64, err error) {
	const op = "get_notifies"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	switch {
	case capacity < notifyHeader:
		return 0, invalid(op, "buffer of %d bytes (want at least %d)", capacity, notifyHeader)
	case dst == 0:
		return 0, invalid(op, "null buffer")
	case max < 1:
		return 0, invalid(op, "at most %d notifies (want at least 1)", max)
	}
	room, need := capacity-notifyHeader, int64(0)
	ns, left := e.eng.TakeNotifies(int(min(max, maxList)), func(n *engine.Notify) bool {
		size := notifyRecord + int64(len(n.Name)) + int64(len(n.Msg))
		if size > room {
			need = notifyHeader + size
			return false
		}
		room -= size
		return true
	})
	switch {
	case len(ns) == 0 && need > 0:
		return -need, nil
	case len(ns) == 0 && left == 0:
		return 0, nil // the common case of a polled, empty queue
	}
	out := bytesAt(dst, capacity)
	binary.LittleEndian.PutUint64(out[0:], uint64(len(ns)))
	binary.LittleEndian.PutUint64(out[8:], uint64(left))
	at := int64(notifyHeader)
	for _, v := range ns {
		binary.LittleEndian.PutUint32(out[at:], uint32(len(v.Name)))
		binary.LittleEndian.PutUint32(out[at+4:], uint32(len(v.Msg)))
		at += notifyRecord
		at += int64(copy(out[at:], v.Name))
		at += int64(copy(out[at:], v.Msg))
	}
	return at, nil
}

// The layout Notifies writes: a header, then a record header per notify.
const (
	notifyHeader = 16
	notifyRecord = 8
)

// SendProbe asks the engine called peer to answer a Probe (send_probe).
func (e *Engine) SendProbe(peer string) (rc int, err error) {
	const op = "send_probe"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.env.HandshakeConnectTimeout+5*time.Second)
	defer cancel()
	if err := e.eng.Probe(ctx, peer); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}

// recoverInto turns a panic into an error for the deferring call. It must be
// deferred directly. log may be nil.
func recoverInto(op string, log *zap.Logger, err *error) {
	r := recover()
	if r == nil {
		return
	}
	if log != nil {
		log.Error("recovered panic", zap.String("op", op), zap.Any("panic", r), zap.StackSkip("stack", 1))
	}
	*err = fail(op, fmt.Errorf("%w: panic: %v", errInternal, r))
}

// CheckLocal returns an error unless [addr, addr+n) lies inside one
// registered region; Python calls it before allocating n bytes for
// read_bytes_from_buffer.
func (e *Engine) CheckLocal(addr uintptr, n int64) (rc int, err error) {
	const op = "read_bytes_from_buffer"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, invalid(op, "negative length %d", n)
	}
	if err := e.eng.CheckLocal(addr, uint64(n)); err != nil {
		return 0, fail(op, err)
	}
	return 0, nil
}
