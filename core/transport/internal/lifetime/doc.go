// Package lifetime is the shutdown discipline the hardware transports
// (rdma, barex) share (STYLE (e).2).
//
// A Lifetime is entered, shared, by every entry point that touches native
// objects (Submit, RegisterMemory, OnConnection, ClosePeer...) and ended
// once by the transport's Close: End refuses new entries and new
// goroutines, cancels the lifetime's context and returns once no entry
// point is still inside, so that Close may then destroy what they used.
// Goroutines the transport starts go through Go and are waited for by
// Wait. Work handed to the hardware is counted (Posted, Completed) so that
// Close can wait for it to drain (Drain) before it stops the pollers.
//
// The Lifetime owns no goroutine of its own; the transport that made it
// calls End, Wait and Drain from its Close, in that order.
package lifetime
