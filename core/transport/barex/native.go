package barex

import (
	"path/filepath"
	"slices"
	"time"

	"github.com/pymooncake/pymooncake/core/transport"
)

// native is one engine of a loaded shim (an mcbx_engine): the transport's
// only way to barex, and the hardware seam of the tests, which load a fake
// shim through the same path. Implementations are safe for concurrent use;
// after Close no method may be called.
type native interface {
	// Port is the barex listen port the engine holds.
	Port() int
	// EventFD is the engine's completion eventfd (owned by the engine).
	EventFD() int
	// Devices lists barex's devices.
	Devices() ([]nativeDevice, error)
	// RegMR registers [addr, addr+length) on every NIC.
	RegMR(addr, length uint64, gpu bool, gpuID int) ([]nativeKey, error)
	// DeregMR deregisters the registration starting at addr.
	DeregMR(addr uint64, gpu bool) error
	// Connect opens one channel to host:port from NIC localNIC.
	Connect(host string, port, localNIC int, timeout time.Duration) (nativeChannel, error)
	// Active reports whether a channel is still active.
	Active(ch uint64) (bool, error)
	// CloseChannel closes a channel, waiting up to timeout for the
	// callbacks of its batches.
	CloseChannel(ch uint64, timeout time.Duration) error
	// Post posts v as one batch; a nil error means exactly one completion
	// with cookie will come.
	Post(ch uint64, op transport.Opcode, v []sge, cookie uint64) error
	// Poll moves up to len(out) completions into out.
	Poll(out []done) int
	// Close stops the engine (waiting up to timeout for callbacks) and
	// releases the library reference.
	Close(timeout time.Duration) error
}

// nativeConfig is what opening an engine needs (mcbx_config).
type nativeConfig struct {
	useNICs          string
	minPort, maxPort int
	connectTimeout   time.Duration
}

type nativeDevice struct {
	name  string
	nic   int
	ctxOK bool
}

type nativeKey struct {
	nic        int
	lkey, rkey uint32
}

type nativeChannel struct {
	handle            uint64
	localNIC, peerNIC int
}

// sge is mcbx_sge, laid out identically (checked at compile time in the
// cgo file), so a batch crosses into C without conversion.
type sge struct {
	laddr, raddr uint64
	length       uint32
	lkey, rkey   uint32
	memType      int16
	deviceID     int16
}

// Memory types of sge.memType (MCBX_MEM_*).
const (
	memCPU int16 = 0
	memGPU int16 = 1
)

// done is mcbx_done, laid out identically.
type done struct {
	cookie uint64
	status int32
	_      int32
}

// shimCandidates is the loader's search order: the explicit path
// (MC_BAREX_SHIM) alone when given; else ShimName next to the object that
// holds this code (the Python extension, or the executable) and in its
// parent directory (the pymooncake package, when the extension sits in
// pymooncake/_gopy), then ShimName on the default loader path.
func shimCandidates(explicit, self string) []string {
	if explicit != "" {
		return []string{explicit}
	}
	var out []string
	if self != "" && filepath.IsAbs(self) {
		dir := filepath.Dir(self)
		out = append(out, filepath.Join(dir, ShimName), filepath.Join(filepath.Dir(dir), ShimName))
	}
	out = append(out, ShimName)
	return slices.Compact(out)
}
