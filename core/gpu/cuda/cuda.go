//go:build cgo && linux

package cuda

/*
#cgo CFLAGS: -I${SRCDIR}/include -O2 -Wall
#include <stdlib.h>
#include "helpers.h"
*/
import "C"

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// Library is the driver library Open loads by default.
const Library = "libcuda.so.1"

// Options configure Open.
type Options struct {
	// Library is the driver library to load; default Library. Only the
	// first successful Open of the process loads it; later ones must name
	// the same library (or none).
	Library string
}

// state is the process-wide driver: one table, one set of retained
// primary contexts.
var st struct {
	mu      sync.Mutex
	lib     *dl.Library // set once cuInit succeeded; never closed
	name    string
	version int
	devices int
	refs    int                 // open Drivers
	ctxs    map[int]C.CUcontext // retained primary contexts
}

// Driver is one reference to the loaded CUDA driver. It implements
// gpu.Driver and is safe for concurrent use.
type Driver struct {
	closed atomic.Bool
	mu     sync.Mutex
	hosts  map[uintptr]int // AllocHost memory → its device
}

var _ gpu.Driver = (*Driver)(nil)

func ptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// Open loads libcuda (on first use), initialises the driver and returns a
// reference to it. An absent library, a stub library or no visible device
// is an error matching ErrUnavailable, with the loader's or driver's text.
func Open(opts Options) (*Driver, error) {
	name := opts.Library
	if name == "" {
		name = Library
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.lib == nil {
		if err := load(name); err != nil {
			return nil, err
		}
	} else if name != st.name {
		return nil, fmt.Errorf("cuda: %s is loaded already; cannot load %s", st.name, name)
	}
	st.refs++
	return &Driver{hosts: map[uintptr]int{}}, nil
}

// load fills the table from the library and runs cuInit. st.mu is held.
func load(name string) error {
	l, err := dl.Open(name)
	if err != nil {
		return fmt.Errorf("load the CUDA driver: %w", err)
	}
	n := int(C.pymc_cu_count())
	for i := range n {
		sym := C.GoString(C.pymc_cu_sym(C.int(i)))
		p, err := l.Sym(sym)
		if err != nil {
			if C.pymc_cu_required(C.int(i)) != 0 {
				clearTable(n)
				_ = l.Close()
				return fmt.Errorf("load the CUDA driver: %w", err)
			}
			p = nil
		}
		C.pymc_cu_store(C.int(i), p)
	}
	var version, count C.int
	if r := Result(C.pymc_init(&version, &count)); r != 0 {
		clearTable(n)
		_ = l.Close()
		return fmt.Errorf("initialise the CUDA driver (%s): %w", name, callError("cuInit", r))
	}
	if count == 0 {
		clearTable(n)
		_ = l.Close()
		return fmt.Errorf("initialise the CUDA driver (%s): %w", name, ErrNoDevice)
	}
	st.lib, st.name, st.version, st.devices = l, name, int(version), int(count)
	st.ctxs = map[int]C.CUcontext{}
	return nil
}

func clearTable(n int) {
	for i := range n {
		C.pymc_cu_store(C.int(i), nil)
	}
}

// describe returns a CUresult's name and text, from the driver when it is
// loaded.
func describe(r Result) (name, text string) {
	if s := C.pymc_error_name(C.CUresult(r)); s != nil {
		name = C.GoString(s)
	} else if n, ok := names[r]; ok {
		name = n
	} else {
		name = fmt.Sprintf("CUDA_ERROR_%d", int(r))
	}
	if s := C.pymc_error_string(C.CUresult(r)); s != nil {
		text = C.GoString(s)
	}
	return name, text
}

// Table is the address of the loaded function table (struct pymc_cu of
// include/pymc_cuda.h), for allocator/'s C code.
func (d *Driver) Table() unsafe.Pointer { return C.pymc_cu_table() }

// Name describes the driver.
func (d *Driver) Name() string {
	return fmt.Sprintf("CUDA driver %d.%d (%d devices)", st.version/1000, st.version%1000/10, st.devices)
}

// Version is the driver's CUDA version, e.g. 13000 for 13.0.
func (d *Driver) Version() int { return st.version }

// DeviceCount is the number of visible devices.
func (d *Driver) DeviceCount() int { return st.devices }

// DeviceName is device ord's name.
func (d *Driver) DeviceName(ord int) (string, error) {
	var buf [256]C.char
	if r := Result(C.pymc_name(C.int(ord), &buf[0], C.int(len(buf)))); r != 0 {
		return "", callError("cuDeviceGetName", r)
	}
	return C.GoString(&buf[0]), nil
}

// Attribute is cuDeviceGetAttribute.
func (d *Driver) Attribute(ord, attr int) (int, error) {
	var v C.int
	if r := Result(C.pymc_attr(C.int(ord), C.int(attr), &v)); r != 0 {
		return 0, callError("cuDeviceGetAttribute", r)
	}
	return int(v), nil
}

// ctx returns device ord's primary context, retaining it on first use.
func (d *Driver) ctx(ord int) (C.CUcontext, error) {
	if d.closed.Load() {
		return nil, ErrClosed
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if ord < 0 || ord >= st.devices {
		return nil, fmt.Errorf("cuda: device %d of %d: %w", ord, st.devices, Result(101))
	}
	if c, ok := st.ctxs[ord]; ok {
		return c, nil
	}
	var c C.CUcontext
	if r := Result(C.pymc_ctx_retain(C.int(ord), &c)); r != 0 {
		return nil, callError("cuDevicePrimaryCtxRetain", r)
	}
	st.ctxs[ord] = c
	return c, nil
}

// Close releases this reference; with the last one, the primary contexts
// the engine retained are released. Copiers, host memory and gates must
// have been released first. Idempotent.
func (d *Driver) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.refs--
	if st.refs > 0 {
		return nil
	}
	var errs []error
	for ord := range st.ctxs {
		if r := Result(C.pymc_ctx_release(C.int(ord))); r != 0 {
			errs = append(errs, callError("cuDevicePrimaryCtxRelease", r))
		}
		delete(st.ctxs, ord)
	}
	return errors.Join(errs...)
}

// where is one byte's memory kind: a device ordinal or gpu.Host.
func where(addr uintptr) (int, error) {
	var memtype, managed C.uint
	var ord C.int
	var start C.CUdeviceptr
	var size C.size_t
	if r := Result(C.pymc_locate(C.CUdeviceptr(addr), &memtype, &ord, &managed, &start, &size)); r != 0 {
		return 0, callError("cuPointerGetAttributes", r)
	}
	// Managed memory is addressable by the CPU; so is page-locked host
	// memory. Anything the driver does not know is host memory.
	if memtype != C.CU_MEMORYTYPE_DEVICE || managed != 0 {
		return gpu.Host, nil
	}
	return int(ord), nil
}

// Locate implements gpu.Driver: the first and the last byte must be in the
// same kind of memory (device memory of one device, or host memory), so a
// range over contiguous mappings (torch's expandable segments) is allowed.
func (d *Driver) Locate(addr uintptr, n uint64) (int, error) {
	if d.closed.Load() {
		return 0, ErrClosed
	}
	if n == 0 {
		n = 1
	}
	if addr+uintptr(n) < addr {
		return 0, fmt.Errorf("cuda: [%#x, +%d) wraps: %w", addr, n, gpu.ErrInvalidRange)
	}
	first, err := where(addr)
	if err != nil {
		return 0, err
	}
	last := first
	if n > 1 {
		if last, err = where(addr + uintptr(n) - 1); err != nil {
			return 0, err
		}
	}
	if first != last {
		return 0, fmt.Errorf("cuda: [%#x, +%d) starts in %s and ends in %s: %w", addr, n, kind(first), kind(last), gpu.ErrInvalidRange)
	}
	return first, nil
}

func kind(ord int) string {
	if ord == gpu.Host {
		return "host memory"
	}
	return fmt.Sprintf("the memory of device %d", ord)
}

// copier is a non-blocking stream of one device with one event per slot.
type copier struct {
	ctx    C.CUcontext
	stream C.CUstream
	evs    []C.CUevent
	closed bool
}

// NewCopier implements gpu.Driver.
func (d *Driver) NewCopier(ord, slots int) (gpu.Copier, error) {
	if slots <= 0 {
		return nil, fmt.Errorf("cuda: copier with %d slots: %w", slots, Result(1))
	}
	ctx, err := d.ctx(ord)
	if err != nil {
		return nil, err
	}
	evs := make([]C.CUevent, slots)
	var s C.CUstream
	if r := Result(C.pymc_copier_new(ctx, C.int(slots), &s, &evs[0])); r != 0 {
		return nil, callError("create a copy stream", r)
	}
	return &copier{ctx: ctx, stream: s, evs: evs}, nil
}

func (c *copier) copy(slot int, toDevice bool, dst, src uintptr, n int) error {
	if c.closed {
		return ErrClosed
	}
	if slot < 0 || slot >= len(c.evs) {
		return fmt.Errorf("cuda: slot %d: %w", slot, gpu.ErrBadSlot)
	}
	dir := C.int(0)
	call := "cuMemcpyDtoHAsync"
	if toDevice {
		dir, call = 1, "cuMemcpyHtoDAsync"
	}
	if r := Result(C.pymc_copy(c.ctx, c.stream, c.evs[slot], dir, C.uint64_t(dst), C.uint64_t(src), C.size_t(n))); r != 0 {
		return callError(call, r)
	}
	return nil
}

func (c *copier) ToHost(slot int, dst, src uintptr, n int) error {
	return c.copy(slot, false, dst, src, n)
}
func (c *copier) ToDevice(slot int, dst, src uintptr, n int) error {
	return c.copy(slot, true, dst, src, n)
}

func (c *copier) Wait(slot int) error {
	if c.closed {
		return ErrClosed
	}
	if slot < 0 || slot >= len(c.evs) {
		return fmt.Errorf("cuda: slot %d: %w", slot, gpu.ErrBadSlot)
	}
	if r := Result(C.pymc_event_wait(c.ctx, c.evs[slot])); r != 0 {
		return callError("cuEventSynchronize", r)
	}
	return nil
}

func (c *copier) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	if r := Result(C.pymc_copier_free(c.ctx, c.stream, &c.evs[0], C.int(len(c.evs)))); r != 0 {
		return callError("destroy a copy stream", r)
	}
	return nil
}

