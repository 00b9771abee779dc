package metadata

import (
	"context"
	"errors"
)

// ErrNotFound is returned by a Store when a key does not exist.
var ErrNotFound = errors.New("metadata: key not found")

// Store is a shared key-value metadata backend (etcd, HTTP). Keys and values
// are exactly what Mooncake reads and writes (see KeyPrefix, SegmentKey,
// RPCMetaKey). Every call honours ctx's deadline. P2P mode has no Store.
type Store interface {
	// Get returns the value of key, or an error matching ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put stores value under key. For rpc_meta keys a store may refuse to
	// overwrite an existing key (Mooncake's HTTP server answers 400).
	Put(ctx context.Context, key string, value []byte) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Close releases the store's connections and goroutines.
	Close() error
}
