package gpu

import (
	"errors"
	"fmt"
	"sync"
)

// Bounce buffers: the page-locked host buffers that stream-ordered
// transfers (Mooncake's *_on_cuda) move GPU memory through, so that nothing
// touches the driver while a stream is held.
const (
	// MaxBounce bounds the GPU bytes of one stream-ordered transfer.
	MaxBounce = 16 << 30
	// bounceIdle is how many bytes of returned buffers are kept for reuse.
	bounceIdle = 1 << 30
	// bounceGranule rounds buffer sizes, so buffers are reused across
	// transfers of slightly different sizes.
	bounceGranule = 2 << 20
)

// ErrBouncePoolClosed is a Get after Close.
var ErrBouncePoolClosed = errors.New("bounce buffer pool closed")

// BounceBuf is a page-locked host buffer lent by a BouncePool.
type BounceBuf struct {
	drv  Driver
	Addr uintptr
	Size int
}

// BouncePool lends page-locked buffers and keeps up to 1 GiB of returned
// ones. Each buffer is handed to Register when it is allocated and to
// Unregister before it is freed (the engine registers them with the
// transports that need local memory registered, such as RDMA); a buffer
// that cannot be registered is freed and its Get fails.
type BouncePool struct {
	Register   func(addr uintptr, size int) error
	Unregister func(addr uintptr)

	mu     sync.Mutex
	idle   []BounceBuf     // guarded by mu
	bytes  int             // guarded by mu: of idle
	lent   map[uintptr]int // guarded by mu: address → size
	closed bool            // guarded by mu
}

// Get lends a buffer of at least n bytes of device ord's driver.
func (p *BouncePool) Get(drv Driver, ord, n int) (BounceBuf, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return BounceBuf{}, ErrBouncePoolClosed
	}
	best := -1
	for i, b := range p.idle {
		if b.drv == drv && b.Size >= n && (best < 0 || b.Size < p.idle[best].Size) {
			best = i
		}
	}
	if best >= 0 {
		b := p.idle[best]
		p.idle = append(p.idle[:best], p.idle[best+1:]...)
		p.bytes -= b.Size
		p.lend(b)
		p.mu.Unlock()
		return b, nil
	}
	p.mu.Unlock()
	size := (n + bounceGranule - 1) / bounceGranule * bounceGranule
	addr, err := drv.AllocHost(ord, size)
	if err != nil {
		return BounceBuf{}, fmt.Errorf("%d bytes of page-locked memory: %w", size, err)
	}
	if p.Register != nil {
		if err := p.Register(addr, size); err != nil {
			_ = drv.FreeHost(addr)
			return BounceBuf{}, fmt.Errorf("register a bounce buffer of %d bytes: %w", size, err)
		}
	}
	b := BounceBuf{drv: drv, Addr: addr, Size: size}
	p.mu.Lock()
	p.lend(b)
	p.mu.Unlock()
	return b, nil
}

func (p *BouncePool) lend(b BounceBuf) {
	if p.lent == nil {
		p.lent = map[uintptr]int{}
	}
	p.lent[b.Addr] = b.Size
}

// Put takes back a buffer no stream uses any more.
func (p *BouncePool) Put(b BounceBuf) {
	p.mu.Lock()
	delete(p.lent, b.Addr)
	keep := !p.closed && p.bytes+b.Size <= bounceIdle
	if keep {
		p.idle = append(p.idle, b)
		p.bytes += b.Size
	}
	p.mu.Unlock()
	if !keep {
		p.free(b)
	}
}

// Forget drops a buffer a stream may still copy to or from: it is neither
// reused nor freed (freeing it under a pending copy would be worse).
func (p *BouncePool) Forget(b BounceBuf) {
	p.mu.Lock()
	delete(p.lent, b.Addr)
	p.mu.Unlock()
}

// Contains reports whether [addr, addr+n) lies in a lent buffer.
func (p *BouncePool) Contains(addr, n uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, size := range p.lent {
		if addr >= uint64(a) && addr+n <= uint64(a)+uint64(size) && addr+n >= addr {
			return true
		}
	}
	return false
}

func (p *BouncePool) free(b BounceBuf) error {
	if p.Unregister != nil {
		p.Unregister(b.Addr)
	}
	return b.drv.FreeHost(b.Addr)
}

// Close frees the idle buffers and refuses new ones; lent ones are freed
// when put back.
func (p *BouncePool) Close() error {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle, p.bytes = nil, 0
	p.mu.Unlock()
	var errs []error
	for _, b := range idle {
		errs = append(errs, p.free(b))
	}
	return errors.Join(errs...)
}
