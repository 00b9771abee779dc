//go:build unix

package fake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/gpu"
)

var (
	// ErrInjected is the failure FailCopiesAfter injects.
	ErrInjected = errors.New("fake gpu: injected copy failure")
	// ErrInvalidValue is a copy of memory the copier may not use, as
	// CUDA_ERROR_INVALID_VALUE.
	ErrInvalidValue = errors.New("fake gpu: invalid value")
	// ErrLeak is returned by Close when resources were never released.
	ErrLeak = errors.New("fake gpu: resources leaked")
	// ErrClosed is a call on a closed driver or copier.
	ErrClosed = errors.New("fake gpu: closed")
	// ErrHeld is a driver call made while a gate holds a stream, under
	// RefuseCallsWhileHeld.
	ErrHeld = errors.New("fake gpu: driver call while a stream is held")
)

// Driver is the fake. The zero value is not usable; call New.
type Driver struct {
	devices int

	mu      sync.Mutex
	allocs  []*devAlloc         // guarded by mu, sorted by address
	hosts   map[uintptr][]byte  // guarded by mu
	streams map[uintptr]*stream // guarded by mu
	nextStr uintptr             // guarded by mu
	closed  bool                // guarded by mu

	copiers   atomic.Int64
	gates     atomic.Int64
	copied    atomic.Int64
	inject    atomic.Bool  // FailCopiesAfter is in force
	failAfter atomic.Int64 // copies that still succeed before the failures
	held      atomic.Int64 // gates reached and not yet opened
	strict    atomic.Bool  // RefuseCallsWhileHeld
	noDmaBuf  atomic.Bool  // SetDmaBuf(false)

	uuids   []gpu.UUID            // guarded by mu: DeviceUUID, SetUUIDs
	opened  map[uint64]*openedIPC // guarded by mu: legacy handles open here, by export id
	maps    atomic.Int64          // IPC mappings not yet closed
	events  atomic.Int64          // events not yet closed
	imports atomic.Int64          // OpenIPC calls that mapped memory
}

var _ gpu.Driver = (*Driver)(nil)

type devAlloc struct {
	ord    int
	addr   uintptr
	dev    []byte   // PROT_NONE view at the device address
	shadow []byte   // read-write view of the same pages
	file   *os.File // the pages: what ExportDmaBuf hands out
	kind   allocKind
	id     uint64 // legacy IPC export id, once exported (0: never)
}

// allocKind says how fake device memory was made, and so how it is
// shared with another fake driver.
type allocKind uint8

const (
	// legacyAlloc is cuMemAlloc-like memory (Alloc): a legacy IPC handle.
	legacyAlloc allocKind = iota
	// vmmAlloc is cuMemCreate-like memory with a POSIX fd handle type.
	vmmAlloc
	// vmmPrivate is cuMemCreate-like memory without a shareable handle
	// type (or a stream-ordered pool's): it cannot be exported.
	vmmPrivate
	// importedAlloc is another fake driver's memory mapped here (OpenIPC);
	// only closing its mapping unmaps it.
	importedAlloc
)

// New returns a fake driver with the given number of devices. Their UUIDs
// depend only on their ordinals, so fake drivers of one test process (the
// "processes" of a host) see the same GPUs unless SetUUIDs says otherwise.
func New(devices int) *Driver {
	d := &Driver{devices: devices, hosts: map[uintptr][]byte{}, streams: map[uintptr]*stream{}, nextStr: 0x1000,
		opened: map[uint64]*openedIPC{}}
	for i := range devices {
		d.uuids = append(d.uuids, defaultUUID(i))
	}
	return d
}

func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// Name says what this is.
func (d *Driver) Name() string { return fmt.Sprintf("fake GPU driver (%d devices)", d.devices) }

// Alloc returns n bytes of fake device memory on device ord, zeroed, as
// cuMemAlloc (cudaMalloc, torch's caching allocator) would: shared with
// another fake driver through a legacy IPC handle.
func (d *Driver) Alloc(ord, n int) (uintptr, error) { return d.alloc(ord, n, legacyAlloc) }

// AllocVMM returns n bytes of fake device memory on device ord, zeroed, as
// cuMemCreate plus cuMemMap would (NVLinkAllocator, torch's expandable
// segments): exportable as a POSIX file descriptor when shareable, else
// not exportable at all.
func (d *Driver) AllocVMM(ord, n int, shareable bool) (uintptr, error) {
	if shareable {
		return d.alloc(ord, n, vmmAlloc)
	}
	return d.alloc(ord, n, vmmPrivate)
}

