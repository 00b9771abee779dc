package engine

import (
	"errors"
	"net"
)

// advertisedHost is the address published in rpc_meta: MC_TCP_BIND_ADDRESS,
// else the first non-loopback interface that is up and running (as
// Mooncake's findLocalIpAddresses), else the host of the server name.
func advertisedHost(bind string, ipv6 bool, fallback string) (string, error) {
	if bind != "" {
		return bind, nil
	}
	ifaces, err := net.Interfaces()
	if err == nil {
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagRunning == 0 || ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, err := ifc.Addrs()
			if err != nil {
				continue
			}
			for _, a := range addrs {
				ipn, ok := a.(*net.IPNet)
				if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
					continue
				}
				if (ipn.IP.To4() != nil) != ipv6 {
					return ipn.IP.String(), nil
				}
			}
		}
	}
	if fallback != "" {
		return fallback, nil
	}
	return "", errors.New("no address to advertise: set MC_TCP_BIND_ADDRESS")
}
