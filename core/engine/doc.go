// Package engine is the pymooncake transfer engine: it registers local
// memory, opens remote segments by name, and moves bytes between registered
// memories of two processes, speaking Mooncake's protocols so that Mooncake
// peers and pymooncake peers work together.
//
// The engine is transport-neutral: it reaches the transports that move
// bytes only through the contract of core/transport. It receives them from
// the composition root (package core) in order of preference and picks, for
// each peer, the first that accepts the peer's descriptor; recovery and
// retries branch only on the transport-neutral sentinels (transport.ErrPeer,
// transport.ErrRejected, transport.ErrClosed). The synchronous policy
// (TransferTo: re-resolve a restarted peer and retry once within the
// deadline) and the asynchronous one (SubmitAsync, PollAsync, WaitAsync:
// deadlines, timeouts, recovery on failure, reaping) live here, so that
// every binding gets the same behaviour.
//
// The engine records its metrics (core/metrics) where requests end, when a
// batch is freed, for every transport alike: bytes, requests, failures by
// sentinel, latencies, per transport and per peer; and it serves them when
// asked (PYMOONCAKE_METRICS_PORT, MC_TE_METRIC; see metrics.go).
//
// An Engine owns every listener, connection, transport and goroutine it
// starts; Close stops them all and is idempotent. Segments and batches are
// named by small validated integers, never pointers: a stale or forged
// handle is an error. Status polling takes no lock. Errors wrap the
// sentinels of errors.go; deadlines surface as context errors.
package engine
