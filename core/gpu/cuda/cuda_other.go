//go:build !cgo || !linux

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// Library is the driver library Open would load.
const Library = "libcuda.so.1"

// Options configure Open.
type Options struct {
	// Library is the driver library to load; default Library.
	Library string
}

var errNoLoader = fmt.Errorf("load the CUDA driver: pymooncake was built without cgo or for a system other than Linux: %w", dl.ErrUnavailable)

// Driver is never returned by this build's Open.
type Driver struct{}

var (
	_ gpu.Driver = (*Driver)(nil)
	_ gpu.IPC    = (*Driver)(nil)
)

// Open fails: this build cannot load libcuda.
func Open(Options) (*Driver, error) { return nil, errNoLoader }

func describe(r Result) (name, text string) {
	if n, ok := names[r]; ok {
		return n, ""
	}
	return fmt.Sprintf("CUDA_ERROR_%d", int(r)), ""
}

func (d *Driver) Table() unsafe.Pointer                  { return nil }
func (d *Driver) Name() string                           { return "none" }
func (d *Driver) Version() int                           { return 0 }
func (d *Driver) DeviceCount() int                       { return 0 }
func (d *Driver) Close() error                           { return nil }
func (d *Driver) Locate(uintptr, uint64) (int, error)    { return 0, errNoLoader }
func (d *Driver) NewCopier(int, int) (gpu.Copier, error) { return nil, errNoLoader }
func (d *Driver) AllocHost(int, int) (uintptr, error)    { return 0, errNoLoader }
func (d *Driver) FreeHost(uintptr) error                 { return errNoLoader }
func (d *Driver) Gate(uintptr, int) (gpu.Gate, error)    { return nil, errNoLoader }
func (d *Driver) ExportDmaBuf(uintptr, uint64) (gpu.DmaBuf, error) {
	return gpu.DmaBuf{}, errNoLoader
}
func (d *Driver) CopyOnStream(uintptr, int, bool, uintptr, uintptr, int) error {
	return errNoLoader
}
func (d *Driver) CopyAsync(uintptr, int, uintptr, uintptr, int) error { return errNoLoader }
func (d *Driver) Devices() int                                        { return 0 }
func (d *Driver) DeviceUUID(int) (gpu.UUID, error)                    { return gpu.UUID{}, errNoLoader }
func (d *Driver) CanAccessPeer(int, int) (bool, error)                { return false, errNoLoader }
func (d *Driver) ExportIPC(uintptr) (gpu.IPCHandle, error)            { return gpu.IPCHandle{FD: -1}, errNoLoader }
func (d *Driver) OpenIPC(gpu.IPCHandle, int) (gpu.IPCMapping, error)  { return nil, errNoLoader }
func (d *Driver) RecordEvent(uintptr, int) (gpu.Event, error)         { return nil, errNoLoader }
func (d *Driver) DeviceName(int) (string, error)                      { return "", errNoLoader }
func (d *Driver) Attribute(int, int) (int, error)                     { return 0, errNoLoader }
func (d *Driver) AllocDevice(int, int) (uintptr, error)               { return 0, errNoLoader }
func (d *Driver) FreeDevice(int, uintptr) error                       { return errNoLoader }
func (d *Driver) CopyToDevice(int, uintptr, []byte) error             { return errNoLoader }
func (d *Driver) CopyFromDevice(int, []byte, uintptr) error           { return errNoLoader }
func (d *Driver) NewStream(int) (uintptr, error)                      { return 0, errNoLoader }
func (d *Driver) DestroyStream(int, uintptr) error                    { return errNoLoader }
func (d *Driver) Synchronize(int, uintptr) error                      { return errNoLoader }
func (d *Driver) Memset(int, uintptr, uintptr, byte, int) error       { return errNoLoader }
func (d *Driver) MemInfo(int) (uint64, uint64, error)                 { return 0, 0, errNoLoader }
