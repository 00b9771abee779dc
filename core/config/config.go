package config

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
)

// ErrInvalid is matched by every error about a bad variable value.
var ErrInvalid = errors.New("invalid environment variable")

// Env is the engine's configuration taken from the environment; each
// transport reads its own variables (tcp.ConfigFromEnv and the like). The
// zero value is not meaningful; use Defaults or FromEnv.
type Env struct {
	// MinPort and MaxPort bound the random RPC and TCP data ports
	// (MC_MIN_RPC_PORT/MC_MAX_RPC_PORT, or Mooncake's older misspelled
	// MC_MIN_PRC_PORT/MC_MAX_PRC_PORT; default 15000-17000).
	MinPort, MaxPort int
	// HandshakePort is the port assumed for names without one
	// (MC_HANDSHAKE_PORT, default 12001).
	HandshakePort int
	// IPv6 makes listeners and RPC clients use IPv6 (MC_USE_IPV6).
	IPv6 bool
	// HandshakeMaxFrame bounds handshake frames (MC_HANDSHAKE_MAX_LENGTH,
	// bytes, default 1 MiB, 1 byte to 128 MiB).
	HandshakeMaxFrame uint64
	// HandshakeConnectTimeout bounds RPC connects
	// (MC_HANDSHAKE_CONNECT_TIMEOUT, seconds, default 5).
	HandshakeConnectTimeout time.Duration
	// TCPBindAddress is the address advertised in rpc_meta in store modes
	// (MC_TCP_BIND_ADDRESS; empty = first non-loopback interface that is up).
	TCPBindAddress string
	// ClusterID prefixes metadata keys (MC_METADATA_CLUSTER_ID).
	ClusterID string
	// MetadataLeaseTTL attaches published keys to an etcd lease
	// (MC_METADATA_LEASE_TTL, seconds, 0 = no lease; a pymooncake extension).
	MetadataLeaseTTL time.Duration
	// DisableMetaCache re-fetches peer descriptors on every open
	// (MC_DISABLE_METACACHE).
	DisableMetaCache bool
	// ForceTCP selects TCP even where RDMA devices exist (MC_FORCE_TCP).
	ForceTCP bool
	// ForceHCA installs RDMA even where no HCA was discovered, so that a
	// missing device is an init error rather than a TCP fallback
	// (MC_FORCE_HCA).
	ForceHCA bool
	// CustomTopoJSON is a topology file used instead of discovery
	// (MC_CUSTOM_TOPO_JSON).
	CustomTopoJSON string
	// CUDAVisibleDevices and CUDADeviceOrder number GPUs in the topology
	// as CUDA does (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER);
	// CUDAVisibleDevicesSet tells "set and empty" (no GPU) from unset.
	CUDAVisibleDevices    string
	CUDAVisibleDevicesSet bool
	CUDADeviceOrder       string
	// UseBarex installs the accl-barex transport (USE_BAREX non-zero).
	UseBarex bool
	// TransferTimeout is the base deadline of synchronous Python calls
	// (MC_TRANSFER_TIMEOUT, seconds, default 30, at least 5); each byte adds 1 ns.
	TransferTimeout time.Duration
	// LogLevel is MC_LOG_LEVEL (TRACE, DEBUG, INFO, WARNING, ERROR; default INFO).
	LogLevel zapcore.Level
	// NotifyMaxCount and NotifyMaxBytes bound the notifies queued for
	// get_notifies (PYMOONCAKE_NOTIFY_MAX_COUNT, default 65536;
	// PYMOONCAKE_NOTIFY_MAX_BYTES, default 64 MiB); NotifyMaxCountPerPeer
	// and NotifyMaxBytesPerPeer bound those of one sending IP
	// (PYMOONCAKE_NOTIFY_MAX_COUNT_PER_PEER, default 16384;
	// PYMOONCAKE_NOTIFY_MAX_BYTES_PER_PEER, default 16 MiB; when unset,
	// never above the engine's). Bytes count names and messages. A notify
	// beyond a bound is refused, and its sender is told.
	NotifyMaxCount, NotifyMaxCountPerPeer int
	NotifyMaxBytes, NotifyMaxBytesPerPeer int64
	// HandshakeMaxConns and HandshakeMaxConnsPerPeer bound the RPC server's
	// connections, in total and per remote IP
	// (PYMOONCAKE_HANDSHAKE_MAX_CONNS, default 256;
	// PYMOONCAKE_HANDSHAKE_MAX_CONNS_PER_PEER, default 64; when unset, never
	// above the total).
	HandshakeMaxConns, HandshakeMaxConnsPerPeer int
	// HandshakeHeaderTimeout is how long an RPC connection may stay without
	// sending its request's length (PYMOONCAKE_HANDSHAKE_HEADER_TIMEOUT_MS,
	// milliseconds, default 1000).
	HandshakeHeaderTimeout time.Duration
	// MetricsAddr is where the engine serves its metrics over HTTP
	// (/metrics, Prometheus's text format): PYMOONCAKE_METRICS_HOST (default
	// every interface) and PYMOONCAKE_METRICS_PORT (0: any free port). Empty,
	// the default, serves nothing; the figures are recorded all the same.
	MetricsAddr string
	// MetricsMaxPeers bounds the peers that get a label of their own in the
	// metrics; the others are added up under "other"
	// (PYMOONCAKE_METRICS_MAX_PEERS, default 64, 1 to 4096).
	MetricsMaxPeers int
	// MetricsReport logs Mooncake's periodic throughput and latency summary
	// (MC_TE_METRIC), every MetricsInterval (MC_TE_METRIC_INTERVAL_SECONDS,
	// default 5 s, 1 s to a day).
	MetricsReport   bool
	MetricsInterval time.Duration
	// Set lists the variables that were present, for logging the effective
	// configuration once at init.
	Set map[string]string
}

