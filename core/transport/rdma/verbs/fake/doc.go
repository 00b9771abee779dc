// Package fake is an in-process FAKE RDMA fabric implementing verbs.Provider
// for tests (transports.md §7.3). It is a fake: it shows that the transport's
// logic is right against the verbs contract as this package models it, and
// never that hardware works.
//
// A Fabric holds NICs, each on a named host; Provider(host) is what one
// engine sees. Memory regions are real memory (tests mmap it) and transfers
// really copy bytes, after checking keys, bounds and access flags as a NIC
// would. A dma-buf MR (RegDmabufMR) maps the dma-buf's pages and moves
// bytes there, as a NIC's DMA would, not at its iova in the process: the
// fake GPU's dma-bufs (core/gpu/fake) are files of its device memory. Queue pairs follow the RESET→INIT→RTR→RTS→ERR state machine and
// reject missing attribute masks, wrong transitions, unknown destination
// GIDs or QPNs, an MTU above the port's and rd_atomic values above the
// device limits. A work request to a peer QP that is not ready is retried
// after Fabric.RetryDelay up to Fabric.RetryLimit times, then completes with
// RETRY_EXC_ERR and moves the QP to ERR, after which later requests flush
// (WR_FLUSH_ERR), as on a real RC QP.
//
// Faults are injected per NIC: post failures from the k-th request, path
// errors (any completion status towards a given NIC), completion delays,
// port down/up (PORT_ERR/PORT_ACTIVE events), QP_FATAL, device removal
// (DEVICE_FATAL), GID changes; a CQ that overflows raises CQ_ERR.
//
// The fabric checks its users too: Leaks lists every object not closed, with
// the stack that created it, and Violations lists misuse a real NIC would
// punish silently (destroying a QP with work in flight, closing a device
// with live children).
//
// Ownership: NewFabric starts one goroutine (the wire); Close stops it.
// Close the fabric after every Provider user is closed.
package fake
