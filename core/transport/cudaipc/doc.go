// Package cudaipc moves GPU memory between pymooncake engines in different
// processes of one host through CUDA IPC: the initiator maps the target's
// GPU buffers into its own address space and copies with the GPU's copy
// engines (cuMemcpyAsync; NVLink or PCIe peer copies between GPUs, the
// device itself within one GPU), host memory to GPU memory across the
// processes too. Mooncake peers never match: they publish no endpoint.
//
// Each engine publishes, under the descriptor key pymooncake_cuda_ipc, an
// abstract Unix socket (SOCK_SEQPACKET, per network namespace), its host
// identity (boot id, network and pid namespaces, pid: package hostid),
// its devices' UUIDs and its registered GPU buffers. Accept takes a peer
// of this host, in our namespaces, in another live process, with a GPU
// buffer on a device this process sees; anything else goes to the next
// transport. Two engines of one process do not match (a process cannot
// open its own IPC handles); the engine's own segment is the inproc
// transport's.
//
// The target (server.go) answers an initiator's request for an address
// inside a registered GPU buffer with a handle for the whole allocation
// holding it: a legacy IPC handle for cudaMalloc memory (torch's caching
// allocator), a POSIX file descriptor passed as SCM_RIGHTS for VMM memory
// (cuMemCreate: NVLinkAllocator, torch's expandable segments), and the
// part of the allocation the initiator may touch (the registered buffer:
// an allocation may hold unregistered memory, which the initiator never
// copies). It refuses initiators of another user, and an initiator
// refuses a socket held by a process of another user (its requests go to
// the fallback). The initiator (peer.go)
// opens each allocation once and caches the mapping until the target
// unregisters the buffer (the target asks it to drop the mapping and waits,
// DropTimeout, before its unregister_memory returns), the target restarts
// (a new instance id), the segment is closed (ClosePeer), the endpoint
// connection is lost, or the transport closes. An unregistration that
// comes while a mapping is being opened is not missed: the target sends
// its reply to an open while the buffer is pinned (so a drop request for
// the buffer always follows the reply), and the initiator's reader notes
// each drop request before it reads on, so an open whose mapping was not
// in place when the drop came does not keep it and asks again. A mapping
// is unmapped only
// once no copy uses it: copies of the transport's own are counted, copies
// queued on a caller's stream are followed by an event that is waited for.
//
// Requests the transport cannot carry go to Deps.Fallback (the composition
// root passes the transports after this one, TCP at least), per peer the
// first that accepts it: the target's host memory, GPU memory it cannot
// export (a stream-ordered pool's, VMM memory without a POSIX handle type,
// FABRIC-only handles) or that no device here sees, and every transfer
// while the engine holds a CUDA stream (SubmitOptions.Held: this transport
// would need driver calls). SubmitOnStream (the *_on_cuda calls) queues
// the copies on the caller's stream when every request is mapped, and
// otherwise returns an error matching transport.ErrNotOnStream so that the
// engine holds the stream and goes through Submit.
//
// Ownership: New listens and starts the accept loop; each endpoint
// connection has a reader goroutine on either side; Submit runs
// synchronous calls on the caller's goroutine and others on one goroutine
// each. Close stops the endpoint, drops every mapping (after its copies),
// waits for the goroutines and destroys the copy queues; it closes no
// fallback. Errors: ErrRejected (the target refused the range), ErrPeer
// (the endpoint connection failed: the peer died or restarted),
// ErrClosed, ErrNoFallback, transport.ErrNotOnStream, and the driver's.
package cudaipc
