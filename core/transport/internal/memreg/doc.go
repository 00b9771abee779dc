// Package memreg keeps the memory a hardware transport (rdma, barex) has
// registered, and the memory a peer has published, for lookup by address.
//
// A Table holds this engine's registrations. Each registration (a Region)
// is split into Chunks no larger than a limit (the device's MR limit, or
// MC_MIN_REG_SIZE); each chunk is registered as one unit, carries one key
// per device, and is published as one buffer of the descriptor. The
// transport registers and deregisters the chunks with its hardware through
// the callbacks it passes; the table only keeps them. Lookups on the data
// path (Find) read an immutable snapshot sorted by address and take no
// lock; changes copy the snapshot under a mutex (STYLE (e).4).
//
// Published is a peer's descriptor buffers, filtered and sorted by address
// for the same kind of lookup.
//
// The package owns no hardware object and starts no goroutine. Errors:
// ErrRegistered for a range that overlaps a registration, ErrNotRegistered
// for an address no registration starts at; the transports re-export both.
package memreg