func (d *Driver) alloc(ord, n int, kind allocKind) (uintptr, error) {
	if ord < 0 || ord >= d.devices {
		return 0, fmt.Errorf("fake gpu: alloc on device %d of %d: %w", ord, d.devices, ErrInvalidValue)
	}
	if n <= 0 {
		return 0, fmt.Errorf("fake gpu: alloc of %d bytes: %w", n, ErrInvalidValue)
	}
	f, err := os.CreateTemp("", "fake-gpu-*")
	if err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if err := os.Remove(f.Name()); err != nil {
		return 0, err
	}
	if err := f.Truncate(int64(n)); err != nil {
		return 0, err
	}
	dev, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_NONE, syscall.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("fake gpu: map device view: %w", err)
	}
	shadow, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		_ = syscall.Munmap(dev)
		return 0, fmt.Errorf("fake gpu: map shadow view: %w", err)
	}
	ok = true
	a := &devAlloc{ord: ord, addr: addrOf(dev), dev: dev, shadow: shadow, file: f, kind: kind}
	d.add(a)
	return a.addr, nil
}

// add records a new allocation (or imported mapping) of this driver.
func (d *Driver) add(a *devAlloc) {
	d.mu.Lock()
	d.addLocked(a)
	d.mu.Unlock()
	global.add(d, a)
}

// addLocked inserts a into d.allocs; the caller holds mu and then adds it
// to the global registry.
func (d *Driver) addLocked(a *devAlloc) {
	d.allocs = append(d.allocs, a)
	sort.Slice(d.allocs, func(i, j int) bool { return d.allocs[i].addr < d.allocs[j].addr })
}

// Free releases memory from Alloc.
func (d *Driver) Free(addr uintptr) error {
	d.mu.Lock()
	i := sort.Search(len(d.allocs), func(i int) bool { return d.allocs[i].addr >= addr })
	if i == len(d.allocs) || d.allocs[i].addr != addr {
		d.mu.Unlock()
		return fmt.Errorf("fake gpu: free %#x: %w", addr, ErrInvalidValue)
	}
	a := d.allocs[i]
	if a.kind == importedAlloc {
		d.mu.Unlock()
		return fmt.Errorf("fake gpu: free %#x: an IPC mapping (close it instead): %w", addr, ErrInvalidValue)
	}
	d.allocs = append(d.allocs[:i], d.allocs[i+1:]...)
	d.mu.Unlock()
	return a.release()
}

// remove forgets an allocation of this driver; false if it was not there.
func (d *Driver) remove(a *devAlloc) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, b := range d.allocs {
		if b == a {
			d.allocs = append(d.allocs[:i], d.allocs[i+1:]...)
			return true
		}
	}
	return false
}

// release unmaps the allocation and closes its file.
func (a *devAlloc) release() error {
	global.remove(a)
	return errors.Join(syscall.Munmap(a.dev), syscall.Munmap(a.shadow), a.file.Close())
}

// find returns the allocation holding addr, or nil. Callers hold mu.
func (d *Driver) find(addr uintptr) *devAlloc {
	i := sort.Search(len(d.allocs), func(i int) bool { return d.allocs[i].addr > addr })
	if i == 0 {
		return nil
	}
	a := d.allocs[i-1]
	if addr < a.addr+uintptr(len(a.dev)) {
		return a
	}
	return nil
}

// shadow returns the read-write view of [addr, addr+n) of device memory
// (of device ord, unless ord < 0).
func (d *Driver) shadow(addr uintptr, n int, ord int) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.find(addr)
	if a == nil || n < 0 || addr+uintptr(n) > a.addr+uintptr(len(a.dev)) {
		return nil, fmt.Errorf("fake gpu: [%#x, +%d) is not fake device memory: %w", addr, n, ErrInvalidValue)
	}
	if ord >= 0 && a.ord != ord {
		return nil, fmt.Errorf("fake gpu: [%#x, +%d) is on device %d, not %d: %w", addr, n, a.ord, ord, ErrInvalidValue)
	}
	off := int(addr - a.addr)
	return a.shadow[off : off+n], nil
}

// Write copies b to fake device memory at dst (a kernel's or cudaMemcpy's
// store).
func (d *Driver) Write(dst uintptr, b []byte) error {
	s, err := d.shadow(dst, len(b), -1)
	if err != nil {
		return err
	}
	copy(s, b)
	return nil
}

// Read copies fake device memory at src into b.
func (d *Driver) Read(src uintptr, b []byte) error {
	s, err := d.shadow(src, len(b), -1)
	if err != nil {
		return err
	}
	copy(b, s)
	return nil
}

