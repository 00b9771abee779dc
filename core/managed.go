package core

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"
)

// Managed buffers reproduce Mooncake's buddy allocator for
// allocate_managed_buffer: 16 size classes of 8 KiB to 256 MiB carved from
// registered 2 GiB pools, created lazily on first use (Mooncake 0.3.9+).
// A block is split in halves on demand and never coalesced, as Mooncake's.
// Requests above 256 MiB get their own registration. Unlike Mooncake, a free
// of an address that is not a live block of that size is refused.
const (
	managedMinClass  = 8 << 10
	managedClasses   = 16
	managedMaxClass  = managedMinClass << (managedClasses - 1) // 256 MiB
	managedPoolBytes = 2 << 30
)

type managedPool struct {
	e  *Engine
	mu sync.Mutex
	// free holds free block addresses per class.
	free [managedClasses][]uintptr // +checklocks:mu
	// live maps allocated blocks to their class, or -1 for dedicated ones.
	live map[uintptr]int // +checklocks:mu
	// maps are the mmap'd regions, unmapped at Close.
	maps map[uintptr][]byte // +checklocks:mu
}

// managedClass is the smallest class holding n bytes, or -1 above 256 MiB.
func managedClass(n uint64) int {
	size := uint64(managedMinClass)
	for c := 0; c < managedClasses; c++ {
		if n <= size {
			return c
		}
		size <<= 1
	}
	return -1
}

func classSize(c int) uintptr { return uintptr(managedMinClass) << c }

// AllocateManaged returns the address of a registered buffer of at least
// length bytes.
func (e *Engine) AllocateManaged(length uint64) (uintptr, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	if length == 0 {
		return 0, fmt.Errorf("allocate managed buffer of 0 bytes: %w", ErrInvalidArgument)
	}
	if length > 1<<46 {
		return 0, fmt.Errorf("allocate managed buffer of %d bytes: %w", length, ErrInvalidArgument)
	}
	p := e.managedPool()
	p.mu.Lock()
	defer p.mu.Unlock()
	c := managedClass(length)
	if c < 0 {
		return p.dedicated(length)
	}
	addr, err := p.take(c)
	if err != nil {
		return 0, err
	}
	p.live[addr] = c
	return addr, nil
}

// FreeManaged returns a buffer from AllocateManaged; length must be the
// length it was allocated with (as Mooncake's free_managed_buffer).
func (e *Engine) FreeManaged(addr uintptr, length uint64) error {
	p := e.managedPool()
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.live[addr]
	if !ok {
		return fmt.Errorf("free managed buffer %#x: not allocated: %w", addr, ErrInvalidArgument)
	}
	if want := managedClass(length); want != c {
		return fmt.Errorf("free managed buffer %#x with length %d: allocated in another size class: %w", addr, length, ErrInvalidArgument)
	}
	delete(p.live, addr)
	if c < 0 {
		err := e.UnregisterMemory(addr)
		if uerr := p.unmap(addr); err == nil {
			err = uerr
		}
		return err
	}
	p.free[c] = append(p.free[c], addr)
	return nil
}

func (e *Engine) managedPool() *managedPool {
	e.publishMu.Lock() // reused: pool creation is rare
	defer e.publishMu.Unlock()
	if e.managed == nil {
		e.managed = &managedPool{e: e, live: map[uintptr]int{}, maps: map[uintptr][]byte{}}
	}
	return e.managed
}

// take pops a block of class c, splitting larger blocks or creating a pool.
func (p *managedPool) take(c int) (uintptr, error) {
	if n := len(p.free[c]); n > 0 {
		a := p.free[c][n-1]
		p.free[c] = p.free[c][:n-1]
		return a, nil
	}
	if c == managedClasses-1 {
		base, err := p.mmapRegistered(managedPoolBytes)
		if err != nil {
			return 0, err
		}
		for off := uintptr(managedPoolBytes) - managedMaxClass; ; off -= managedMaxClass {
			p.free[c] = append(p.free[c], base+off)
			if off == 0 {
				break
			}
		}
		return p.take(c)
	}
	big, err := p.take(c + 1)
	if err != nil {
		return 0, err
	}
	p.free[c] = append(p.free[c], big+classSize(c))
	return big, nil
}

func (p *managedPool) dedicated(length uint64) (uintptr, error) {
	page := uint64(syscall.Getpagesize())
	addr, err := p.mmapRegistered((length + page - 1) / page * page)
	if err != nil {
		return 0, err
	}
	p.live[addr] = -1
	return addr, nil
}

// mmapRegistered maps anonymous memory (pages are committed on first touch)
// and registers it.
func (p *managedPool) mmapRegistered(n uint64) (uintptr, error) {
	b, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		return 0, fmt.Errorf("allocate managed pool of %d bytes: %w", n, err)
	}
	addr := uintptr(unsafe.Pointer(&b[0]))
	if err := p.e.RegisterMemory(addr, n, "*"); err != nil {
		syscall.Munmap(b)
		return 0, fmt.Errorf("register managed pool: %w", err)
	}
	p.maps[addr] = b
	return addr, nil
}

func (p *managedPool) unmap(addr uintptr) error {
	b, ok := p.maps[addr]
	if !ok {
		return nil
	}
	delete(p.maps, addr)
	return syscall.Munmap(b)
}

// close unmaps every pool. The engine has stopped: no transfer can touch them.
func (p *managedPool) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for a := range p.maps {
		errs = append(errs, p.unmap(a))
	}
	p.live = map[uintptr]int{}
	p.free = [managedClasses][]uintptr{}
	return errors.Join(errs...)
}
