// Package inproc is the transport of an engine's own segment: a descriptor
// whose pymooncake_instance is the engine's incarnation id. Both ends of
// every transfer are this process's registered memory, so bytes are copied
// in place: host to host with copy, anything that involves GPU memory
// through the GPU driver.
//
// Submit validates each remote range against the engine's registrations,
// as a server would, and pins it while it copies, so that an
// unregister_memory of it returns only once the copy is done. GPU copies
// run on copy queues of the driver's own (non-blocking streams, never the
// legacy default stream, which a stream-ordered transfer may be holding),
// and are waited for. SubmitOnStream (the *_on_cuda calls) queues every
// copy on the caller's stream itself (cuMemcpyAsync, any direction): no
// stream is held and no driver call waits for one, which is what makes the
// *_on_cuda reads of an engine's own segment work (issue 18: the serving
// side copied GPU memory out through staging while the caller's stream was
// held, and a lazily loaded kernel deadlocked the two until the deadline).
// The caller keeps the memory registered until the stream has run those
// copies.
//
// Ownership: New starts nothing. Submit runs small synchronous calls on
// the caller's goroutine and the rest on one goroutine per call; Close
// fails what has not started with ErrClosed, waits for those goroutines and
// destroys the copy queues. Errors: ErrRejected for a remote range that is
// not registered (the task fails, nothing is touched), ErrClosed, and the
// driver's errors for a failed copy.
package inproc