// AllocHost implements gpu.Driver (cuMemHostAlloc, portable).
func (d *Driver) AllocHost(ord, n int) (uintptr, error) {
	ctx, err := d.ctx(ord)
	if err != nil {
		return 0, err
	}
	var p unsafe.Pointer
	if r := Result(C.pymc_host_alloc(ctx, C.size_t(n), &p)); r != 0 {
		return 0, callError("cuMemHostAlloc", r)
	}
	d.mu.Lock()
	d.hosts[uintptr(p)] = ord
	d.mu.Unlock()
	return uintptr(p), nil
}

// FreeHost implements gpu.Driver.
func (d *Driver) FreeHost(addr uintptr) error {
	d.mu.Lock()
	ord, ok := d.hosts[addr]
	delete(d.hosts, addr)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("cuda: free host memory %#x not allocated here: %w", addr, Result(1))
	}
	ctx, err := d.ctx(ord)
	if err != nil {
		return err
	}
	if r := Result(C.pymc_host_free(ctx, ptr(addr))); r != 0 {
		return callError("cuMemFreeHost", r)
	}
	return nil
}

// CopyOnStream implements gpu.Driver (cuMemcpyHtoDAsync or
// cuMemcpyDtoHAsync on the caller's stream).
func (d *Driver) CopyOnStream(stream uintptr, ord int, toDevice bool, dst, src uintptr, n int) error {
	var ctx C.CUcontext
	if stream == 0 {
		var err error
		if ctx, err = d.ctx(ord); err != nil {
			return err
		}
	} else if d.closed.Load() {
		return ErrClosed
	}
	dir, call := C.int(0), "cuMemcpyDtoHAsync"
	if toDevice {
		dir, call = 1, "cuMemcpyHtoDAsync"
	}
	if r := Result(C.pymc_copy_on_stream(ctx, C.CUstream(ptr(stream)), dir, C.uint64_t(dst), C.uint64_t(src), C.size_t(n))); r != 0 {
		return fmt.Errorf("copy on stream %#x: %w", stream, callError(call, r))
	}
	return nil
}

