// Package verbs is the seam between the RDMA transport and libibverbs: the
// few verbs the transport uses, as Go interfaces over plain Go values.
//
// Implementations:
//   - verbs/ibv: the real one, the only cgo over libibverbs, loaded with
//     dlopen at run time (core/internal/dl); building needs no rdma-core.
//   - verbs/fake: a pure-Go, in-process fake fabric for tests. It is a fake
//     and never proof that hardware works.
//
// Shapes that matter for the cgo boundary: SendWR and WC are flat structs of
// integers laid out exactly as the C side's, so a batch of work requests is
// posted, and a batch of completions polled, in one cgo call each (STYLE
// (b).4). A work request's WRID is an integer the caller maps back to its
// own records (slot and generation), never a pointer (STYLE (b).5).
//
// Ownership: every object returned by a Create/Alloc/Reg/Open call is closed
// by its creator, children before parents (QPs and MRs before the PD, QPs
// before their CQs, CQs before their completion channel, everything before
// the Device, Devices before the Provider). A CompChannel.Wait or
// Device.AsyncEvent in progress returns when its ctx ends or its object is
// closed.
//
// Errors: ErrNoDevices and any error matching ErrUnavailable are conclusive
// "no RDMA here"; verbs calls fail with errors wrapping a syscall.Errno (the
// value libibverbs returned, not a stale errno); completions carry a
// WCStatus, which is an error.
package verbs
