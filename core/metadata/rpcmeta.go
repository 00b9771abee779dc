package metadata

import (
	"fmt"
	"math"
)

// RPCMeta is the rpc_meta locator a segment publishes in metadata-server
// mode, telling peers where its handshake (RPC) listener is:
// {"ip_or_host_name":"10.0.0.5","rpc_port":15678}.
type RPCMeta struct {
	// IPOrHostName is MC_TCP_BIND_ADDRESS, or the first non-loopback
	// interface that is up and running.
	IPOrHostName string
	// RPCPort is the handshake listener's port, 1..65535.
	RPCPort int
}

func (m RPCMeta) validate() error {
	if m.IPOrHostName == "" {
		return malformed("empty ip_or_host_name")
	}
	if m.RPCPort < 1 || m.RPCPort > math.MaxUint16 {
		return malformed("rpc_port %d out of range 1..65535", m.RPCPort)
	}
	return nil
}

// Marshal encodes m as Mooncake does: sorted keys, the port as a plain
// integer. newline selects FastWriter's form (etcd); without it the result is
// the HTTP PUT body. An empty host or a port outside 1..65535 matches
// ErrMalformed.
func (m RPCMeta) Marshal(newline bool) ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("encode rpc_meta: %w", err)
	}
	out := appendObject(nil, []member{
		{"ip_or_host_name", quoted(m.IPOrHostName)},
		{"rpc_port", intJSON(m.RPCPort)},
	})
	if newline {
		out = append(out, '\n')
	}
	return out, nil
}

// DecodeRPCMeta parses an rpc_meta value. Unknown keys are ignored. A missing
// or empty host, a port outside 1..65535 (Mooncake would truncate it to 16
// bits) or a port sent as a string is an error matching ErrMalformed; the
// result is then the zero RPCMeta.
func DecodeRPCMeta(data []byte) (RPCMeta, error) {
	m, err := decodeRPCMeta(data)
	if err != nil {
		return RPCMeta{}, fmt.Errorf("decode rpc_meta: %w", err)
	}
	return m, nil
}

func decodeRPCMeta(data []byte) (RPCMeta, error) {
	var m RPCMeta
	if len(data) > MaxDescriptorSize {
		return m, malformed("%d bytes exceeds the limit of %d", len(data), MaxDescriptorSize)
	}
	r := newReader(data)
	if err := r.openObject(); err != nil {
		return m, err
	}
	for r.more() {
		key, err := r.key()
		if err != nil {
			return m, err
		}
		switch key {
		case "ip_or_host_name":
			m.IPOrHostName, err = r.str()
		case "rpc_port":
			var port uint64
			port, err = r.uint(math.MaxUint16)
			m.RPCPort = int(port)
		default:
			err = r.skip()
		}
		if err != nil {
			return m, fmt.Errorf("key %q: %w", key, err)
		}
	}
	if err := r.close(); err != nil {
		return m, err
	}
	if err := r.end(); err != nil {
		return m, err
	}
	return m, m.validate()
}
