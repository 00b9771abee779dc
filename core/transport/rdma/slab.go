package rdma

import "github.com/pymooncake/pymooncake/core/internal/slots"

// slab maps work request ids to in-flight slices. An id is
// generation<<32 | slot: C and the NIC only ever see the integer, and a
// completion whose generation does not match its slot (stale, or
// corrupted) is ignored instead of touching a reused record (STYLE (b).5,
// Mooncake R3).
type slab = slots.Table[slice]
