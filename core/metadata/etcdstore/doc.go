// Package etcdstore implements metadata.Store over an etcd v3 cluster, the
// backend Mooncake selects with an "etcd://h1:p1,h2:p2" connection string
// (protocol.md §3.2). Keys and values are stored byte for byte as given; each
// operation is bounded by Config.OpTimeout (5 s, as Mooncake).
//
// Mooncake puts keys without a lease, so a crashed engine leaves stale keys
// behind. With Config.LeaseTTL set, every Put is attached to a lease that the
// Store keeps alive; the keys of a process that dies vanish after the TTL. If
// the lease is lost (an etcd outage longer than the TTL), the Store grants a
// new one once etcd answers again, re-puts the keys it wrote itself, and then
// calls Config.OnReconnect so the owner can republish anything else.
//
// Ownership: New opens an etcd client and, with a lease, starts one keeper
// goroutine. Close stops the keeper, revokes the lease (so the Store's keys
// disappear at once) and closes the client; the caller must call Close.
//
// Errors: Get of a missing key matches metadata.ErrNotFound. New fails with
// an error matching ErrUnreachable when no endpoint answers within
// Config.DialTimeout. Calls after Close match ErrClosed. Deadlines surface as
// context.DeadlineExceeded or context.Canceled.
package etcdstore