// Defaults of the metrics variables.
const (
	DefaultMetricsMaxPeers = 64
	DefaultMetricsInterval = 5 * time.Second
)

// Defaults returns the configuration with no variable set.
func Defaults() Env {
	return Env{
		MinPort:                  15000,
		MaxPort:                  17000,
		HandshakePort:            12001,
		HandshakeMaxFrame:        1 << 20,
		HandshakeConnectTimeout:  5 * time.Second,
		TransferTimeout:          30 * time.Second,
		LogLevel:                 zapcore.InfoLevel,
		NotifyMaxCount:           DefaultNotifyMaxCount,
		NotifyMaxCountPerPeer:    DefaultNotifyMaxCountPerPeer,
		NotifyMaxBytes:           DefaultNotifyMaxBytes,
		NotifyMaxBytesPerPeer:    DefaultNotifyMaxBytesPerPeer,
		HandshakeMaxConns:        DefaultHandshakeMaxConns,
		HandshakeMaxConnsPerPeer: DefaultHandshakeMaxConnsPerPeer,
		HandshakeHeaderTimeout:   DefaultHandshakeHeaderTimeout,
		MetricsMaxPeers:          DefaultMetricsMaxPeers,
		MetricsInterval:          DefaultMetricsInterval,
		Set:                      map[string]string{},
	}
}

// Defaults of the pymooncake limits (see Env).
const (
	DefaultNotifyMaxCount           = 1 << 16
	DefaultNotifyMaxCountPerPeer    = 1 << 14
	DefaultNotifyMaxBytes           = 64 << 20
	DefaultNotifyMaxBytesPerPeer    = 16 << 20
	DefaultHandshakeMaxConns        = 256
	DefaultHandshakeMaxConnsPerPeer = 64
	DefaultHandshakeHeaderTimeout   = time.Second
)

// LookupFunc is os.LookupEnv's signature.
type LookupFunc func(key string) (string, bool)

