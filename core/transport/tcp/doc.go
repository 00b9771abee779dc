// Package tcp implements Mooncake's TCP data transport: the 24-byte request
// header, the v1 framing (no acknowledgement, one request per connection on
// the client side) and the v2 framing (status frames carrying the "MCTV"
// magic), as specified in reference/protocol.md §5.
//
// A Transport is both ends at once:
//
//   - The server owns the listener handed to New and one goroutine per
//     accepted connection. Every request is checked with the engine's
//     Validator at header time; the server reads or writes only the bytes of
//     [addr, addr+size) that the validator approved, in place, and drops the
//     connection on anything else (v2 peers first get a REJECTED frame).
//     It holds at most Config.MaxConns connections, Config.MaxConnsPerPeer
//     of them from one remote IP; at a limit it closes the longest-idle
//     connection (one waiting for its next header) of the IP that holds the
//     most, never one in the middle of a request (see server).
//   - The client keeps, per peer (name, host, port), up to Config.Lanes
//     persistent v2 connections ("lanes"). Each is pipelined: the lane's
//     goroutine writes up to Config.Window requests without waiting for
//     their replies, and a reader goroutine per connection takes the replies
//     in order (a v2 server serves a connection's requests in order, so this
//     is Mooncake's framing on the wire). v1 targets get a fresh connection
//     per request, because their servers close after one.
//   - Between pymooncake engines, which publish SGKey, small requests travel
//     many to a scatter-gather request (wire.go): one header, a table of
//     ranges and one body, moved with readv/writev from and to registered
//     memory; the target validates every range first and refuses ranges one
//     by one. Mooncake peers never see it. Requests contiguous on both sides
//     are coalesced into one (coalesce.go), for every peer.
//
// Ownership: New takes the listener; Close closes it, every accepted and
// dialed connection, fails every queued or in-flight task with ErrClosed and
// waits for all goroutines. A peer's lanes (goroutines and connection)
// start on first use and live until ClosePeer, which fails that peer's work
// the same way, or Close, or until the lane is idle without a connection:
// an idle connection's reader sees at once a peer that closes it (it died,
// restarted, or dropped it after 10 idle minutes as the server does), and
// the lane then ends its goroutine, so peers nobody uses any more cost
// nothing; the next request dials afresh. A request that meets a pooled
// connection closed an instant earlier is sent again once on a new one.
//
// Cancellation: when the ctx of a Submit ends, every lane holding its
// requests cuts its connection short; those requests fail at once, after
// the connection's reader has stopped (so no byte of them lands later),
// and the lane's other requests go out again on a fresh connection.
//
// The server pins (core/memory) each range it reads or writes for as long
// as it touches it, so unregister_memory waits for it.
//
// GPU memory (Config.GPU) is never touched in place: the client and the
// server copy it through the page-locked buffers of a gpu stage, chunk by
// chunk, with the device copies of the next chunks overlapping the socket
// I/O of this one, in both directions. Host and GPU memory mix freely in a
// batch; the wire format is the same.
//
// Errors reported through Task.PartDone: ErrRejected (the target refused the
// address range; only that task fails), ErrLegacyPeer and ErrUnknownStatus
// (a status frame that v2 does not define), ErrStaging (a local GPU copy
// failed; the peer stays healthy), ErrPeer (the connection failed:
// refused, reset, closed or timed out; every task queued on that lane fails
// and PeerHealth reports it), ErrClosed, and the ctx's own error when the
// Submit context ends first. All of them come wrapped in a *PeerError naming
// the peer, its address and the request.
package tcp
