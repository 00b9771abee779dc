package engine

import (
	"errors"
	"fmt"
	"strconv"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/memory"
	"github.com/pymooncake/pymooncake/core/transport"
)

// RegisterMemory registers [addr, addr+length) so that peers may read and
// write it. location is "*", "cpu:N" or "cuda:N". With a GPU driver, where
// the memory lives is detected: GPU memory is recorded as "cuda:<ordinal>"
// whatever location was given.
func (e *Engine) RegisterMemory(addr uintptr, length uint64, location string) error {
	return e.RegisterMemoryBatch([]uintptr{addr}, []uint64{length}, location)
}

// RegisterMemoryBatch registers several regions at once: all or none, with
// one descriptor publication. Transports that register memory with their
// hardware (transport.Registrar) get every region; a failure anywhere
// undoes the whole batch.
func (e *Engine) RegisterMemoryBatch(addrs []uintptr, lengths []uint64, location string) error {
	if e.closed.Load() {
		return ErrClosed
	}
	if len(addrs) != len(lengths) {
		return fmt.Errorf("register memory: %d addresses but %d lengths: %w", len(addrs), len(lengths), ErrInvalidArgument)
	}
	rs := make([]memory.Region, len(addrs))
	for i := range addrs {
		rs[i] = memory.Region{Addr: uint64(addrs[i]), Length: lengths[i], Location: location, Device: memory.Host}
	}
	if err := e.locate(rs); err != nil {
		return err
	}
	if err := e.mem.Add(rs); err != nil {
		return err
	}
	starts := make([]uint64, len(rs))
	for i, r := range rs {
		starts[i] = r.Addr
	}
	done, err := e.registerWithTransports(rs)
	if err == nil {
		if err = e.publishDesc(e.ctx); err != nil {
			err = fmt.Errorf("register memory: %w", err)
		}
	}
	if err != nil {
		e.unregisterWithTransports(done)
		if _, rerr := e.mem.Remove(starts); rerr != nil {
			e.log.Error("undo a failed registration", zap.Error(rerr))
		}
		_ = e.mem.Wait(e.ctx, 0, starts) // nothing can hold them: just forget them
		return err
	}
	return nil
}

// registeredRegion is one region registered with one transport.
type registeredRegion struct {
	x transport.Registrar
	r memory.Region
}

// registerWithTransports registers rs with every Registrar and returns what
// it registered, also when it fails part way.
func (e *Engine) registerWithTransports(rs []memory.Region) ([]registeredRegion, error) {
	var done []registeredRegion
	for _, x := range e.xps {
		reg, ok := x.(transport.Registrar)
		if !ok {
			continue
		}
		for _, r := range rs {
			if err := reg.RegisterMemory(r.Addr, r.Length, r.Location); err != nil {
				return done, fmt.Errorf("register memory [%#x, +%d) with %s: %w", r.Addr, r.Length, x.Name(), err)
			}
			done = append(done, registeredRegion{reg, r})
		}
	}
	return done, nil
}

func (e *Engine) unregisterWithTransports(done []registeredRegion) {
	for _, d := range done {
		if err := d.x.UnregisterMemory(d.r.Addr); err != nil {
			e.log.Warn("undo registration", zap.Uint64("addr", d.r.Addr), zap.Error(err))
		}
	}
}

// UnregisterMemory unregisters the region starting at addr.
func (e *Engine) UnregisterMemory(addr uintptr) error {
	return e.UnregisterMemoryBatch([]uintptr{addr})
}

// UnregisterMemoryBatch unregisters several regions by start address: all
// or none. When it returns, no peer request touches them any more: new
// ones are refused at once, and those that a transport was serving (their
// ranges pinned) have finished, within MC_TRANSFER_TIMEOUT.
func (e *Engine) UnregisterMemoryBatch(addrs []uintptr) error {
	if e.closed.Load() {
		return ErrClosed
	}
	starts := make([]uint64, len(addrs))
	for i, a := range addrs {
		if e.managed.Holds(a) {
			return fmt.Errorf("unregister %#x: the managed buffer pool lives there and has buffers allocated: %w", a, ErrInvalidArgument)
		}
		starts[i] = uint64(a)
	}
	removed, err := e.mem.Remove(starts)
	if err != nil {
		return err
	}
	if err := e.publishDesc(e.ctx); err != nil {
		if rerr := e.mem.Restore(removed); rerr != nil { // still registered everywhere
			e.log.Error("restore registrations after a failed publication", zap.Error(rerr))
		}
		return fmt.Errorf("unregister memory: %w", err)
	}
	var errs []error
	if err := e.mem.Wait(e.ctx, e.cfg.Env.TransferTimeout, starts); err != nil {
		errs = append(errs, err)
	}
	for _, x := range e.xps {
		reg, ok := x.(transport.Registrar)
		if !ok {
			continue
		}
		for _, r := range removed {
			if err := reg.UnregisterMemory(r.Addr); err != nil {
				errs = append(errs, fmt.Errorf("unregister [%#x, +%d) from %s: %w", r.Addr, r.Length, x.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// CheckLocal reports whether [addr, addr+length) lies inside one registered
// region of this engine.
func (e *Engine) CheckLocal(addr uintptr, length uint64) error {
	// The bounce buffers of stream-ordered transfers are local memory of
	// the engine's own: never published, never reachable by peers.
	if !e.mem.Contains(uint64(addr), length) && !e.bounces.Contains(uint64(addr), length) {
		return fmt.Errorf("local range [%#x, +%d) is not inside registered memory: %w", addr, length, ErrAddressNotRegistered)
	}
	return nil
}

// locate asks the GPU driver where each region lives. Device memory gets
// its ordinal and the location "cuda:<ordinal>", whatever the caller said;
// host memory keeps the caller's location. Without a driver nothing
// changes: no GPU memory can exist in the process.
func (e *Engine) locate(rs []memory.Region) error {
	if e.cfg.GPU == nil {
		return nil
	}
	for i := range rs {
		r := &rs[i]
		if r.Length == 0 || r.Addr == 0 {
			continue // refused by the table with the usual error
		}
		ord, err := e.cfg.GPU.Locate(uintptr(r.Addr), r.Length)
		if errors.Is(err, gpu.ErrInvalidRange) {
			return fmt.Errorf("register [%#x, +%d): %w: %w", r.Addr, r.Length, ErrInvalidArgument, err)
		}
		if err != nil {
			return fmt.Errorf("register [%#x, +%d): locate memory: %w", r.Addr, r.Length, err)
		}
		r.Device = ord
		if ord != gpu.Host {
			r.Location = "cuda:" + strconv.Itoa(ord)
		}
	}
	return nil
}

// registerBounce registers a new bounce buffer of stream-ordered transfers
// with every transport that registers local memory (RDMA memory regions,
// barex keys), so that those transports can move it. It is host memory of
// the engine's own, never published.
func (e *Engine) registerBounce(addr uintptr, size int) error {
	r := memory.Region{Addr: uint64(addr), Length: uint64(size), Location: "*", Device: memory.Host}
	done, err := e.registerWithTransports([]memory.Region{r})
	if err != nil {
		e.unregisterWithTransports(done)
		return fmt.Errorf("%w (the transport cannot move the bounce buffers of stream-ordered transfers)", err)
	}
	return nil
}

func (e *Engine) unregisterBounce(addr uintptr) {
	for _, x := range e.xps {
		if reg, ok := x.(transport.Registrar); ok {
			if err := reg.UnregisterMemory(uint64(addr)); err != nil {
				e.log.Warn("unregister a bounce buffer", zap.String("transport", x.Name()), zap.Error(err))
			}
		}
	}
}
