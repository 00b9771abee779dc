package transport

import (
	"context"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
)

// Peer is a target segment as a transport sees it. The engine builds one
// each time it (re)learns the target's descriptor; a restarted peer gets a
// new Peer, never a mutated one.
type Peer struct {
	// Name is the target descriptor's name (not the string that was
	// opened): the key of the transport's per-peer state.
	Name string
	// Host is where the target's data endpoints listen: its descriptor's
	// tcp_data_host, else the host of its name (P2P) or of its rpc_meta.
	Host string
	// Desc is the target's descriptor. It is shared and must not be
	// modified.
	Desc *metadata.SegmentDesc
}

// SubmitOptions say how the engine will wait for the tasks of one Submit.
type SubmitOptions struct {
	// Sync says the caller waits for the tasks as soon as Submit returns
	// (a synchronous Python call). A transport may then run small
	// requests on the calling goroutine instead of handing them to one of
	// its own, saving a wake-up on each side.
	Sync bool
	// Held says that a CUDA stream of this process is held until these
	// tasks finish (a stream-ordered transfer that its transport could not
	// queue on the stream). The transport must then make no GPU driver
	// call: a device-wide synchronisation in another thread (a lazily
	// loaded kernel) waits for the held stream while holding the driver,
	// so such a call would wait for the transfer it is part of.
	Held bool
}

// Transport moves bytes between this process's registered memory and the
// registered memory of peers. The engine holds several, in order of
// preference, and picks for each peer the first that accepts it (Accept).
//
// Submit never blocks on the network: it starts the work and returns, and
// every Task handed to it is eventually finished through PartDone, with an
// error if ctx ends or the transport is closed first. A transport reports
// failures with its own error types, which match this package's sentinels
// (ErrPeer, ErrRejected, ErrClosed) through errors.Is: that is all the
// engine's recovery looks at.
type Transport interface {
	// Name names the transport in logs and metrics: "tcp", "rdma", ...
	Name() string
	// Accept reports whether the transport can reach the peer that
	// published desc: nil if it can, else an error saying why not.
	Accept(desc *metadata.SegmentDesc) error
	// Submit starts the tasks, each Init'ed by the caller, against peer.
	// ctx bounds them (cancellation and deadline): when it ends,
	// unfinished tasks fail with its error, once the transport can no
	// longer touch their memory.
	Submit(ctx context.Context, peer Peer, tasks []*Task, opts SubmitOptions)
	// ClosePeer drops every connection to the peer called name: its queued
	// and in-flight tasks fail with an error matching ErrClosed, and the
	// next Submit to it starts afresh.
	ClosePeer(name string)
	// Close stops the transport, fails queued work with ErrClosed and
	// waits for its goroutines. It is idempotent.
	Close() error
}

// The optional parts of a transport: the engine asks for them with a type
// assertion, so a transport implements only what it does.
type (
	// Describer fills the transport's part of this engine's descriptor:
	// the protocol and its fields (data port, devices, keys), or
	// capability keys of its own.
	Describer interface {
		Describe(d *metadata.SegmentDesc)
	}

	// Registrar registers local memory with the transport's hardware
	// (RDMA memory regions, barex keys). The engine registers every region
	// with every Registrar, all or none, and the bounce buffers of
	// stream-ordered transfers too.
	Registrar interface {
		RegisterMemory(addr, length uint64, location string) error
		UnregisterMemory(addr uint64) error
	}

	// Connector answers the Connection handshakes peers send to this
	// engine's RPC listener (queue pair or channel setup).
	Connector interface {
		OnConnection(ctx context.Context, req handshake.HandShakeDesc) handshake.HandShakeDesc
	}

	// HealthReporter says, without blocking, whether the transport's
	// connections to the peer called name work: nil while they do (or
	// none was made yet), else an error matching ErrPeer.
	HealthReporter interface {
		PeerHealth(name string) error
	}

	// CloseCounter counts the idle connections to peer that the peer
	// closed: it died, restarted, or dropped them. The engine remembers
	// the count when it learns a descriptor, and fetches the descriptor
	// again once the count moved.
	CloseCounter interface {
		PeerCloses(peer Peer) uint64
	}

	// ConnCounter counts the transport's open connections to the peer
	// called name, cheaply (an atomic read, no lock on the data path): a
	// gauge of the engine's metrics.
	ConnCounter interface {
		PeerConns(name string) int
	}

	// StreamSubmitter is a transport whose peers' memory this process can
	// address directly (the process itself; a peer on the same host whose
	// GPU memory is mapped through CUDA IPC). It runs the stream-ordered
	// transfers of Mooncake's *_on_cuda calls as copies queued on the
	// caller's CUDA stream: they run in the stream's order, with no host
	// round trip and no hold on the stream. SubmitOnStream validates reqs
	// against the peer's registrations and queues their copies on stream
	// (a CUstream handle; 0 is the legacy default stream of device); it
	// returns once they are queued, or with an error when none was. An
	// error matching ErrNotOnStream means that these requests cannot go on
	// the stream directly (a peer's memory that is not mapped here): the
	// engine then runs them through Submit with the stream held.
	StreamSubmitter interface {
		SubmitOnStream(peer Peer, reqs []Request, stream uintptr, device int) error
	}
)