// FailCopiesAfter makes every copy after the next n fail with ErrInjected
// (and the copier that ran it, as a CUDA error would); a negative n stops
// injecting.
func (d *Driver) FailCopiesAfter(n int) {
	d.inject.Store(false)
	if n >= 0 {
		d.failAfter.Store(int64(n))
		d.inject.Store(true)
	}
}

// RefuseCallsWhileHeld makes the staging calls (NewCopier and every
// copier call) fail with ErrHeld while a reached gate holds a stream: a
// real driver call then may wait for the held stream (a device-wide
// synchronisation in another thread, such as a lazily loaded kernel's,
// waits for it and blocks the driver), so a transfer that needs one to let
// the stream go can deadlock. Calls that the stream's release does not
// depend on (queueing copies and gates, host memory) stay allowed.
func (d *Driver) RefuseCallsWhileHeld(on bool) { d.strict.Store(on) }

func (d *Driver) checkHeld() error {
	if d.strict.Load() && d.held.Load() > 0 {
		return ErrHeld
	}
	return nil
}

// Copied is the number of bytes the copiers have copied.
func (d *Driver) Copied() int64 { return d.copied.Load() }

// Live returns the copiers, host allocations and gates not yet released.
func (d *Driver) Live() (copiers, hostAllocs, gates int) {
	d.mu.Lock()
	h := len(d.hosts)
	d.mu.Unlock()
	return int(d.copiers.Load()), h, int(d.gates.Load())
}

// Locate implements gpu.Driver.
func (d *Driver) Locate(addr uintptr, n uint64) (int, error) {
	if n == 0 {
		n = 1
	}
	end := addr + uintptr(n)
	if end < addr {
		return 0, fmt.Errorf("fake gpu: [%#x, +%d) wraps: %w", addr, n, gpu.ErrInvalidRange)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if a := d.find(addr); a != nil {
		if end > a.addr+uintptr(len(a.dev)) {
			return 0, fmt.Errorf("fake gpu: [%#x, +%d) runs past its allocation: %w", addr, n, gpu.ErrInvalidRange)
		}
		return a.ord, nil
	}
	for _, a := range d.allocs {
		if a.addr > addr && a.addr < end {
			return 0, fmt.Errorf("fake gpu: [%#x, +%d) runs into device memory: %w", addr, n, gpu.ErrInvalidRange)
		}
	}
	return gpu.Host, nil
}

// AllocHost implements gpu.Driver with anonymous memory.
func (d *Driver) AllocHost(ord, n int) (uintptr, error) {
	if ord < 0 || ord >= d.devices || n <= 0 {
		return 0, fmt.Errorf("fake gpu: host alloc of %d bytes for device %d: %w", n, ord, ErrInvalidValue)
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	d.mu.Lock()
	d.hosts[addrOf(b)] = b
	d.mu.Unlock()
	return addrOf(b), nil
}

// FreeHost implements gpu.Driver.
func (d *Driver) FreeHost(addr uintptr) error {
	d.mu.Lock()
	b, ok := d.hosts[addr]
	delete(d.hosts, addr)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("fake gpu: free host %#x: %w", addr, ErrInvalidValue)
	}
	return syscall.Munmap(b)
}

// hostRange returns [addr, addr+n) if it lies in one AllocHost buffer.
func (d *Driver) hostRange(addr uintptr, n int) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for base, b := range d.hosts {
		if addr >= base && addr+uintptr(n) <= base+uintptr(len(b)) {
			off := int(addr - base)
			return b[off : off+n], nil
		}
	}
	return nil, fmt.Errorf("fake gpu: [%#x, +%d) is not page-locked host memory: %w", addr, n, ErrInvalidValue)
}

