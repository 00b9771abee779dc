package barex

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ShimName is the shim library's file name: what the loader looks for next
// to pymooncake's extension and on the loader path.
const ShimName = "libmooncake_barex_shim.so"

// Config is the barex transport's configuration. The zero value of every
// field means its documented default (Mooncake's); New validates the
// result and reports every bad field at once. FromEnv builds it from the
// environment variables named in the comments.
type Config struct {
	// MinPort and MaxPort bound the random barex listen port
	// (ACCL_MIN_PORT, ACCL_MAX_PORT; default 17000 and 35000; 1025..65535).
	// The listener that probed a port is the one kept.
	MinPort, MaxPort int
	// RegChunkSize is the size of the pieces a registration is split into,
	// each registered and published as its own buffer, and so also the
	// largest piece a transfer is cut into (MC_MIN_REG_SIZE, bytes, default
	// 64 MiB, at most 4 GiB - 1: a barex element length is 32 bits). Both
	// peers should use one value; unequal values still work here, with
	// more, smaller pieces.
	RegChunkSize uint64
	// NumQPPerEP is the number of channels kept per (peer, local device)
	// (MC_NUM_QP_PER_EP, default 2, 1..255).
	NumQPPerEP int
	// UseNICs is the NIC list handed to barex as ACCL_USE_NICS. UseNICsSet
	// says the user set it (then it is used as is); otherwise, when the
	// topology has EIC NICs (names containing "soe" or "solar"), they are
	// used, and only they.
	UseNICs    string
	UseNICsSet bool
	// RandomDevice picks each piece's local device uniformly at random
	// instead of by the priority matrix (BAREX_USE_RANDOM_DEV != 0).
	RandomDevice bool
	// UseCPU treats every registration and transfer as host memory
	// (ACCL_USE_CPU != 0), as Mooncake's global flag does.
	UseCPU bool
	// LocalDevice, when LocalDeviceSet, is the GPU ordinal given to barex
	// for GPU memory instead of the one in its location (ACCL_LOCAL_DEVICE,
	// >= 0).
	LocalDevice    int
	LocalDeviceSet bool
	// ShimPath is the shim library to load instead of searching for
	// ShimName (MC_BAREX_SHIM).
	ShimPath string
	// ConnectTimeout bounds one channel connect (default 3 s, barex's
	// TIMER_3S); HandshakeTimeout bounds one whole channel setup, the
	// barex_port exchange included (default 15 s).
	ConnectTimeout   time.Duration
	HandshakeTimeout time.Duration
	// DrainTimeout bounds how long ClosePeer and Close wait for callbacks
	// of work in flight (default 5 s).
	DrainTimeout time.Duration
}

// maxChunk is the largest RegChunkSize: a barex element length is 32 bits.
const maxChunk = 1<<32 - 1

func (c Config) withDefaults() (Config, error) {
	if c.MinPort == 0 {
		c.MinPort = 17000
	}
	if c.MaxPort == 0 {
		c.MaxPort = 35000
	}
	if c.RegChunkSize == 0 {
		c.RegChunkSize = 64 << 20
	}
	if c.NumQPPerEP == 0 {
		c.NumQPPerEP = 2
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 3 * time.Second
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 15 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Second
	}
	var errs []error
	bad := func(field string, v any, want string) {
		errs = append(errs, fmt.Errorf("%w: %s=%v (want %s)", ErrInvalidConfig, field, v, want))
	}
	if c.MinPort < 1025 || c.MinPort > 65535 {
		bad("MinPort", c.MinPort, "1025..65535")
	}
	if c.MaxPort < 1025 || c.MaxPort > 65535 {
		bad("MaxPort", c.MaxPort, "1025..65535")
	}
	if c.MinPort > c.MaxPort {
		bad("MinPort", c.MinPort, fmt.Sprintf("at most MaxPort %d", c.MaxPort))
	}
	if c.RegChunkSize > maxChunk {
		bad("RegChunkSize", c.RegChunkSize, fmt.Sprintf("1..%d", uint64(maxChunk)))
	}
	if c.NumQPPerEP < 1 || c.NumQPPerEP > 255 {
		bad("NumQPPerEP", c.NumQPPerEP, "1..255")
	}
	if c.LocalDevice < 0 {
		bad("LocalDevice", c.LocalDevice, "a GPU ordinal >= 0")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ConnectTimeout", c.ConnectTimeout}, {"HandshakeTimeout", c.HandshakeTimeout}, {"DrainTimeout", c.DrainTimeout}} {
		if d.v < 0 {
			bad(d.name, d.v, "a positive duration")
		}
	}
	return c, errors.Join(errs...)
}

// Enabled reports whether USE_BAREX asks for the barex transport: an
// integer other than 0. Unset is false; anything but an integer is an error
// naming the variable (Mooncake's atoi would read it as 0).
func Enabled(lookup func(string) (string, bool)) (bool, error) {
	v, ok := lookup("USE_BAREX")
	if !ok {
		return false, nil
	}
	n, err := parseInt("USE_BAREX", v)
	return n != 0, err
}

// FromEnv reads the barex transport's variables (see Config) through
// lookup, strictly: a bad value is an error naming the variable and the
// value, and every bad variable is reported. Unset variables leave their
// field zero, which New reads as Mooncake's default.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	var (
		c    Config
		errs []error
	)
	get := func(name string) (string, bool) {
		v, ok := lookup(name)
		return strings.TrimSpace(v), ok
	}
	intVar := func(name string, lo, hi int64, dst func(int64)) {
		v, ok := get(name)
		if !ok {
			return
		}
		n, err := parseInt(name, v)
		switch {
		case err != nil:
			errs = append(errs, err)
		case n < lo || n > hi:
			errs = append(errs, fmt.Errorf("%w: %s=%q (want %d..%d)", ErrInvalidConfig, name, v, lo, hi))
		default:
			dst(n)
		}
	}
	intVar("ACCL_MIN_PORT", 1025, 65535, func(n int64) { c.MinPort = int(n) })
	intVar("ACCL_MAX_PORT", 1025, 65535, func(n int64) { c.MaxPort = int(n) })
	intVar("MC_MIN_REG_SIZE", 1, maxChunk, func(n int64) { c.RegChunkSize = uint64(n) })
	intVar("MC_NUM_QP_PER_EP", 1, 255, func(n int64) { c.NumQPPerEP = int(n) })
	intVar("BAREX_USE_RANDOM_DEV", -1<<31, 1<<31-1, func(n int64) { c.RandomDevice = n != 0 })
	intVar("ACCL_USE_CPU", -1<<31, 1<<31-1, func(n int64) { c.UseCPU = n != 0 })
	intVar("ACCL_LOCAL_DEVICE", 0, 1<<15-1, func(n int64) { c.LocalDevice, c.LocalDeviceSet = int(n), true })
	if v, ok := get("ACCL_USE_NICS"); ok && v != "" {
		c.UseNICs, c.UseNICsSet = v, true
	}
	if v, ok := get("MC_BAREX_SHIM"); ok {
		c.ShimPath = v
	}
	if c.MinPort != 0 && c.MaxPort != 0 && c.MinPort > c.MaxPort {
		errs = append(errs, fmt.Errorf("%w: ACCL_MIN_PORT=%d is above ACCL_MAX_PORT=%d", ErrInvalidConfig, c.MinPort, c.MaxPort))
	}
	return c, errors.Join(errs...)
}

func parseInt(name, v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s=%q is not an integer", ErrInvalidConfig, name, v)
	}
	return n, nil
}
