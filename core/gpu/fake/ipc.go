//go:build unix

package fake

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/gpu"
)

// The FAKE's CUDA IPC: each fake driver of a test process stands for one
// process of a host. Device memory is a file mapping, so sharing it is
// mapping the same file again in the importing driver: a legacy handle
// names the allocation in a process-wide registry (as a real handle names
// it to the kernel driver), a VMM export is a duplicate of the file's
// descriptor (as cuMemExportToShareableHandle's POSIX fd is).

var _ gpu.IPC = (*Driver)(nil)

// registry is what the fake drivers of this process share: every fake
// device allocation and its owner, and the legacy exports.
type registry struct {
	mu      sync.Mutex
	next    uint64
	allocs  map[*devAlloc]*Driver // guarded by mu
	exports map[uint64]*devAlloc  // guarded by mu: legacy handle id → allocation
}

var global = registry{allocs: map[*devAlloc]*Driver{}, exports: map[uint64]*devAlloc{}}

func (r *registry) add(d *Driver, a *devAlloc) {
	r.mu.Lock()
	r.allocs[a] = d
	r.mu.Unlock()
}

func (r *registry) remove(a *devAlloc) {
	r.mu.Lock()
	delete(r.allocs, a)
	if a.id != 0 {
		delete(r.exports, a.id)
	}
	r.mu.Unlock()
}

// owner returns the driver whose device memory overlaps [addr, addr+n),
// or nil.
func (r *registry) owner(addr uintptr, n int) *Driver {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := addr + uintptr(max(n, 1))
	for a, d := range r.allocs {
		if addr < a.addr+uintptr(len(a.dev)) && a.addr < end {
			return d
		}
	}
	return nil
}

// exportID returns the allocation's legacy export id, made on first use.
func (r *registry) exportID(a *devAlloc) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.id == 0 {
		r.next++
		a.id = r.next
		r.exports[a.id] = a
	}
	return a.id
}

func (r *registry) exported(id uint64) (*devAlloc, *Driver, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.exports[id]
	if !ok {
		return nil, nil, false
	}
	return a, r.allocs[a], true
}

// legacyMagic starts a fake legacy handle.
var legacyMagic = [8]byte{'f', 'a', 'k', 'e', 'i', 'p', 'c', '1'}

// defaultUUID is the UUID New gives device i.
func defaultUUID(i int) gpu.UUID {
	var u gpu.UUID
	copy(u[:8], "fake-gpu")
	binary.BigEndian.PutUint64(u[8:], uint64(i))
	return u
}

// SetUUIDs renumbers the devices: device i gets uuids[i], as a process
// started with another CUDA_VISIBLE_DEVICES sees the host's GPUs in
// another order.
func (d *Driver) SetUUIDs(uuids []gpu.UUID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.uuids = append([]gpu.UUID(nil), uuids...)
}

// Devices implements gpu.IPC.
func (d *Driver) Devices() int { return d.devices }

// DeviceUUID implements gpu.IPC.
func (d *Driver) DeviceUUID(ord int) (gpu.UUID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ord < 0 || ord >= len(d.uuids) {
		return gpu.UUID{}, fmt.Errorf("fake gpu: uuid of device %d: %w", ord, ErrInvalidValue)
	}
	return d.uuids[ord], nil
}

// CanAccessPeer implements gpu.IPC: every fake device reaches every other.
func (d *Driver) CanAccessPeer(ord, peer int) (bool, error) {
	if ord < 0 || ord >= d.devices || peer < 0 || peer >= d.devices {
		return false, fmt.Errorf("fake gpu: peer access %d to %d: %w", ord, peer, ErrInvalidValue)
	}
	return true, nil
}

// ExportIPC implements gpu.IPC: Alloc's memory gets a legacy handle, a
// shareable AllocVMM's a duplicate of its file descriptor.
func (d *Driver) ExportIPC(addr uintptr) (gpu.IPCHandle, error) {
	h := gpu.IPCHandle{FD: -1}
	ord, err := d.Locate(addr, 1)
	if err != nil {
		return h, err
	}
	if ord == gpu.Host {
		return h, fmt.Errorf("fake gpu: export %#x: host memory: %w", addr, gpu.ErrInvalidRange)
	}
	d.mu.Lock()
	a := d.find(addr)
	var uuid gpu.UUID
	if a != nil && a.ord < len(d.uuids) {
		uuid = d.uuids[a.ord]
	}
	d.mu.Unlock()
	if a == nil {
		return h, fmt.Errorf("fake gpu: export %#x: freed: %w", addr, ErrInvalidValue)
	}
	h.Base, h.Size, h.Device = a.addr, uint64(len(a.dev)), uuid
	switch a.kind {
	case legacyAlloc:
		h.Kind = gpu.IPCLegacy
		copy(h.Legacy[:8], legacyMagic[:])
		binary.LittleEndian.PutUint64(h.Legacy[8:16], global.exportID(a))
	case vmmAlloc:
		fd, err := syscall.Dup(int(a.file.Fd()))
		if err != nil {
			return h, fmt.Errorf("fake gpu: export %#x: %w", addr, err)
		}
		syscall.CloseOnExec(fd)
		h.Kind, h.FD = gpu.IPCVMM, fd
	default:
		return h, fmt.Errorf("fake gpu: export %#x: memory without a shareable handle: %w", addr, gpu.ErrNotSupported)
	}
	return h, nil
}

