package managed

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/internal/errs"
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

// Pool is the allocator of allocate_managed_buffer. It registers the memory
// it maps through the functions it was given, and unmaps it at Close.
type Pool struct {
	register   func(addr uintptr, n uint64) error
	unregister func(addr uintptr) error

	mu sync.Mutex
	// free holds free block addresses per class.
	free [managedClasses][]uintptr // +checklocks:mu
	// live maps allocated blocks to their class, or -1 for dedicated ones.
	live map[uintptr]int // +checklocks:mu
	// maps are the mmap'd regions, unmapped at Close.
	maps   map[uintptr][]byte // +checklocks:mu
	closed bool               // +checklocks:mu
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

// New returns an empty pool: its first allocation maps and registers a
// 2 GiB pool (Mooncake 0.3.9+ creates it lazily too).
func New(register func(addr uintptr, n uint64) error, unregister func(addr uintptr) error) *Pool {
	return &Pool{register: register, unregister: unregister, live: map[uintptr]int{}, maps: map[uintptr][]byte{}}
}

// Alloc returns the address of a registered buffer of at least length
// bytes.
func (p *Pool) Alloc(length uint64) (uintptr, error) {
	if length == 0 {
		return 0, fmt.Errorf("allocate managed buffer of 0 bytes: %w", errs.InvalidArgument)
	}
	if length > 1<<46 {
		return 0, fmt.Errorf("allocate managed buffer of %d bytes: %w", length, errs.InvalidArgument)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, errs.Closed
	}
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

// Free returns a buffer from Alloc; length must be the length it was
// allocated with (as Mooncake's free_managed_buffer).
func (p *Pool) Free(addr uintptr, length uint64) error {
	p.mu.Lock()
	c, ok := p.live[addr]
	if !ok {
		p.mu.Unlock()
		return fmt.Errorf("free managed buffer %#x: not allocated: %w", addr, errs.InvalidArgument)
	}
	if want := managedClass(length); want != c {
		p.mu.Unlock()
		return fmt.Errorf("free managed buffer %#x with length %d: allocated in another size class: %w", addr, length, errs.InvalidArgument)
	}
	delete(p.live, addr)
	if c >= 0 {
		p.free[c] = append(p.free[c], addr)
		p.mu.Unlock()
		return nil
	}
	// A dedicated buffer: unregistered and unmapped outside the lock, since
	// unregistering asks Holds.
	b := p.maps[addr]
	delete(p.maps, addr)
	p.mu.Unlock()
	err := p.unregister(addr)
	if b != nil {
		if uerr := syscall.Munmap(b); err == nil {
			err = uerr
		}
	}
	return err
}

// Holds reports whether addr is the start of memory the pool mapped and
// registered (a 2 GiB pool or a dedicated buffer) while any buffer is
// allocated from it: unregistering it would pull registered memory from
// under live buffers.
func (p *Pool) Holds(addr uintptr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.maps[addr]
	return ok && len(p.live) > 0
}

// take pops a block of class c, splitting larger blocks or creating a pool.
func (p *Pool) take(c int) (uintptr, error) {
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

func (p *Pool) dedicated(length uint64) (uintptr, error) {
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
func (p *Pool) mmapRegistered(n uint64) (uintptr, error) {
	b, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS|syscall.MAP_NORESERVE)
	if err != nil {
		return 0, fmt.Errorf("allocate managed pool of %d bytes: %w", n, err)
	}
	addr := uintptr(unsafe.Pointer(&b[0]))
	if err := p.register(addr, n); err != nil {
		syscall.Munmap(b)
		return 0, fmt.Errorf("register managed pool: %w", err)
	}
	p.maps[addr] = b
	return addr, nil
}

func (p *Pool) unmap(addr uintptr) error {
	b, ok := p.maps[addr]
	if !ok {
		return nil
	}
	delete(p.maps, addr)
	return syscall.Munmap(b)
}

// Close unmaps every pool and refuses later allocations. The engine has
// stopped: no transfer can touch them.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for a := range p.maps {
		errs = append(errs, p.unmap(a))
	}
	p.live = map[uintptr]int{}
	p.free = [managedClasses][]uintptr{}
	return errors.Join(errs...)
}
