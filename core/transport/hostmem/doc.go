// Package hostmem moves host memory between pymooncake engines in
// different processes of one host, without the network stack: over
// cross-memory attach (process_vm_readv/process_vm_writev, one copy) where
// the kernel allows it, else over a shared-memory ring (a memfd the two
// processes map, two copies); where neither can serve a peer, its tasks go
// to the fallback transport (TCP, or RDMA).
//
// # Which peers
//
// Describe publishes this engine's host identity (hostid.Key: boot id,
// network and PID namespace inodes, uid, pid) and its control socket, an
// abstract Unix socket (EndpointKey). Accept takes a peer whose descriptor
// has both and whose boot id and network namespace equal ours (so the
// socket is reachable), provided the fallback accepts it too: every task
// the peer gets can then be served, by one or the other. Mooncake peers
// publish neither key and are refused (Mooncake ignores keys it does not
// know), as are peers on other hosts, in other network namespaces, and
// pymooncake peers with PYMOONCAKE_SAME_HOST=0. The engine logs the
// transport it picks per peer; this transport logs, at the peer's first use,
// the path it took and why.
//
// # Choosing the path, once per peer
//
// At the first Submit to a peer, a goroutine connects to its control socket
// (SOCK_SEQPACKET). The kernel names the peer's process (SO_PEERCRED: its pid
// as our PID namespace numbers it, 0 if hidden), and the peer hands over its
// registration table and a pin area (memfds, see below). Cross-memory attach
// is tried unless the mode is RingOnly: a pidfd is opened on the pid and
// process_vm_readv reads 32 random bytes of the table at the address where
// the peer mapped it. Equal bytes prove both that the kernel lets us in (same
// uid or CAP_SYS_PTRACE, Yama's ptrace_scope, a dumpable peer) and that the
// pid is the peer's. EPERM and the like are logged as the reason, and then
// the ring is set up unless the mode is CMAOnly: this process creates a
// sealed memfd and passes it over the socket (SCM_RIGHTS). If neither works,
// the peer's tasks go to the fallback. Calls made during the setup wait for
// it (asynchronous ones are queued). Config.Mode comes from
// PYMOONCAKE_SAME_HOST (ConfigFromEnv).
//
// # Why the initiator copies (cross-memory attach)
//
// The initiator, not the target, calls process_vm_writev/readv: a
// synchronous 4 KiB write is then a table lookup, two atomic additions in
// shared memory and one system call on the caller's goroutine, with no
// message to the target and no thread to wake there (the 10 µs goal at the
// Python level leaves no room for a round trip on a 2-core machine, where a
// wake-up across cores costs more than the copy), and a scattered batch is
// one system call per 1,024 ranges. A target-side copy would keep DESIGN's
// "the target validates" literally, but it would buy no safety: a process
// the kernel lets attach can write anywhere in the target anyway. So the
// target's validation comes to the initiator as data the target alone
// writes:
//
//   - The registration table: a memfd the target writes and each initiator
//     maps read-only (through a read-only reopened descriptor, so it cannot
//     write or truncate it). It lists the host-memory regions the engine
//     registered, under a sequence lock; an initiator keeps a sorted copy
//     and takes a new one when the generation moves. A remote range must
//     lie inside one region, or its task alone fails with ErrRejected, as
//     with the TCP server. GPU memory and the engine's own bounce buffers
//     are never in it.
//   - Pins: each initiator gets a pin area of its own (a memfd of one
//     counter per slot that only it and the target map). It adds 1 to a
//     region's counter before copying and checks that the region is still
//     the same; UnregisterMemory marks the region dead and waits until its
//     counter is 0 in every live area (Config.UnregisterTimeout, from
//     MC_TRANSFER_TIMEOUT), so that when unregister_memory returns, no copy
//     into the region is in flight and none starts. An initiator's area
//     stops counting when its control connection closes (it exited, or
//     closed the peer), so a dead initiator never blocks an unregister.
//   - Liveness: pids are reused. Before every system call the initiator
//     checks the peer's pidfd (it becomes readable when the process exits);
//     the control connection's end marks the peer dead too.
//
// Cross-memory attach needs nothing of the target's threads: writes to a
// stopped (SIGSTOP) target land, as RDMA writes would.
//
// # The ring
//
// The ring is cut into Config.RingSlots slots. A sender goroutine per peer
// packs the ranges of one slot into a request (a write copies local memory
// into the slot first); the target's server pins each range in its memory
// table exactly as the TCP server does (memory.Table.Pin: inside one
// registered region, held while touched, so unregister_memory waits for
// it), copies, and replies with a status per range; the peer's reader
// goroutine copies what reads brought and finishes the tasks. A peer that
// answers nothing for Config.IOTimeout while requests are outstanding
// (stopped, wedged) fails them with ErrPeer. Each request wakes a
// goroutine on both sides, so a synchronous call of less than 256 KiB goes
// to the fallback instead when there is one: TCP runs it on the caller's
// goroutine and answers it sooner (ringMinSync).
//
// # GPU memory
//
// A task whose local range is GPU memory (the engine's memory table says
// so) or whose remote range lies in a buffer the peer publishes as GPU
// memory (LocationsKey in its descriptor) goes to Config.Fallback, whole;
// the CUDA IPC transport for GPU memory is another package, placed before
// this one with this one, or TCP, as its fallback. Without a fallback such
// tasks fail with ErrNoPath.
//
// # Ownership and errors
//
// New takes nothing but the memory table; Close stops the control socket,
// the server's goroutines, the workers (Config.Workers goroutines that copy
// asynchronous and large batches), and every peer's connection and
// goroutines (a setup, a reader, a ring sender), fails queued and in-flight
// tasks with ErrClosed, and unmaps all shared memory. A peer whose
// connection fails is torn down in the background and forgotten; the next
// Submit to it starts afresh. ClosePeer does the same at once. The fallback
// belongs to the caller.
//
// Task errors are *PeerError values that name the peer, the path and the
// range, and match: ErrRejected (the range is not inside one registered
// host-memory region of the peer, or it is being unregistered: only that
// task fails), ErrPeer (the peer exited, stopped answering the ring, or
// stopped letting us attach; PeerHealth then reports it and PeerCloses
// moves, so the engine re-resolves it), ErrClosed, ErrCopy (the kernel
// faulted on one range: only that task fails), ErrNoPath, or the Submit
// context's error. New fails with an error matching ErrUnavailable where the
// transport cannot run (not Linux, no memfd, no /proc).
package hostmem
