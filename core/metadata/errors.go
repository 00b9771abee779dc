package metadata

import "errors"

// ErrMalformed matches every error caused by input that is not a valid
// descriptor, rpc_meta value or connection string: bad JSON, wrong types,
// numbers out of range, or a descriptor Mooncake itself would reject.
var ErrMalformed = errors.New("metadata: malformed")

// ErrUnsupportedProtocol matches a descriptor whose protocol is not one
// pymooncake speaks ("tcp", "rdma", "barex"), such as "nvlink" or a
// multi-protocol descriptor. The input may be well formed.
var ErrUnsupportedProtocol = errors.New("metadata: unsupported protocol")

// ErrUnsupportedBackend matches a connection string naming a metadata backend
// that pymooncake does not implement (redis, or an unknown scheme).
var ErrUnsupportedBackend = errors.New("metadata: unsupported backend")
