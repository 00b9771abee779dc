package metadata

import (
	"fmt"
	"net/url"
	"strings"
)

// P2PHandshake is the connection string of P2P handshake mode: no store;
// descriptors are exchanged over the handshake socket.
const P2PHandshake = "P2PHANDSHAKE"

// Kind is a metadata backend.
type Kind int

// Metadata backends. Redis is recognised only so that it is refused with a
// clear error: the pip wheels have no redis either.
const (
	P2P Kind = iota + 1
	Etcd
	HTTP
	Redis
)

func (k Kind) String() string {
	switch k {
	case P2P:
		return "p2p"
	case Etcd:
		return "etcd"
	case HTTP:
		return "http"
	case Redis:
		return "redis"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ConnString is a parsed metadata connection string.
type ConnString struct {
	Kind Kind
	// Endpoints are etcd's endpoints, in order.
	Endpoints []string
	// URL is the whole connection string of an HTTP(S) store; Mooncake
	// appends "?key=<escaped key>" to it.
	URL string
}

// ParseConnString parses the metadata_server argument of Mooncake's
// TransferEngine.init:
//
//   - "P2PHANDSHAKE": P2P.
//   - "etcd://h:p[,h:p...]": Etcd; endpoints are separated by ',' or ';',
//     trimmed, and empty ones dropped (Mooncake's etcd wrapper).
//   - "http://..." or "https://...": HTTP, the URL being the whole string.
//   - a string without "://", such as "127.0.0.1:2379": etcd.
//
// "redis://..." is refused with an error matching ErrUnsupportedBackend
// (Mooncake would abort the process), as is any other scheme. An empty
// string, an etcd string without endpoints or an HTTP URL without a host
// matches ErrMalformed. On error the result is the zero ConnString.
func ParseConnString(s string) (ConnString, error) {
	c, err := parseConnString(s)
	if err != nil {
		return ConnString{}, fmt.Errorf("parse metadata connection string %q: %w", s, err)
	}
	return c, nil
}

func parseConnString(s string) (ConnString, error) {
	if s == "" {
		return ConnString{}, malformed("empty")
	}
	if s == P2PHandshake {
		return ConnString{Kind: P2P}, nil
	}
	scheme, rest, found := strings.Cut(s, "://")
	if !found {
		scheme, rest = "etcd", s
	}
	switch scheme {
	case "etcd":
		var eps []string
		for ep := range strings.FieldsFuncSeq(rest, func(r rune) bool { return r == ',' || r == ';' }) {
			if ep = strings.TrimSpace(ep); ep != "" {
				eps = append(eps, ep)
			}
		}
		if len(eps) == 0 {
			return ConnString{}, malformed("no etcd endpoints")
		}
		return ConnString{Kind: Etcd, Endpoints: eps}, nil
	case "http", "https":
		u, err := url.Parse(s)
		if err != nil {
			return ConnString{}, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if u.Host == "" {
			return ConnString{}, malformed("no host in url")
		}
		return ConnString{Kind: HTTP, URL: s}, nil
	case "redis":
		return ConnString{}, fmt.Errorf("%w: redis metadata is not supported by pymooncake; use etcd or http",
			ErrUnsupportedBackend)
	}
	return ConnString{}, fmt.Errorf("%w: unknown scheme %q; use P2PHANDSHAKE, etcd:// or http(s)://",
		ErrUnsupportedBackend, scheme)
}

// ConnStringFromType builds the connection string of Python's
// initialize_ext(..., metadata_server, ..., metadata_type):
// metadataType+"://"+server, unless server already contains "://" or is
// "P2PHANDSHAKE".
func ConnStringFromType(server, metadataType string) string {
	if server == P2PHandshake || strings.Contains(server, "://") {
		return server
	}
	return metadataType + "://" + server
}
