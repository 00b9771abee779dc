// Package barex is the accl-barex transport of Mooncake's PR #1045 in Go
// (transports.md §5). accl-barex is Alibaba's RDMA/Solar library
// (libaccl_barex.so, C++, proprietary); this package never links it. It
// loads, with dlopen at run time, a small shim that exposes a versioned C
// ABI (shim/mc_barex_shim.h) and is built from shim/mc_barex_shim.cpp only
// where the barex SDK exists (make barex-shim ACCL_ROOT=...). The search
// order is Config.ShimPath (MC_BAREX_SHIM), then libmooncake_barex_shim.so
// next to the object holding this code (the Python extension) and in its
// parent directory, then the loader's default path. The shim's ABI version
// must equal this build's.
//
// What it publishes is Mooncake's barex descriptor: protocol "barex",
// devices with lid 0 and gid "ignore", every registration split into
// chunks of MC_MIN_REG_SIZE, each its own buffer with one key per barex
// NIC. Its barex listen port comes from [ACCL_MIN_PORT, ACCL_MAX_PORT] and
// stays bound from the first probe; it is exchanged in the Connection
// handshake (barex_port) in every metadata mode, and each peer's port is
// kept with that peer (and exchanged again once when nothing listens on
// it any more: the peer restarted). Transfers are cut by the shared slicer
// (core/internal/slicing) at every chunk boundary on either side and go
// round robin over exactly MC_NUM_QP_PER_EP channels per (peer, local
// device), opened on first use with a deadline.
//
// Where it departs from Mooncake, on purpose (transports.md §5.10, §5.11):
// one slicer instead of two copies (P4) that also handles N-way spans
// (B15); CheckStatus the right way round (P2); no leaked callbacks (P3:
// the shim owns one per context) and no cgo callbacks at all, completions
// come through a queue and an eventfd; no function-level static locks (P6);
// one explicit map from HCA names to barex NIC ids, devices without a
// barex context left out (B3); channels placed on the device asked for and
// checked (B4); inactive channels closed and replaced, never reused (B5);
// every piece of a refused post fails (B6); recovery closes the old
// channels and never deletes remote metadata (B7); "*" memory resolved to
// its real kind per chunk, and a failed chunk registration rolled back
// (B10); ACCL_USE_NICS never overwritten when the user set it (B11); a
// peer without a barex_port is an error, not port 0 (B13); the memory type
// and GPU ordinal sent to barex per element, not one global flag (B16).
//
// Ownership and lifetime: New starts a shim engine and one poller
// goroutine, which sleeps in the netpoller on a duplicate of the shim's
// eventfd. Each channel setup runs in a goroutine of its own, as does each
// closing of replaced channels. Close stops new work, waits for those
// goroutines, fails queued work, closes every channel (waiting for its
// callbacks), waits up to DrainTimeout for work in flight, stops the
// poller, deregisters memory and closes the shim engine, then drops the
// library reference. Close is idempotent. Memory passed to RegisterMemory
// stays the caller's; it must stay mapped until UnregisterMemory or Close
// returns.
//
// Errors: New fails with an error matching ErrUnavailable when the shim
// is absent (the message names libmooncake_barex_shim.so and keeps
// dlerror's text) or no device is usable (ErrNoDevices). Shim failures are
// *ShimError values that unwrap to a Code; failed tasks carry a
// *SliceError, which matches exactly one transport-neutral sentinel, or
// none: transport.ErrPeer when a channel failed (setup, inactive, i/o,
// ErrChannel) or the barex_port exchange did (ErrHandshake),
// transport.ErrRejected when barex refused a key or range (CodeAccess: the
// peer restarted, or unregistered the memory), transport.ErrClosed when
// ClosePeer or Close ended the work (also for a batch on a channel this
// side closed, which keeps barex's code), none for a local failure.
// PeerHealth is CheckStatus.
//
// ConfigFromEnv reads every variable the transport uses (ACCL_*, BAREX_*,
// MC_MIN_REG_SIZE, MC_NUM_QP_PER_EP, MC_BAREX_SHIM); the engine reads
// USE_BAREX. What the transport shares with rdma lives in
// core/transport/internal (memreg, numa, lifetime, submit).
package barex
