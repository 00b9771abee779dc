package barex

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/pymooncake/pymooncake/core/config"
)

// ShimName is the shim library's file name: what the loader looks for next
// to pymooncake's extension and on the loader path.
const ShimName = "libmooncake_barex_shim.so"

// Config is the barex transport's configuration. The zero value of every
// field means its documented default (Mooncake's); New validates the
// result and reports every bad field at once. ConfigFromEnv builds it from the
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

// ConfigFromEnv reads every variable of the barex transport (ACCL_MIN_PORT,
// ACCL_MAX_PORT, MC_MIN_REG_SIZE, MC_NUM_QP_PER_EP, BAREX_USE_RANDOM_DEV,
// ACCL_USE_CPU, ACCL_LOCAL_DEVICE, ACCL_USE_NICS, MC_BAREX_SHIM; see
// Config) through lookup, strictly, with config's Parser: a malformed or
// out-of-range value is an error matching config.ErrInvalid that names the
// variable and its value, and every bad variable is reported. Unset
// variables leave their field zero, which New reads as Mooncake's default.
// It reads them whether or not barex is used (USE_BAREX, which the engine
// reads), so that a bad value is an error at initialize either way.
func ConfigFromEnv(lookup config.LookupFunc) (Config, error) {
	var c Config
	p := config.NewParser(lookup)
	p.Int(&c.MinPort, "ACCL_MIN_PORT", 1025, 65535)
	p.Int(&c.MaxPort, "ACCL_MAX_PORT", 1025, 65535)
	var chunk int
	if p.Int(&chunk, "MC_MIN_REG_SIZE", 1, maxChunk) {
		c.RegChunkSize = uint64(chunk)
	}
	p.Int(&c.NumQPPerEP, "MC_NUM_QP_PER_EP", 1, 255)
	// Mooncake reads these with atoi: any integer, non-zero is on.
	flag := func(dst *bool, key string) {
		var n int
		if p.Int(&n, key, math.MinInt32, math.MaxInt32) {
			*dst = n != 0
		}
	}
	flag(&c.RandomDevice, "BAREX_USE_RANDOM_DEV")
	flag(&c.UseCPU, "ACCL_USE_CPU")
	c.LocalDeviceSet = p.Int(&c.LocalDevice, "ACCL_LOCAL_DEVICE", 0, 1<<15-1)
	if v, ok := p.Lookup("ACCL_USE_NICS"); ok && strings.TrimSpace(v) != "" {
		c.UseNICs, c.UseNICsSet = strings.TrimSpace(v), true
	}
	if v, ok := p.Lookup("MC_BAREX_SHIM"); ok {
		c.ShimPath = strings.TrimSpace(v)
	}
	if c.MinPort != 0 && c.MaxPort != 0 && c.MinPort > c.MaxPort {
		v, _ := p.Lookup("ACCL_MIN_PORT")
		p.Fail("ACCL_MIN_PORT", v, fmt.Sprintf("above ACCL_MAX_PORT=%d", c.MaxPort))
	}
	if err := p.Err(); err != nil {
		return Config{}, err
	}
	return c, nil
}