// openedIPC is a legacy handle open in a driver: opening it again returns
// the same mapping, as cuIpcOpenMemHandle does in one context.
type openedIPC struct {
	a    *devAlloc
	refs int
}

// OpenIPC implements gpu.IPC. A legacy handle cannot be opened by the
// driver that exported it (a real process cannot open its own handles);
// the device must be the one holding the memory (by UUID).
func (d *Driver) OpenIPC(h gpu.IPCHandle, ord int) (gpu.IPCMapping, error) {
	uuid, err := d.DeviceUUID(ord)
	if err != nil {
		return nil, err
	}
	if uuid != h.Device {
		return nil, fmt.Errorf("fake gpu: open ipc handle of GPU %v on device %d (GPU %v): %w", h.Device, ord, uuid, ErrInvalidValue)
	}
	switch h.Kind {
	case gpu.IPCLegacy:
		return d.openLegacy(h, ord)
	case gpu.IPCVMM:
		if h.FD < 0 {
			return nil, fmt.Errorf("fake gpu: import vmm allocation: fd %d: %w", h.FD, ErrInvalidValue)
		}
		fd, err := syscall.Dup(h.FD)
		if err != nil {
			return nil, fmt.Errorf("fake gpu: import vmm allocation: %w", err)
		}
		syscall.CloseOnExec(fd)
		a, err := mapFile(os.NewFile(uintptr(fd), "fake-gpu-import"), ord, int(h.Size))
		if err != nil {
			return nil, err
		}
		d.add(a)
		d.maps.Add(1)
		d.imports.Add(1)
		return &mapping{d: d, a: a}, nil
	}
	return nil, fmt.Errorf("fake gpu: open ipc handle of kind %v: %w", h.Kind, ErrInvalidValue)
}

func (d *Driver) openLegacy(h gpu.IPCHandle, ord int) (gpu.IPCMapping, error) {
	if [8]byte(h.Legacy[:8]) != legacyMagic {
		return nil, fmt.Errorf("fake gpu: open ipc handle: not a fake handle: %w", ErrInvalidValue)
	}
	id := binary.LittleEndian.Uint64(h.Legacy[8:16])
	src, owner, ok := global.exported(id)
	if !ok {
		return nil, fmt.Errorf("fake gpu: open ipc handle %d: the allocation was freed: %w", id, ErrInvalidValue)
	}
	if owner == d {
		return nil, fmt.Errorf("fake gpu: open ipc handle %d in the driver that exported it: %w", id, ErrInvalidValue)
	}
	d.mu.Lock()
	if o, ok := d.opened[id]; ok {
		o.refs++
		d.mu.Unlock()
		d.maps.Add(1)
		return &mapping{d: d, a: o.a, id: id}, nil
	}
	d.mu.Unlock()
	fd, err := syscall.Dup(int(src.file.Fd()))
	if err != nil {
		return nil, fmt.Errorf("fake gpu: open ipc handle: %w", err)
	}
	syscall.CloseOnExec(fd)
	a, err := mapFile(os.NewFile(uintptr(fd), "fake-gpu-ipc"), ord, len(src.dev))
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if o, ok := d.opened[id]; ok {
		// Opened meanwhile by another goroutine: use that one.
		o.refs++
		d.mu.Unlock()
		d.maps.Add(1)
		return &mapping{d: d, a: o.a, id: id}, a.release()
	}
	d.opened[id] = &openedIPC{a: a, refs: 1}
	d.addLocked(a)
	d.mu.Unlock()
	global.add(d, a)
	d.maps.Add(1)
	d.imports.Add(1)
	return &mapping{d: d, a: a, id: id}, nil
}

