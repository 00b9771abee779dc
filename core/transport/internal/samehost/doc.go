// Package samehost tells whether two processes share a host, from what each
// publishes about itself: the kernel's boot id, the network and pid
// namespaces, and the pid. Same-host transports (CUDA IPC, shared memory,
// cross-memory attach) compare identities from their peers' descriptors,
// never host names: two containers on one machine may share a name, and
// one name may cover several machines.
//
// Local reads this process's identity from /proc (Linux only: elsewhere it
// returns an error matching ErrUnavailable). The package keeps no state
// and starts no goroutine.
package samehost
