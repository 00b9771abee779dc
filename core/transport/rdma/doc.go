// Package rdma is Mooncake's RDMA transport in Go (transports.md §4): one
// context per HCA, memory registered on every HCA with per-device keys in
// the descriptor, endpoints of MC_NUM_QP_PER_EP RC queue pairs per (local
// HCA, peer NIC path) set up by the Connection handshake, slicing at
// MC_SLICE_SIZE, NIC striping by Mooncake's priority matrix, and per-slice
// retries across NICs up to MC_RETRY_CNT. The descriptor is protocol "rdma"
// exactly as Mooncake writes it, so a Mooncake RDMA peer can connect.
//
// The transport talks to hardware only through a verbs.Provider: the real
// one (verbs/ibv, libibverbs loaded at run time) or the fake fabric of the
// tests (verbs/fake). Everything in this package is pure Go. What it shares
// with barex lives in core/transport/internal (memreg, numa, lifetime,
// submit). ConfigFromEnv reads its MC_* variables; GPU memory is registered
// through nvidia-peermem or a dma-buf from Deps.DmaBuf (gpu.Driver's
// ExportDmaBuf).
//
// Where it departs from Mooncake, on purpose (transports.md §4.10):
//   - no lock is held across the handshake RPC, and a Connection request
//     for an endpoint that is itself connecting completes it, so two peers
//     connecting to each other at once both succeed at once (R1);
//   - an endpoint leaves service in two phases: its QPs go to ERR so the
//     NIC flushes their work, and they are destroyed only when no work
//     request is in flight (R2, R3); work requests carry a slot and a
//     generation, never a pointer;
//   - completions are waited for on completion channels (armed CQs), not by
//     spinning (R20); every async event is handled (R5); an HCA taken out
//     of service by failures comes back after ContextRecovery or on
//     PORT_ACTIVE, never on a blind timer (R4); the failure count is
//     atomic and reset by any success (R13);
//   - device limits are applied per device, never to a global (R8, R7);
//     memory larger than the device's MR limit is registered in chunks,
//     never silently truncated (R9);
//   - a task is "started" with its final slice count before any slice is
//     posted (R12), zero-length tasks complete at once (R21), every task
//     reaches a terminal state on every error path (R11), and device ids
//     are deterministic (R16).
//
// Ownership and lifetime: New opens the HCAs and starts, per HCA, one poller
// goroutine per completion channel and one async-event goroutine; each
// connection setup runs in a goroutine of its own. Close fails queued work
// with ErrClosed, moves every QP to ERR, waits up to Config.DrainTimeout for
// work in flight to complete, stops and waits for every goroutine, then
// destroys QPs, deregisters memory and closes the devices and the
// provider. Close is idempotent. Memory passed to RegisterMemory stays the
// caller's; it must stay mapped until UnregisterMemory or Close returns.
//
// Errors: New fails with an error matching ErrUnavailable (and ErrNoDevices
// when no device is usable) when RDMA cannot be used here; the engine then
// falls back to TCP. Failed tasks carry a *SliceError, which matches exactly
// one transport-neutral sentinel, or none: transport.ErrPeer when the peer
// or the path to it failed (retries exceeded, a failed queue pair, a
// handshake that failed or was refused), transport.ErrRejected when the
// peer refused the key or range (a remote access error: it restarted, or
// unregistered the memory), transport.ErrClosed after ClosePeer or Close,
// none for a local failure. PeerHealth reports the last failure that
// matched transport.ErrPeer.
package rdma