// Gate implements gpu.Driver with a host function queued on the stream
// (cuLaunchHostFunc) that signals an eventfd when reached and blocks the
// stream until its other eventfd is signalled.
func (d *Driver) Gate(stream uintptr, ord int) (gpu.Gate, error) {
	var ctx C.CUcontext
	if stream == 0 {
		var err error
		if ctx, err = d.ctx(ord); err != nil {
			return nil, err
		}
	} else if d.closed.Load() {
		return nil, ErrClosed
	}
	var gs, gd, eno C.int
	r := Result(C.pymc_gate(ctx, C.CUstream(ptr(stream)), &gs, &gd, &eno))
	if eno != 0 {
		return nil, fmt.Errorf("cuda: gate on stream %#x: %w", stream, syscall.Errno(eno))
	}
	if r != 0 {
		return nil, fmt.Errorf("gate on stream %#x: %w", stream, callError("cuLaunchHostFunc", r))
	}
	return &gate{start: os.NewFile(uintptr(gs), "cuda-gate"), done: int(gd)}, nil
}

type gate struct {
	start   *os.File // readable once the stream reached the gate
	done    int      // written to open the gate
	reached atomic.Bool
	once    sync.Once
}

// aLongTimeAgo makes a pending read fail at once.
var aLongTimeAgo = time.Unix(1, 0)

