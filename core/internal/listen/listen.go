// Package listen binds TCP listeners on a random free port of a range, the
// way Mooncake's findAvailableTcpPort picks RPC and data ports: the listener
// that probed the port is the one kept, so there is no probe-then-bind race.
package listen

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"syscall"
)

// Attempts is how many random ports are tried before giving up, as Mooncake.
const Attempts = 500

// RandomPort listens on a random free port in [minPort, maxPort] on every
// address ("tcp", or "tcp6"-only when ipv6 is set, matching MC_USE_IPV6).
func RandomPort(minPort, maxPort int, ipv6 bool) (net.Listener, error) {
	if minPort < 1 || maxPort > 65535 || minPort > maxPort {
		return nil, fmt.Errorf("listen: invalid port range [%d, %d]", minPort, maxPort)
	}
	network, host := "tcp", ""
	if ipv6 {
		network, host = "tcp6", "::"
	}
	span := maxPort - minPort + 1
	var last error
	for i := 0; i < Attempts; i++ {
		port := minPort + rand.IntN(span)
		ln, err := net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return ln, nil
		}
		last = err
		if !errors.Is(err, syscall.EADDRINUSE) && !errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("listen on port %d: %w", port, err)
		}
	}
	return nil, fmt.Errorf("listen: no free port in [%d, %d] after %d attempts: %w", minPort, maxPort, Attempts, last)
}

// Port is the TCP port ln is bound to.
func Port(ln net.Listener) int {
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}
