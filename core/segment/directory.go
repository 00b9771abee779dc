package segment

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
)

// Directory finds peers: their descriptors and their RPC endpoints. In P2P
// mode the name itself is the RPC locator and descriptors come over the
// handshake socket; in store modes both come from etcd or HTTP
// (protocol.md §3).
type Directory interface {
	// Fetch returns the raw descriptor JSON of segment name.
	Fetch(ctx context.Context, name string) ([]byte, error)
	// RPCAddr returns the host:port of name's handshake listener.
	RPCAddr(ctx context.Context, name string) (string, error)
	// Host returns the host to reach name's data listeners on.
	Host(ctx context.Context, name string) (string, error)
	// Forget drops anything cached about name.
	Forget(name string)
}

// NewP2P returns the directory of P2P mode: a name is host:port of the
// peer's RPC listener (protocol.md §3.5), port defaulting to defaultPort.
// own returns this engine's descriptor, the body of Metadata requests
// (peers ignore it, but Mooncake sends its own and so do we).
func NewP2P(client *handshake.Client, defaultPort int, own func() []byte) Directory {
	return &p2pDirectory{client: client, defaultPort: defaultPort, own: own}
}

// NewStore returns the directory of a metadata store whose keys start with
// prefix. rpc_meta entries are cached until Forget (Mooncake caches them
// for ever, which pins a restarted peer's old port).
func NewStore(store metadata.Store, prefix string) Directory {
	return &storeDirectory{store: store, prefix: prefix}
}

type p2pDirectory struct {
	client      *handshake.Client
	defaultPort int
	// own returns our descriptor, sent as the body of Metadata requests
	// (peers ignore it, but Mooncake sends its own and so do we).
	own func() []byte
}

func (d *p2pDirectory) Fetch(ctx context.Context, name string) ([]byte, error) {
	addr, err := d.RPCAddr(ctx, name)
	if err != nil {
		return nil, err
	}
	raw, err := d.client.FetchMetadata(ctx, addr, d.own())
	if err != nil {
		return nil, fmt.Errorf("fetch descriptor from %s: %w", addr, err)
	}
	return raw, nil
}

func (d *p2pDirectory) RPCAddr(_ context.Context, name string) (string, error) {
	host, port := metadata.ParseHostPort(name, d.defaultPort)
	if host == "" {
		return "", fmt.Errorf("segment name %q has no host: %w", name, ErrInvalidArgument)
	}
	return metadata.JoinHostPort(host, port), nil
}

func (d *p2pDirectory) Host(_ context.Context, name string) (string, error) {
	host, _ := metadata.ParseHostPort(name, d.defaultPort)
	if host == "" {
		return "", fmt.Errorf("segment name %q has no host: %w", name, ErrInvalidArgument)
	}
	return host, nil
}

func (d *p2pDirectory) Forget(string) {}

type storeDirectory struct {
	store  metadata.Store
	prefix string

	mu  sync.Mutex
	rpc map[string]metadata.RPCMeta // +checklocks:mu
}

func (d *storeDirectory) Fetch(ctx context.Context, name string) ([]byte, error) {
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

func (d *storeDirectory) RPCAddr(ctx context.Context, name string) (string, error) {
	m, err := d.meta(ctx, name)
	if err != nil {
		return "", err
	}
	return metadata.JoinHostPort(m.IPOrHostName, m.RPCPort), nil
}

func (d *storeDirectory) Host(ctx context.Context, name string) (string, error) {
	m, err := d.meta(ctx, name)
	if err != nil {
		return "", err
	}
	return m.IPOrHostName, nil
}

func (d *storeDirectory) Forget(name string) {
	d.mu.Lock()
	delete(d.rpc, name)
	d.mu.Unlock()
}