func (g *gate) Reached(ctx context.Context) error {
	if g.reached.Load() {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { _ = g.start.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	var b [8]byte
	if _, err := io.ReadFull(g.start, b[:]); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("cuda: wait for the stream to reach the gate: %w", err)
	}
	g.reached.Store(true)
	return nil
}

func (g *gate) Open() {
	g.once.Do(func() {
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], 1)
		_, _ = syscall.Write(g.done, b[:])
		_ = syscall.Close(g.done)
		_ = g.start.Close()
	})
}

// ExportDmaBuf implements gpu.Driver with cuMemGetHandleForAddressRange
// (CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD) over the host pages holding the
// range, in the primary context of the device that holds it. A libcuda
// without that function (before CUDA 11.7), a device without
// CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED and CUDA_ERROR_NOT_SUPPORTED match
// gpu.ErrNotSupported.
func (d *Driver) ExportDmaBuf(addr uintptr, n uint64) (gpu.DmaBuf, error) {
	if d.closed.Load() {
		return gpu.DmaBuf{}, ErrClosed
	}
	if C.pymc_has_dmabuf() == 0 {
		return gpu.DmaBuf{}, fmt.Errorf("cuda: export dma-buf: %s has no cuMemGetHandleForAddressRange (CUDA 11.7 or later): %w",
			st.name, gpu.ErrNotSupported)
	}
	ord, err := d.Locate(addr, n)
	if err != nil {
		return gpu.DmaBuf{}, err
	}
	if ord == gpu.Host {
		return gpu.DmaBuf{}, fmt.Errorf("cuda: export dma-buf of [%#x, +%d): host memory: %w", addr, n, gpu.ErrInvalidRange)
	}
	supported, err := d.Attribute(ord, C.CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED)
	if err != nil {
		return gpu.DmaBuf{}, err
	}
	if supported == 0 {
		return gpu.DmaBuf{}, fmt.Errorf("cuda: export dma-buf: device %d: %w", ord, gpu.ErrNotSupported)
	}
	ctx, err := d.ctx(ord)
	if err != nil {
		return gpu.DmaBuf{}, err
	}
	page := uintptr(os.Getpagesize())
	base := addr &^ (page - 1)
	end := (addr + uintptr(max(n, 1)) + page - 1) &^ (page - 1)
	var fd C.int
	if r := Result(C.pymc_dmabuf(ctx, C.CUdeviceptr(base), C.size_t(end-base), &fd)); r != 0 {
		return gpu.DmaBuf{}, fmt.Errorf("export dma-buf of [%#x, +%d) on device %d: %w", addr, n, ord,
			callError("cuMemGetHandleForAddressRange", r))
	}
	syscall.CloseOnExec(int(fd))
	return gpu.DmaBuf{FD: int(fd), Offset: uint64(addr - base)}, nil
}

// Test and benchmark hooks: device memory and streams, as an application
// (torch) would make them.