// FromEnv parses every variable the engine reads. All problems are reported
// together, each naming the variable and its value.
func FromEnv(lookup LookupFunc) (Env, error) {
	e := Defaults()
	p := NewParser(lookup)
	e.Set = p.set

	minKey, maxKey := "MC_MIN_RPC_PORT", "MC_MAX_RPC_PORT"
	if _, ok := p.Lookup(minKey); !ok {
		minKey = "MC_MIN_PRC_PORT"
	}
	if _, ok := p.Lookup(maxKey); !ok {
		maxKey = "MC_MAX_PRC_PORT"
	}
	p.Int(&e.MinPort, minKey, 1, 65535)
	p.Int(&e.MaxPort, maxKey, 1, 65535)
	p.Int(&e.HandshakePort, "MC_HANDSHAKE_PORT", 1, 65535)
	p.Bool(&e.IPv6, "MC_USE_IPV6")
	var maxFrame int
	if p.Int(&maxFrame, "MC_HANDSHAKE_MAX_LENGTH", 1, 128<<20) {
		e.HandshakeMaxFrame = uint64(maxFrame)
	}
	p.Seconds(&e.HandshakeConnectTimeout, "MC_HANDSHAKE_CONNECT_TIMEOUT", 1, 3600)
	if v, ok := p.Lookup("MC_TCP_BIND_ADDRESS"); ok {
		e.TCPBindAddress = strings.TrimSpace(v)
	}
	if v, ok := p.Lookup("MC_METADATA_CLUSTER_ID"); ok {
		e.ClusterID = v
	}
	p.Seconds(&e.MetadataLeaseTTL, "MC_METADATA_LEASE_TTL", 0, 86400)
	p.Presence(&e.DisableMetaCache, "MC_DISABLE_METACACHE")
	p.Presence(&e.ForceTCP, "MC_FORCE_TCP")
	p.Presence(&e.ForceHCA, "MC_FORCE_HCA")
	if v, ok := p.Lookup("MC_CUSTOM_TOPO_JSON"); ok {
		e.CustomTopoJSON = strings.TrimSpace(v)
	}
	if v, ok := p.Lookup("USE_BAREX"); ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err != nil {
			p.Fail("USE_BAREX", v, "not an integer")
		} else {
			e.UseBarex = n != 0
		}
	}
	e.CUDAVisibleDevices, e.CUDAVisibleDevicesSet = p.Lookup("CUDA_VISIBLE_DEVICES")
	if v, ok := p.Lookup("CUDA_DEVICE_ORDER"); ok {
		e.CUDADeviceOrder = strings.TrimSpace(v)
	}
	p.Seconds(&e.TransferTimeout, "MC_TRANSFER_TIMEOUT", 5, 86400)
	if v, ok := p.Lookup("MC_LOG_LEVEL"); ok {
		lvl, err := ParseLogLevel(v)
		if err != nil {
			p.Fail("MC_LOG_LEVEL", v, err.Error())
		} else {
			e.LogLevel = lvl
		}
	}

	parseLimits(p, &e)
	parseMetrics(p, &e)

	if len(p.errs) == 0 {
		if err := ValidatePortRange(e.MinPort, e.MaxPort); err != nil {
			p.errs = append(p.errs, fmt.Errorf("%w: %s=%d %s=%d: %v", ErrInvalid, minKey, e.MinPort, maxKey, e.MaxPort, err))
		}
	}
	return e, errors.Join(p.errs...)
}

// parseLimits reads the PYMOONCAKE_NOTIFY_* and PYMOONCAKE_HANDSHAKE_*
// limits. A per-peer bound left unset follows a lower total down; one set
// above its total is an error.
func parseLimits(p *Parser, e *Env) {
	p.Int(&e.NotifyMaxCount, "PYMOONCAKE_NOTIFY_MAX_COUNT", 1, 1<<24)
	var maxBytes int
	if p.Int(&maxBytes, "PYMOONCAKE_NOTIFY_MAX_BYTES", 1, 1<<40) {
		e.NotifyMaxBytes = int64(maxBytes)
	}
	perPeer(p, &e.NotifyMaxCountPerPeer, e.NotifyMaxCount, "PYMOONCAKE_NOTIFY_MAX_COUNT_PER_PEER", "PYMOONCAKE_NOTIFY_MAX_COUNT", 1<<24)
	peerBytes := int(e.NotifyMaxBytesPerPeer)
	perPeer(p, &peerBytes, int(e.NotifyMaxBytes), "PYMOONCAKE_NOTIFY_MAX_BYTES_PER_PEER", "PYMOONCAKE_NOTIFY_MAX_BYTES", 1<<40)
	e.NotifyMaxBytesPerPeer = int64(peerBytes)

	p.Int(&e.HandshakeMaxConns, "PYMOONCAKE_HANDSHAKE_MAX_CONNS", 1, 1<<16)
	perPeer(p, &e.HandshakeMaxConnsPerPeer, e.HandshakeMaxConns,
		"PYMOONCAKE_HANDSHAKE_MAX_CONNS_PER_PEER", "PYMOONCAKE_HANDSHAKE_MAX_CONNS", 1<<16)
	var ms int
	if p.Int(&ms, "PYMOONCAKE_HANDSHAKE_HEADER_TIMEOUT_MS", 10, 60000) {
		e.HandshakeHeaderTimeout = time.Duration(ms) * time.Millisecond
	}
}