// NewCopier implements gpu.Driver.
func (d *Driver) NewCopier(ord, slots int) (gpu.Copier, error) {
	if err := d.checkHeld(); err != nil {
		return nil, err
	}
	if ord < 0 || ord >= d.devices || slots <= 0 {
		return nil, fmt.Errorf("fake gpu: copier on device %d with %d slots: %w", ord, slots, ErrInvalidValue)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	d.copiers.Add(1)
	return &copier{d: d, ord: ord, last: make([]int, slots)}, nil
}

// copy is one queued copy.
type copyOp struct {
	dst, src []byte
}

type copier struct {
	d      *Driver
	ord    int
	queue  []copyOp // queued and not yet run
	done   int      // copies run so far
	total  int      // copies queued so far
	last   []int    // per slot: total after the last copy that marked it
	failed error    // sticky, as a CUDA context error
	closed bool
}

func (c *copier) enqueue(slot int, dst, src []byte) error {
	if err := c.d.checkHeld(); err != nil {
		return err
	}
	if c.closed {
		return ErrClosed
	}
	if slot < 0 || slot >= len(c.last) {
		return fmt.Errorf("fake gpu: slot %d: %w", slot, gpu.ErrBadSlot)
	}
	if c.failed != nil {
		return c.failed
	}
	c.queue = append(c.queue, copyOp{dst: dst, src: src})
	c.total++
	c.last[slot] = c.total
	return nil
}

func (c *copier) ToHost(slot int, dst, src uintptr, n int) error {
	s, err := c.d.shadow(src, n, c.ord)
	if err != nil {
		return err
	}
	h, err := c.d.hostRange(dst, n)
	if err != nil {
		return err
	}
	return c.enqueue(slot, h, s)
}

func (c *copier) ToDevice(slot int, dst, src uintptr, n int) error {
	s, err := c.d.shadow(dst, n, c.ord)
	if err != nil {
		return err
	}
	h, err := c.d.hostRange(src, n)
	if err != nil {
		return err
	}
	return c.enqueue(slot, s, h)
}

// run executes queued copies until `upto` have run.
func (c *copier) run(upto int) {
	for c.done < upto && len(c.queue) > 0 {
		op := c.queue[0]
		c.queue = c.queue[1:]
		c.done++
		if c.failed != nil {
			continue
		}
		if c.d.inject.Load() && c.d.failAfter.Add(-1) < 0 {
			c.failed = ErrInjected
			continue
		}
		copy(op.dst, op.src)
		c.d.copied.Add(int64(len(op.src)))
	}
}

func (c *copier) Wait(slot int) error {
	if err := c.d.checkHeld(); err != nil {
		return err
	}
	if c.closed {
		return ErrClosed
	}
	if slot < 0 || slot >= len(c.last) {
		return fmt.Errorf("fake gpu: slot %d: %w", slot, gpu.ErrBadSlot)
	}
	c.run(c.last[slot])
	return c.failed
}

func (c *copier) Close() error {
	if c.closed {
		return nil
	}
	c.run(c.total)
	c.closed = true
	c.d.copiers.Add(-1)
	return nil
}

// stream runs kernels and gates in order on its own goroutine.
type stream struct {
	ops  chan func()
	quit chan struct{}
	done chan struct{}
}

// NewStream creates a fake stream on device ord and returns its handle.
func (d *Driver) NewStream(ord int) (uintptr, error) {
	if ord < 0 || ord >= d.devices {
		return 0, fmt.Errorf("fake gpu: stream on device %d: %w", ord, ErrInvalidValue)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, ErrClosed
	}
	d.nextStr += 0x10
	h := d.nextStr
	d.streams[h] = d.startStream()
	return h, nil
}

// defaultStream returns the handle standing for stream 0 of device ord.
func (d *Driver) defaultStream(ord int) uintptr { return uintptr(ord + 1) }

func (d *Driver) startStream() *stream {
	s := &stream{ops: make(chan func(), 1024), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case op := <-s.ops:
				op()
			case <-s.quit:
				return
			}
		}
	}()
	return s
}

// stream returns the stream of handle h (0: device ord's default stream).
func (d *Driver) stream(h uintptr, ord int) (*stream, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	if h == 0 {
		if ord < 0 || ord >= d.devices {
			return nil, fmt.Errorf("fake gpu: default stream of device %d: %w", ord, ErrInvalidValue)
		}
		h = d.defaultStream(ord)
		if _, ok := d.streams[h]; !ok {
			d.streams[h] = d.startStream()
		}
	}
	s, ok := d.streams[h]
	if !ok {
		return nil, fmt.Errorf("fake gpu: stream %#x: %w", h, ErrInvalidValue)
	}
	return s, nil
}

// Launch queues fn (a kernel) on stream h; 0 is device 0's default stream.
func (d *Driver) Launch(h uintptr, fn func()) error {
	s, err := d.stream(h, 0)
	if err != nil {
		return err
	}
	s.ops <- fn
	return nil
}

