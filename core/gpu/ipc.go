package gpu

import (
	"encoding/hex"
	"fmt"
	"os"
)

// IPC is the part of a GPU driver that shares device memory between the
// processes of one host (CUDA IPC). A Driver implements it optionally: the
// transports that need it ask with a type assertion. Implementations are
// safe for concurrent use.
type IPC interface {
	// Devices is the number of devices this process sees.
	Devices() int
	// DeviceUUID is device ord's UUID: one GPU has the same UUID in every
	// process of the host, whatever its ordinal there
	// (CUDA_VISIBLE_DEVICES).
	DeviceUUID(ord int) (UUID, error)
	// CanAccessPeer reports whether device ord can access the memory of
	// device peer (a device always reaches its own memory).
	CanAccessPeer(ord, peer int) (bool, error)
	// ExportIPC exports the device allocation that holds addr, for another
	// process of this host: a legacy IPC handle for cudaMalloc memory, a
	// POSIX file descriptor for VMM memory (cuMemCreate) that allows one.
	// The export covers the whole allocation (Base, Size), which may be
	// larger than what the caller registered. Host memory is an error
	// matching ErrInvalidRange; memory that cannot be exported (a
	// stream-ordered pool's, VMM memory without a POSIX handle type) one
	// matching ErrNotSupported. The caller closes the handle.
	ExportIPC(addr uintptr) (IPCHandle, error)
	// OpenIPC maps an allocation that another process exported into this
	// process. ord is the device holding it, as this process numbers it
	// (found by its UUID); the mapping is accessible from ord and from
	// every other device that can access ord. The handle stays the
	// caller's (its FD is not taken). The caller closes the mapping once
	// no copy uses it any more.
	OpenIPC(h IPCHandle, ord int) (IPCMapping, error)
	// RecordEvent records, on the stream (as Gate names it), an event that
	// completes once the stream has run the work queued before it. It
	// makes no host round trip. The caller closes the event.
	RecordEvent(stream uintptr, ord int) (Event, error)
}

// UUID identifies a GPU across the processes of a host.
type UUID [16]byte

// String writes the UUID as nvidia-smi does: GPU-xxxxxxxx-xxxx-....
func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return "GPU-" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// ParseUUID reads a UUID written by String.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 40 || s[:4] != "GPU-" || s[12] != '-' || s[17] != '-' || s[22] != '-' || s[27] != '-' {
		return u, fmt.Errorf("gpu: %q is not a GPU UUID", s)
	}
	h := s[4:12] + s[13:17] + s[18:22] + s[23:27] + s[28:]
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("gpu: %q is not a GPU UUID: %w", s, err)
	}
	return u, nil
}

// IPCKind says how an allocation is shared.
type IPCKind uint8

const (
	// IPCLegacy is a legacy CUDA IPC handle (cuIpcGetMemHandle), for
	// memory from cuMemAlloc / cudaMalloc (torch's caching allocator).
	IPCLegacy IPCKind = 1
	// IPCVMM is a VMM allocation (cuMemCreate: NVLinkAllocator's, torch's
	// expandable segments) exported as a POSIX file descriptor
	// (cuMemExportToShareableHandle), which travels over a Unix socket.
	IPCVMM IPCKind = 2
)

func (k IPCKind) String() string {
	switch k {
	case IPCLegacy:
		return "legacy cuda ipc"
	case IPCVMM:
		return "vmm posix fd"
	}
	return fmt.Sprintf("ipc kind %d", uint8(k))
}

// LegacyHandleSize is the size of a legacy CUDA IPC handle.
const LegacyHandleSize = 64

// IPCHandle is an exported allocation.
type IPCHandle struct {
	Kind IPCKind
	// Base and Size are the allocation in the exporting process: the
	// mapping starts at Base there.
	Base uintptr
	Size uint64
	// Device is the UUID of the GPU holding the allocation.
	Device UUID
	// Legacy is the CUDA IPC handle (IPCLegacy).
	Legacy [LegacyHandleSize]byte
	// FD is the allocation's POSIX file descriptor (IPCVMM), owned by the
	// handle's holder; -1 when there is none.
	FD int
}

// Close closes the handle's file descriptor, if it has one.
func (h *IPCHandle) Close() error {
	if h.FD < 0 || h.Kind != IPCVMM {
		return nil
	}
	fd := h.FD
	h.FD = -1
	if err := os.NewFile(uintptr(fd), "ipc-handle").Close(); err != nil {
		return fmt.Errorf("gpu: close ipc handle fd %d: %w", fd, err)
	}
	return nil
}

// IPCMapping is an allocation of another process mapped into this one.
type IPCMapping interface {
	// Addr is where the allocation's first byte is mapped here.
	Addr() uintptr
	// Close unmaps it. No copy may use it any more.
	Close() error
}

// Event marks a point of a stream.
type Event interface {
	// Done reports whether the stream has run everything queued before
	// the event; an error is that work's (or the query's) failure.
	Done() (bool, error)
	// Close releases the event.
	Close() error
}
