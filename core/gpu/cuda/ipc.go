//go:build cgo && linux

package cuda

/*
#cgo CFLAGS: -I${SRCDIR}/include -O2 -Wall
#include "helpers.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/gpu"
)

var _ gpu.IPC = (*Driver)(nil)

// Copy implements gpu.Copier with cuMemcpyAsync (unified addressing) on
// the copier's stream.
func (c *copier) Copy(slot int, dst, src uintptr, n int) error {
	if c.closed {
		return ErrClosed
	}
	if slot < 0 || slot >= len(c.evs) {
		return fmt.Errorf("cuda: slot %d: %w", slot, gpu.ErrBadSlot)
	}
	if r := Result(C.pymc_copy_any(c.ctx, c.stream, c.evs[slot], C.uint64_t(dst), C.uint64_t(src), C.size_t(n))); r != 0 {
		return callError("cuMemcpyAsync", r)
	}
	return nil
}

// streamCtx is the context a call on the caller's stream uses: the
// device's primary context for the legacy default stream (0), else nil
// (the stream's own, which C asks the stream for).
func (d *Driver) streamCtx(stream uintptr, ord int) (C.CUcontext, error) {
	if stream == 0 {
		return d.ctx(ord)
	}
	if d.closed.Load() {
		return nil, ErrClosed
	}
	return nil, nil
}

// CopyAsync implements gpu.Driver: cuMemcpyAsync on the caller's stream,
// or, between two host addresses, a host function that copies when the
// stream reaches it.
func (d *Driver) CopyAsync(stream uintptr, ord int, dst, src uintptr, n int) error {
	ctx, err := d.streamCtx(stream, ord)
	if err != nil {
		return err
	}
	if r := Result(C.pymc_copy_async(ctx, C.CUstream(ptr(stream)), C.uint64_t(dst), C.uint64_t(src), C.size_t(n))); r != 0 {
		return fmt.Errorf("copy on stream %#x: %w", stream, callError("cuMemcpyAsync", r))
	}
	return nil
}

// Devices implements gpu.IPC.
func (d *Driver) Devices() int { return st.devices }

// DeviceUUID implements gpu.IPC (cuDeviceGetUuid).
func (d *Driver) DeviceUUID(ord int) (gpu.UUID, error) {
	var u gpu.UUID
	if d.closed.Load() {
		return u, ErrClosed
	}
	if r := Result(C.pymc_uuid(C.int(ord), unsafe.Pointer(&u[0]))); r != 0 {
		return u, fmt.Errorf("device %d: %w", ord, callError("cuDeviceGetUuid", r))
	}
	return u, nil
}

// CanAccessPeer implements gpu.IPC (cuDeviceCanAccessPeer).
func (d *Driver) CanAccessPeer(ord, peer int) (bool, error) {
	if ord == peer {
		return true, nil
	}
	if d.closed.Load() {
		return false, ErrClosed
	}
	var can C.int
	if r := Result(C.pymc_can_access(C.int(ord), C.int(peer), &can)); r != 0 {
		return false, callError("cuDeviceCanAccessPeer", r)
	}
	return can != 0, nil
}

// ExportIPC implements gpu.IPC. cuPointerGetAttributes says what the
// memory is: memory cuIpcGetMemHandle accepts (IS_LEGACY_CUDA_IPC_CAPABLE:
// cuMemAlloc memory) gets a legacy handle of its allocation
// (cuMemGetAddressRange); VMM memory whose allocation allows POSIX file
// descriptors (ALLOWED_HANDLE_TYPES) gets one (cuMemRetainAllocationHandle,
// cuMemExportToShareableHandle) for the mapping that holds addr. Anything
// else (a memory pool's, FABRIC-only VMM) matches gpu.ErrNotSupported.
func (d *Driver) ExportIPC(addr uintptr) (gpu.IPCHandle, error) {
	h := gpu.IPCHandle{FD: -1}
	if d.closed.Load() {
		return h, ErrClosed
	}
	var memtype, managed, legacy C.uint
	var ord C.int
	var types C.ulonglong
	if r := Result(C.pymc_ipc_attrs(C.CUdeviceptr(addr), &memtype, &managed, &ord, &legacy, &types)); r != 0 {
		return h, fmt.Errorf("export %#x: %w", addr, callError("cuPointerGetAttributes", r))
	}
	if memtype != C.CU_MEMORYTYPE_DEVICE || managed != 0 {
		return h, fmt.Errorf("cuda: export %#x: not device memory: %w", addr, gpu.ErrInvalidRange)
	}
	ctx, err := d.ctx(int(ord))
	if err != nil {
		return h, err
	}
	uuid, err := d.DeviceUUID(int(ord))
	if err != nil {
		return h, err
	}
	var kind, fd C.int
	var base C.CUdeviceptr
	var size C.size_t
	r := Result(C.pymc_ipc_export(ctx, C.CUdeviceptr(addr), legacy, types, &kind, &base, &size, unsafe.Pointer(&h.Legacy[0]), &fd))
	if r != 0 {
		err := callError("cuIpcGetMemHandle or cuMemExportToShareableHandle", r)
		if r == 801 || r == 1 {
			// Neither way applies to this memory.
			return h, fmt.Errorf("cuda: export %#x (legacy ipc %v, handle types %#x): %w: %w", addr, legacy != 0, uint64(types), gpu.ErrNotSupported, err)
		}
		return h, fmt.Errorf("export %#x: %w", addr, err)
	}
	h.Base, h.Size, h.Device = uintptr(base), uint64(size), uuid
	switch kind {
	case 1:
		h.Kind = gpu.IPCLegacy
	case 2:
		h.Kind, h.FD = gpu.IPCVMM, int(fd)
		syscall.CloseOnExec(h.FD)
	}
	return h, nil
}

// OpenIPC implements gpu.IPC: cuIpcOpenMemHandle (lazily enabling peer
// access) in device ord's primary context for a legacy handle; for a VMM
// file descriptor cuMemImportFromShareableHandle, a new reservation
// (cuMemAddressReserve), cuMemMap and read-write access (cuMemSetAccess)
// for ord and every device that can access it.
func (d *Driver) OpenIPC(h gpu.IPCHandle, ord int) (gpu.IPCMapping, error) {
	ctx, err := d.ctx(ord)
	if err != nil {
		return nil, err
	}
	switch h.Kind {
	case gpu.IPCLegacy:
		if C.pymc_has_legacy_ipc() == 0 {
			return nil, fmt.Errorf("cuda: open ipc handle: %s lacks cuIpcOpenMemHandle: %w", st.name, gpu.ErrNotSupported)
		}
		var p C.CUdeviceptr
		if r := Result(C.pymc_ipc_open(ctx, unsafe.Pointer(&h.Legacy[0]), &p)); r != 0 {
			return nil, fmt.Errorf("open ipc handle of [%#x, +%d) on device %d: %w", h.Base, h.Size, ord, callError("cuIpcOpenMemHandle", r))
		}
		return &mapping{d: d, ctx: ctx, kind: h.Kind, addr: p, size: h.Size}, nil
	case gpu.IPCVMM:
		if C.pymc_has_vmm_ipc() == 0 {
			return nil, fmt.Errorf("cuda: import vmm allocation: %s lacks the VMM calls: %w", st.name, gpu.ErrNotSupported)
		}
		if h.FD < 0 || h.Size == 0 {
			return nil, fmt.Errorf("cuda: import vmm allocation: fd %d, size %d: %w", h.FD, h.Size, Result(1))
		}
		devs := []C.int{C.int(ord)}
		for peer := range st.devices {
			if peer == ord {
				continue
			}
			if ok, err := d.CanAccessPeer(peer, ord); err == nil && ok {
				devs = append(devs, C.int(peer))
			}
		}
		var p C.CUdeviceptr
		var mh C.CUmemGenericAllocationHandle
		if r := Result(C.pymc_vmm_import(ctx, C.int(h.FD), C.size_t(h.Size), &devs[0], C.int(len(devs)), &p, &mh)); r != 0 {
			return nil, fmt.Errorf("import vmm allocation of [%#x, +%d) on device %d: %w", h.Base, h.Size, ord,
				callError("cuMemImportFromShareableHandle, cuMemMap or cuMemSetAccess", r))
		}
		return &mapping{d: d, ctx: ctx, kind: h.Kind, addr: p, size: h.Size, handle: mh}, nil
	}
	return nil, fmt.Errorf("cuda: open ipc handle of kind %v: %w", h.Kind, gpu.ErrNotSupported)
}

// mapping is an allocation of another process mapped here.
type mapping struct {
	d      *Driver
	ctx    C.CUcontext
	kind   gpu.IPCKind
	addr   C.CUdeviceptr
	size   uint64
	handle C.CUmemGenericAllocationHandle // IPCVMM
	once   sync.Once
	err    error
}

func (m *mapping) Addr() uintptr { return uintptr(m.addr) }

func (m *mapping) Close() error {
	m.once.Do(func() {
		var r Result
		if m.kind == gpu.IPCLegacy {
			r = Result(C.pymc_ipc_close(m.ctx, m.addr))
		} else {
			r = Result(C.pymc_vmm_unmap(m.ctx, m.addr, C.size_t(m.size), m.handle))
		}
		if r != 0 {
			m.err = fmt.Errorf("close %s mapping %#x: %w", m.kind, uintptr(m.addr), callError("unmap", r))
		}
	})
	return m.err
}

// RecordEvent implements gpu.IPC.
func (d *Driver) RecordEvent(stream uintptr, ord int) (gpu.Event, error) {
	ctx, err := d.streamCtx(stream, ord)
	if err != nil {
		return nil, err
	}
	var ev C.CUevent
	var used C.CUcontext
	if r := Result(C.pymc_event_record(ctx, C.CUstream(ptr(stream)), &ev, &used)); r != 0 {
		return nil, fmt.Errorf("record an event on stream %#x: %w", stream, callError("cuEventRecord", r))
	}
	return &event{ctx: used, ev: ev}, nil
}

type event struct {
	ctx    C.CUcontext // the stream's
	mu     sync.Mutex
	ev     C.CUevent // guarded by mu
	done   bool      // guarded by mu
	closed bool      // guarded by mu
}

var errEventClosed = errors.New("cuda: event closed")

func (e *event) Done() (bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false, errEventClosed
	}
	if e.done {
		return true, nil
	}
	switch r := Result(C.pymc_event_query(e.ctx, e.ev)); r {
	case 0:
		e.done = true
		return true, nil
	case 600: // CUDA_ERROR_NOT_READY
		return false, nil
	default:
		return false, callError("cuEventQuery", r)
	}
}

func (e *event) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	if r := Result(C.pymc_event_free(e.ctx, e.ev)); r != 0 {
		return callError("cuEventDestroy", r)
	}
	return nil
}