// Synchronize waits until everything queued on stream h so far has run, or
// ctx ends.
func (d *Driver) Synchronize(ctx context.Context, h uintptr) error {
	done := make(chan struct{})
	if err := d.Launch(h, func() { close(done) }); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// CopyOnStream implements gpu.Driver: the copy runs when the fake stream
// gets to it. A failure then is recorded and returned by the next
// StreamError.
func (d *Driver) CopyOnStream(h uintptr, ord int, toDevice bool, dst, src uintptr, n int) error {
	s, err := d.stream(h, ord)
	if err != nil {
		return err
	}
	var to, from []byte
	if toDevice {
		to, err = d.shadow(dst, n, -1)
		if err == nil {
			from, err = d.hostRange(src, n)
		}
	} else {
		from, err = d.shadow(src, n, -1)
		if err == nil {
			to, err = d.hostRange(dst, n)
		}
	}
	if err != nil {
		return err
	}
	s.ops <- func() {
		copy(to, from)
		d.copied.Add(int64(n))
	}
	return nil
}

// Gate implements gpu.Driver on the fake streams.
func (d *Driver) Gate(h uintptr, ord int) (gpu.Gate, error) {
	s, err := d.stream(h, ord)
	if err != nil {
		return nil, err
	}
	g := &gate{d: d, reached: make(chan struct{}), open: make(chan struct{})}
	d.gates.Add(1)
	s.ops <- func() {
		g.mu.Lock()
		if !g.opened {
			g.holding = true
			d.held.Add(1)
		}
		g.mu.Unlock()
		close(g.reached)
		select {
		case <-g.open:
		case <-s.quit:
		}
	}
	return g, nil
}

type gate struct {
	d       *Driver
	reached chan struct{}
	open    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	opened  bool // guarded by mu
	holding bool // guarded by mu: counted in Driver.held
}

func (g *gate) Reached(ctx context.Context) error {
	select {
	case <-g.reached:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gate) Open() {
	g.once.Do(func() {
		g.mu.Lock()
		g.opened = true
		if g.holding {
			g.holding = false
			g.d.held.Add(-1)
		}
		g.mu.Unlock()
		close(g.open)
		g.d.gates.Add(-1)
	})
}

// SetDmaBuf says whether ExportDmaBuf works (the default) or fails with
// gpu.ErrNotSupported, as on a GPU or driver without dma-buf support.
func (d *Driver) SetDmaBuf(supported bool) { d.noDmaBuf.Store(!supported) }

// ExportDmaBuf implements gpu.Driver: the fake's dma-buf is a new file
// descriptor of the allocation's pages, so that what reads or maps it at
// Offset sees the device memory at addr.
func (d *Driver) ExportDmaBuf(addr uintptr, n uint64) (gpu.DmaBuf, error) {
	if d.noDmaBuf.Load() {
		return gpu.DmaBuf{}, fmt.Errorf("fake gpu: export dma-buf: %w", gpu.ErrNotSupported)
	}
	ord, err := d.Locate(addr, n)
	if err != nil {
		return gpu.DmaBuf{}, err
	}
	if ord == gpu.Host {
		return gpu.DmaBuf{}, fmt.Errorf("fake gpu: export dma-buf of [%#x, +%d): host memory: %w", addr, n, gpu.ErrInvalidRange)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	a := d.find(addr)
	if a == nil {
		return gpu.DmaBuf{}, fmt.Errorf("fake gpu: export dma-buf of [%#x, +%d): freed: %w", addr, n, ErrInvalidValue)
	}
	fd, err := syscall.Dup(int(a.file.Fd()))
	if err != nil {
		return gpu.DmaBuf{}, fmt.Errorf("fake gpu: export dma-buf: %w", err)
	}
	syscall.CloseOnExec(fd)
	return gpu.DmaBuf{FD: fd, Offset: uint64(addr - a.addr)}, nil
}

// Close stops the streams and frees the device memory still allocated. It
// fails with ErrLeak if copiers, host memory, gates, IPC mappings or events
// were not released.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	streams := d.streams
	d.streams = nil
	allocs := d.allocs
	d.allocs = nil
	hosts := len(d.hosts)
	d.mu.Unlock()
	for _, s := range streams {
		close(s.quit)
		<-s.done
	}
	var errs []error
	for _, a := range allocs {
		errs = append(errs, a.release())
	}
	if c, g := d.copiers.Load(), d.gates.Load(); c != 0 || g != 0 || hosts != 0 {
		errs = append(errs, fmt.Errorf("%d copiers, %d host allocations, %d gates: %w", c, hosts, g, ErrLeak))
	}
	if m, e := d.maps.Load(), d.events.Load(); m != 0 || e != 0 {
		errs = append(errs, fmt.Errorf("%d IPC mappings, %d events: %w", m, e, ErrLeak))
	}
	return errors.Join(errs...)
}