// mapFile maps n bytes of f twice (device view, shadow view) as an
// imported allocation of device ord. It owns f.
func mapFile(f *os.File, ord, n int) (*devAlloc, error) {
	if n <= 0 {
		f.Close()
		return nil, fmt.Errorf("fake gpu: map %d bytes: %w", n, ErrInvalidValue)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() < int64(n) {
		f.Close()
		return nil, fmt.Errorf("fake gpu: map %d bytes of a smaller allocation: %w", n, ErrInvalidValue)
	}
	dev, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_NONE, syscall.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fake gpu: map device view: %w", err)
	}
	shadow, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		_ = syscall.Munmap(dev)
		f.Close()
		return nil, fmt.Errorf("fake gpu: map shadow view: %w", err)
	}
	return &devAlloc{ord: ord, addr: addrOf(dev), dev: dev, shadow: shadow, file: f, kind: importedAlloc}, nil
}

// mapping is a fake IPC mapping.
type mapping struct {
	d    *Driver
	a    *devAlloc
	id   uint64 // legacy export id; 0 for VMM imports
	once sync.Once
	err  error
}

func (m *mapping) Addr() uintptr { return m.a.addr }

func (m *mapping) Close() error {
	m.once.Do(func() {
		m.d.maps.Add(-1)
		if m.id != 0 {
			m.d.mu.Lock()
			o := m.d.opened[m.id]
			o.refs--
			last := o.refs == 0
			if last {
				delete(m.d.opened, m.id)
			}
			m.d.mu.Unlock()
			if !last {
				return
			}
		}
		// A driver closed first has released its mappings already.
		if m.d.remove(m.a) {
			m.err = m.a.release()
		}
	})
	return m.err
}

// LiveIPC returns the IPC mappings and events not yet closed, and how many
// times OpenIPC mapped memory (an open of a handle already open here maps
// nothing).
func (d *Driver) LiveIPC() (mappings, events, imports int) {
	return int(d.maps.Load()), int(d.events.Load()), int(d.imports.Load())
}

// resolve returns the bytes at [addr, addr+n) as a copy by the device
// reaches them: the shadow view of this driver's device memory (its own or
// mapped from another driver), else host memory. Another driver's device
// memory is an error (it is not mapped in this "process").
func (d *Driver) resolve(addr uintptr, n int) ([]byte, error) {
	if n <= 0 || addr+uintptr(n) < addr {
		return nil, fmt.Errorf("fake gpu: copy of %d bytes at %#x: %w", n, addr, ErrInvalidValue)
	}
	d.mu.Lock()
	a := d.find(addr)
	d.mu.Unlock()
	if a != nil {
		return d.shadow(addr, n, -1)
	}
	if o := global.owner(addr, n); o != nil {
		if o != d {
			return nil, fmt.Errorf("fake gpu: [%#x, +%d) is device memory of another fake driver (process): %w", addr, n, ErrInvalidValue)
		}
		return nil, fmt.Errorf("fake gpu: [%#x, +%d) runs into device memory: %w", addr, n, ErrInvalidValue)
	}
	return unsafe.Slice((*byte)(ptr(addr)), n), nil
}

// CopyAsync implements gpu.Driver: the copy runs when the fake stream gets
// to it.
func (d *Driver) CopyAsync(h uintptr, ord int, dst, src uintptr, n int) error {
	s, err := d.stream(h, ord)
	if err != nil {
		return err
	}
	to, err := d.resolve(dst, n)
	if err != nil {
		return err
	}
	from, err := d.resolve(src, n)
	if err != nil {
		return err
	}
	s.ops <- func() {
		copy(to, from)
		d.copied.Add(int64(n))
	}
	return nil
}

// Copy implements gpu.Copier: any two addresses the fake device reaches.
func (c *copier) Copy(slot int, dst, src uintptr, n int) error {
	to, err := c.d.resolve(dst, n)
	if err != nil {
		return err
	}
	from, err := c.d.resolve(src, n)
	if err != nil {
		return err
	}
	return c.enqueue(slot, to, from)
}

// RecordEvent implements gpu.IPC on the fake streams.
func (d *Driver) RecordEvent(h uintptr, ord int) (gpu.Event, error) {
	s, err := d.stream(h, ord)
	if err != nil {
		return nil, err
	}
	e := &event{d: d}
	d.events.Add(1)
	s.ops <- func() { e.done.Store(true) }
	return e, nil
}

type event struct {
	d      *Driver
	done   atomic.Bool
	closed atomic.Bool
}

func (e *event) Done() (bool, error) {
	if e.closed.Load() {
		return false, fmt.Errorf("fake gpu: event closed: %w", ErrClosed)
	}
	return e.done.Load(), nil
}

func (e *event) Close() error {
	if e.closed.CompareAndSwap(false, true) {
		e.d.events.Add(-1)
	}
	return nil
}
