package core

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
)

// directory finds peers: their descriptors and their RPC endpoints. In P2P
// mode the name itself is the RPC locator and descriptors come over the
// handshake socket; in store modes both come from etcd or HTTP (§3).
type directory interface {
	// fetch returns the raw descriptor JSON of segment name.
	fetch(ctx context.Context, name string) ([]byte, error)
	// rpcAddr returns the host:port of name's handshake listener.
	rpcAddr(ctx context.Context, name string) (string, error)
	// host returns the host to reach name's data listener on.
	host(ctx context.Context, name string) (string, error)
	// forget drops anything cached about name.
	forget(name string)
}

// p2pDirectory resolves peers by talking to them: a P2P name is host:port
// of the peer's RPC listener (§3.5).
type p2pDirectory struct {
	client      *handshake.Client
	defaultPort int
	// own returns our descriptor, sent as the body of Metadata requests
	// (peers ignore it, but Mooncake sends its own and so do we).
	own func() []byte
}

func (d *p2pDirectory) fetch(ctx context.Context, name string) ([]byte, error) {
	addr, err := d.rpcAddr(ctx, name)
	if err != nil {
		return nil, err
	}
	raw, err := d.client.FetchMetadata(ctx, addr, d.own())
	if err != nil {
		return nil, fmt.Errorf("fetch descriptor from %s: %w", addr, err)
	}
	return raw, nil
}

func (d *p2pDirectory) rpcAddr(_ context.Context, name string) (string, error) {
	host, port := metadata.ParseHostPort(name, d.defaultPort)
	if host == "" {
		return "", fmt.Errorf("segment name %q has no host: %w", name, ErrInvalidArgument)
	}
	return metadata.JoinHostPort(host, port), nil
}

func (d *p2pDirectory) host(_ context.Context, name string) (string, error) {
	host, _ := metadata.ParseHostPort(name, d.defaultPort)
	if host == "" {
		return "", fmt.Errorf("segment name %q has no host: %w", name, ErrInvalidArgument)
	}
	return host, nil
}

func (d *p2pDirectory) forget(string) {}

// storeDirectory resolves peers through a shared metadata store. rpc_meta
// entries are cached until the segment is closed (Mooncake caches them for
// ever, which pins a restarted peer's old port).
type storeDirectory struct {
	store  metadata.Store
	prefix string

	mu  sync.Mutex
	rpc map[string]metadata.RPCMeta // +checklocks:mu
}

func (d *storeDirectory) fetch(ctx context.Context, name string) ([]byte, error) {
	raw, err := d.store.Get(ctx, metadata.SegmentKey(d.prefix, name))
	if err != nil {
		if errors.Is(err, metadata.ErrNotFound) {
			return nil, fmt.Errorf("segment %q is not published: %w: %w", name, ErrMetadata, err)
		}
		return nil, fmt.Errorf("get descriptor of %q: %w: %w", name, ErrMetadata, err)
	}
	return raw, nil
}

func (d *storeDirectory) meta(ctx context.Context, name string) (metadata.RPCMeta, error) {
	d.mu.Lock()
	m, ok := d.rpc[name]
	d.mu.Unlock()
	if ok {
		return m, nil
	}
	raw, err := d.store.Get(ctx, metadata.RPCMetaKey(d.prefix, name))
	if err != nil {
		return metadata.RPCMeta{}, fmt.Errorf("get rpc_meta of %q: %w: %w", name, ErrMetadata, err)
	}
	m, err = metadata.DecodeRPCMeta(raw)
	if err != nil {
		return metadata.RPCMeta{}, fmt.Errorf("rpc_meta of %q: %w: %w", name, ErrMetadata, err)
	}
	d.mu.Lock()
	if d.rpc == nil {
		d.rpc = map[string]metadata.RPCMeta{}
	}
	d.rpc[name] = m
	d.mu.Unlock()
	return m, nil
}

func (d *storeDirectory) rpcAddr(ctx context.Context, name string) (string, error) {
	m, err := d.meta(ctx, name)
	if err != nil {
		return "", err
	}
	return metadata.JoinHostPort(m.IPOrHostName, m.RPCPort), nil
}

func (d *storeDirectory) host(ctx context.Context, name string) (string, error) {
	m, err := d.meta(ctx, name)
	if err != nil {
		return "", err
	}
	return m.IPOrHostName, nil
}

func (d *storeDirectory) forget(name string) {
	d.mu.Lock()
	delete(d.rpc, name)
	d.mu.Unlock()
}

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

// portString is strconv.Itoa for log fields.
func portString(p int) string { return strconv.Itoa(p) }