// AllocDevice is cuMemAlloc on device ord.
func (d *Driver) AllocDevice(ord, n int) (uintptr, error) {
	ctx, err := d.ctx(ord)
	if err != nil {
		return 0, err
	}
	var p C.CUdeviceptr
	if r := Result(C.pymc_dev_alloc(ctx, C.size_t(n), &p)); r != 0 {
		return 0, callError("cuMemAlloc", r)
	}
	return uintptr(p), nil
}

// FreeDevice is cuMemFree.
func (d *Driver) FreeDevice(ord int, p uintptr) error {
	ctx, err := d.ctx(ord)
	if err != nil {
		return err
	}
	if r := Result(C.pymc_dev_free(ctx, C.CUdeviceptr(p))); r != 0 {
		return callError("cuMemFree", r)
	}
	return nil
}

// CopyToDevice copies b to device memory at dst (synchronous).
func (d *Driver) CopyToDevice(ord int, dst uintptr, b []byte) error {
	return d.memcpy(ord, true, dst, b)
}

// CopyFromDevice copies device memory at src into b (synchronous).
func (d *Driver) CopyFromDevice(ord int, b []byte, src uintptr) error {
	return d.memcpy(ord, false, src, b)
}

func (d *Driver) memcpy(ord int, toDevice bool, dev uintptr, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	ctx, err := d.ctx(ord)
	if err != nil {
		return err
	}
	host := uintptr(unsafe.Pointer(&b[0]))
	var r Result
	if toDevice {
		r = Result(C.pymc_memcpy(ctx, 1, C.uint64_t(dev), C.uint64_t(host), C.size_t(len(b))))
	} else {
		r = Result(C.pymc_memcpy(ctx, 0, C.uint64_t(host), C.uint64_t(dev), C.size_t(len(b))))
	}
	runtime.KeepAlive(b)
	if r != 0 {
		return callError("cuMemcpy", r)
	}
	return nil
}

// NewStream creates a non-blocking stream on device ord.
func (d *Driver) NewStream(ord int) (uintptr, error) {
	ctx, err := d.ctx(ord)
	if err != nil {
		return 0, err
	}
	var s C.CUstream
	if r := Result(C.pymc_stream_new(ctx, &s)); r != 0 {
		return 0, callError("cuStreamCreate", r)
	}
	return uintptr(unsafe.Pointer(s)), nil
}

// DestroyStream destroys a stream from NewStream.
func (d *Driver) DestroyStream(ord int, s uintptr) error {
	ctx, err := d.ctx(ord)
	if err != nil {
		return err
	}
	if r := Result(C.pymc_stream_free(ctx, C.CUstream(ptr(s)))); r != 0 {
		return callError("cuStreamDestroy", r)
	}
	return nil
}

// Synchronize waits for stream s (0: device ord's legacy default stream).
func (d *Driver) Synchronize(ord int, s uintptr) error {
	ctx, err := d.ctx(ord)
	if err != nil {
		return err
	}
	if r := Result(C.pymc_stream_sync(ctx, C.CUstream(ptr(s)))); r != 0 {
		return callError("cuStreamSynchronize", r)
	}
	return nil
}

// Memset queues a fill of n bytes of device memory at p with v on stream
// s: work ordered on the stream, like a kernel's.
func (d *Driver) Memset(ord int, s, p uintptr, v byte, n int) error {
	ctx, err := d.ctx(ord)
	if err != nil {
		return err
	}
	if r := Result(C.pymc_memset_async(ctx, C.CUstream(ptr(s)), C.CUdeviceptr(p), C.uchar(v), C.size_t(n))); r != 0 {
		return callError("cuMemsetD8Async", r)
	}
	return nil
}

// MemInfo is cuMemGetInfo on device ord: free and total bytes.
func (d *Driver) MemInfo(ord int) (free, total uint64, err error) {
	ctx, err := d.ctx(ord)
	if err != nil {
		return 0, 0, err
	}
	var f, t C.size_t
	if r := Result(C.pymc_mem_info(ctx, &f, &t)); r != 0 {
		return 0, 0, callError("cuMemGetInfo", r)
	}
	return uint64(f), uint64(t), nil
}
