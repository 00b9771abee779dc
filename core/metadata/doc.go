// Package metadata owns Mooncake's metadata formats and naming: the segment
// descriptor JSON (SegmentDesc), the rpc_meta locator (RPCMeta), the key
// scheme of shared stores (KeyPrefix, SegmentKey, RPCMetaKey), metadata
// connection strings (ParseConnString), and the host:port rules Mooncake uses
// for server names (ParseHostPort, JoinHostPort). It also defines the Store
// interface that the etcd and HTTP backends implement.
//
// Encoding reproduces jsoncpp's output byte for byte: keys in sorted order,
// compact, integers written as integers, non-ASCII escaped as \uXXXX. Marshal's
// newline argument selects Json::FastWriter's form (trailing '\n', used for
// etcd values and handshake messages) or the HTTP PUT form (no newline).
//
// Decoding takes untrusted peer input. It never panics, rejects numbers sent
// as strings and negative or fractional numbers, keeps every count bounded by
// the input size, and refuses inputs larger than MaxDescriptorSize. It applies
// the validity rules of Mooncake's decoder (protocol.md §2.3, §2.4).
//
// Errors are conclusive in two classes: ErrMalformed (the input is not a
// valid descriptor, locator or connection string) and ErrUnsupportedProtocol /
// ErrUnsupportedBackend (well formed, but not something pymooncake speaks).
//
// Nothing in this file set starts goroutines or holds resources; the Store
// implementations live in their own packages and are closed by whoever
// created them.
package metadata
