// Package slicing cuts a transfer into pieces that each lie inside one
// registered span of local memory and one published span of remote memory,
// and are no larger than a limit. It is the one slicer of the RDMA and
// barex transports (transports.md §5.7: Mooncake's barex transport has four
// hand-written cases, 1:1, 1:2, 2:1 and 2:2, twice; the rule here covers
// them and any N-way span).
//
// The rule: walk the request from its start; each piece ends at the first
// of (a) the size limit, (b) the end of the local span holding the piece's
// start, (c) the end of the remote span holding it. So a piece is cut at
// every span boundary that falls strictly inside it, on either side, and
// carries the local and remote span that contain it. Spans are looked up
// for every piece, never assumed adjacent: a gap between two registrations
// is an error, not a piece that runs into memory nobody registered.
//
// The package owns nothing and starts nothing; Cut is a pure function of
// its arguments. Errors match ErrNotRegistered (a *RangeError says which
// side and where) or ErrInvalidLimits.
package slicing
