package metadata

import (
	"net/netip"
	"strconv"
	"strings"
)

// DefaultHandshakePort is Mooncake's default handshake port
// (MC_HANDSHAKE_PORT), used when a server name has no valid port.
const DefaultHandshakePort = 12001

// isIPv6 reports whether s is an IPv6 literal as Mooncake's isValidIpV6 sees
// it: inet_pton(AF_INET6) accepts it after an optional "%scope" suffix, which
// may not contain ':' (that would be a port).
func isIPv6(s string) bool {
	addr, scope, hasScope := strings.Cut(s, "%")
	if hasScope && strings.Contains(scope, ":") {
		return false
	}
	ip, err := netip.ParseAddr(addr)
	return err == nil && ip.Is6() && ip.Zone() == ""
}

// parsePort reads a port as std::from_chars does (decimal digits only, the
// whole string) and accepts 1..65535.
func parsePort(s string) (int, bool) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, false
	}
	return int(p), true
}

// ParseHostPort splits a server name into host and port the way Mooncake's
// parseHostNameWithPort does (HEAD):
//
//   - "[v6]:port" or "[v6]": the bracketed IPv6 literal (scope id allowed);
//     the port is what follows the first ':' after ']'.
//   - a bare IPv6 literal ("::1", "fe80::1%eth0"): the whole name, no port.
//   - "fe80::1%eth0:1234": an IPv6 literal with scope id, then the port.
//   - otherwise "host:port", split at the last ':', or a host alone.
//
// A missing or invalid port (not decimal digits, 0, or above 65535) yields
// defaultPort, usually DefaultHandshakePort.
func ParseHostPort(name string, defaultPort int) (host string, port int) {
	withPort := func(host, portText string) (string, int) {
		if p, ok := parsePort(portText); ok {
			return host, p
		}
		return host, defaultPort
	}
	if rest, ok := strings.CutPrefix(name, "["); ok {
		if inside, after, ok := strings.Cut(rest, "]"); ok && isIPv6(inside) {
			if _, portText, ok := strings.Cut(after, ":"); ok {
				return withPort(inside, portText)
			}
			return inside, defaultPort
		}
		// Not a bracketed IPv6 literal: fall through to host:port.
	} else if isIPv6(name) {
		return name, defaultPort
	} else if i := strings.IndexByte(name, '%'); i >= 0 {
		if j := strings.IndexByte(name[i:], ':'); j >= 0 {
			if h := name[:i+j]; isIPv6(h) {
				return withPort(h, name[i+j+1:])
			}
		}
	}
	i := strings.LastIndexByte(name, ':')
	if i < 0 {
		return name, defaultPort
	}
	return withPort(name[:i], name[i+1:])
}

// JoinHostPort joins host and port as Mooncake's maybeWrapIpV6(host)+":"+port
// does: an IPv6 literal (not already bracketed) is put in brackets.
func JoinHostPort(host string, port int) string {
	if isIPv6(host) {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}
