// Package hostid tells whether two engines run on the same host, and in
// which of its namespaces, from what each publishes in its descriptor.
//
// An engine's Identity is its kernel boot id (/proc/sys/kernel/random/boot_id,
// new at every boot of every host), the inodes of its network and PID
// namespaces (/proc/self/ns), its user id and its process id. The same-host
// transports publish it under Key (Publish) and read a peer's with Parse;
// Reachable says whether a peer's Unix sockets can be reached from here (same
// boot, same network namespace: abstract Unix socket names are scoped by the
// network namespace). A hostname is never used: two containers on one host
// may share it, and two hosts may too.
//
// Mooncake ignores descriptor keys it does not know, and publishes none of
// these: a Mooncake peer has no Identity (ErrNoIdentity), and is never taken
// for a same-host peer.
//
// The package owns nothing and starts nothing.
package hostid