// perPeer parses key, a per-peer bound in [1, hi], into dst; unset, dst is
// lowered to total when above it; set above total, it is an error.
func perPeer(p *Parser, dst *int, total int, key, totalKey string, hi int) {
	if !p.Int(dst, key, 1, hi) {
		*dst = min(*dst, total)
		return
	}
	if *dst > total {
		p.Fail(key, strconv.Itoa(*dst), fmt.Sprintf("above %s (%d)", totalKey, total))
	}
}

// parseMetrics reads the metrics variables: the endpoint, the label bound
// and Mooncake's periodic summary.
func parseMetrics(p *Parser, e *Env) {
	e.MetricsAddr = metricsAddr(p)
	p.Int(&e.MetricsMaxPeers, "PYMOONCAKE_METRICS_MAX_PEERS", 1, 4096)
	p.Bool(&e.MetricsReport, "MC_TE_METRIC")
	p.Seconds(&e.MetricsInterval, "MC_TE_METRIC_INTERVAL_SECONDS", 1, 86400)
}

// metricsAddr is the metrics endpoint's address, or "" for none.
func metricsAddr(p *Parser) string {
	var port int
	portSet := p.Int(&port, "PYMOONCAKE_METRICS_PORT", 0, 65535)
	v, hostSet := p.Lookup("PYMOONCAKE_METRICS_HOST")
	host := strings.TrimSpace(v)
	switch {
	case hostSet && (host == "" || strings.ContainsAny(host, " /[]")):
		p.Fail("PYMOONCAKE_METRICS_HOST", v, "want an IP address or a host name")
		return ""
	case hostSet && !portSet:
		if _, ok := p.Lookup("PYMOONCAKE_METRICS_PORT"); !ok {
			p.Fail("PYMOONCAKE_METRICS_HOST", v, "set without PYMOONCAKE_METRICS_PORT")
		}
		return ""
	case !portSet:
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// ValidatePortRange applies Mooncake HEAD's rules to a random-port range:
// no privileged ports, nothing inside Linux's ephemeral range (where outgoing
// connections take their ports), and min <= max.
func ValidatePortRange(minPort, maxPort int) error {
	switch {
	case minPort > maxPort:
		return fmt.Errorf("min port %d above max port %d", minPort, maxPort)
	case minPort < 1024:
		return fmt.Errorf("port %d is privileged (below 1024)", minPort)
	case maxPort > 65535:
		return fmt.Errorf("port %d above 65535", maxPort)
	case minPort <= 60999 && maxPort >= 32768:
		return fmt.Errorf("range [%d, %d] overlaps the ephemeral port range [32768, 60999]", minPort, maxPort)
	}
	return nil
}

// ParseLogLevel maps Mooncake's MC_LOG_LEVEL names (glog's, plus the usual
// aliases) to zap levels. TRACE is zap's debug level.
func ParseLogLevel(s string) (zapcore.Level, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "TRACE", "DEBUG", "VERBOSE":
		return zapcore.DebugLevel, nil
	case "INFO":
		return zapcore.InfoLevel, nil
	case "WARNING", "WARN":
		return zapcore.WarnLevel, nil
	case "ERROR", "FATAL":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want TRACE, INFO, WARNING or ERROR)", s)
}

// SortedSet returns the variables that were set as "KEY=VALUE" strings.
func (e Env) SortedSet() []string {
	out := make([]string, 0, len(e.Set))
	for k, v := range e.Set {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Parser reads variables through a lookup function, strictly: each typed
// method parses one variable when it is set, and a malformed or
// out-of-range value becomes an error naming the variable and its value.
// All problems are kept, so one call reports every bad variable. The
// transports parse their own variables with it (tcp.ConfigFromEnv,
// rdma.ConfigFromEnv, barex.ConfigFromEnv).
type Parser struct {
	lookup LookupFunc
	set    map[string]string
	errs   []error
}

// NewParser returns a parser over lookup (nil: no variable is set).
func NewParser(lookup LookupFunc) *Parser {
	return &Parser{lookup: lookup, set: map[string]string{}}
}

// Lookup returns a variable and records that it was set. A Parser's Lookup
// is itself a LookupFunc: hand it to another parser to record what that
// one reads.
func (p *Parser) Lookup(key string) (string, bool) {
	if p.lookup == nil {
		return "", false
	}
	v, ok := p.lookup(key)
	if ok {
		p.set[key] = v
	}
	return v, ok
}

// Fail records that key's value is bad, and why.
func (p *Parser) Fail(key, value, why string) {
	p.errs = append(p.errs, fmt.Errorf("%w: %s=%q: %s", ErrInvalid, key, value, why))
}

// Err joins every problem found so far, or is nil.
func (p *Parser) Err() error { return errors.Join(p.errs...) }

// Set returns the variables that were looked up and present.
func (p *Parser) Set() map[string]string { return p.set }

// Int parses key into dst when set; it reports whether it was set and
// valid.
func (p *Parser) Int(dst *int, key string, lo, hi int) bool {
	v, ok := p.Lookup(key)
	if !ok {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		p.Fail(key, v, "not an integer")
		return false
	}
	if n < lo || n > hi {
		p.Fail(key, v, fmt.Sprintf("out of range [%d, %d]", lo, hi))
		return false
	}
	*dst = n
	return true
}

// Seconds parses key, a whole number of seconds in [lo, hi], into dst.
func (p *Parser) Seconds(dst *time.Duration, key string, lo, hi int) bool {
	var n int
	if p.Int(&n, key, lo, hi) {
		*dst = time.Duration(n) * time.Second
		return true
	}
	return false
}

// Bool accepts the usual spellings; anything else is an error.
func (p *Parser) Bool(dst *bool, key string) {
	v, ok := p.Lookup(key)
	if !ok {
		return
	}
	b, err := ParseBool(v)
	if err != nil {
		p.Fail(key, v, err.Error())
		return
	}
	*dst = b
}

// SameHost is PYMOONCAKE_SAME_HOST, which every same-host transport reads.
const SameHost = "PYMOONCAKE_SAME_HOST"

// SameHostOff reports whether PYMOONCAKE_SAME_HOST turns the same-host
// transports off (a false spelling: 0, false, no, off). Its other values
// choose the host-memory transport's paths, which that transport's parser
// validates; to the others they all mean on.
func (p *Parser) SameHostOff() bool {
	v, ok := p.Lookup(SameHost)
	if !ok {
		return false
	}
	b, err := ParseBool(v)
	return err == nil && !b
}

// Presence is for the variables Mooncake treats as on whenever they are
// set (MC_FORCE_TCP=1 and MC_FORCE_TCP=yes alike). An explicit false
// spelling turns the switch off rather than on, which is what users mean.
func (p *Parser) Presence(dst *bool, key string) {
	v, ok := p.Lookup(key)
	if !ok {
		return
	}
	if strings.TrimSpace(v) == "" {
		*dst = true
		return
	}
	b, err := ParseBool(v)
	if err != nil {
		p.Fail(key, v, err.Error())
		return
	}
	*dst = b
}

// ParseBool reads Mooncake's boolean spellings: 1/0, true/false, yes/no,
// on/off, y/n, in any case, spaces around ignored.
func ParseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on", "y":
		return true, nil
	case "0", "false", "no", "off", "n":
		return false, nil
	}
	return false, errors.New("want 1/0, true/false, yes/no or on/off")
}
