package segment

import (
	"cmp"
	"slices"

	"github.com/pymooncake/pymooncake/core/internal/errs"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/transport"
)

// The engine's sentinels, as this package reports them.
var (
	// ErrUnknownSegment is a handle that is not open.
	ErrUnknownSegment = errs.UnknownSegment
	// ErrMetadata is a peer's metadata that cannot be found or decoded.
	ErrMetadata = errs.Metadata
	// ErrInvalidArgument is a malformed name.
	ErrInvalidArgument = errs.InvalidArgument
)

// Handle names an open remote segment.
type Handle int32

// Segment is an opened peer segment: its descriptor, where its data
// endpoints are, and the transport that moves data to it.
type Segment struct {
	Handle Handle
	// Name is the name it was opened with (the descriptor's may differ).
	Name string
	// Peer is the target as transports see it; Peer.Desc is the descriptor.
	Peer transport.Peer
	// Transport is the one chosen for this peer (transport.Transport.Accept).
	Transport transport.Transport
	// Closes is the transport's count of idle connections the peer closed
	// when the descriptor was fetched (transport.CloseCounter).
	Closes uint64
	// Link is where the outcomes of requests to the peer are recorded
	// (nil: nowhere).
	Link  *metrics.Link
	spans []span // the descriptor's buffers as merged, sorted ranges
}

// Desc is the segment's descriptor. Callers must not modify it.
func (s *Segment) Desc() *metadata.SegmentDesc { return s.Peer.Desc }

// RemoteContains reports whether [addr, addr+size) lies inside the
// descriptor's buffers. Buffers that touch are one range: RDMA and barex
// publish a large registration as several chunk buffers, and a request may
// span chunks (the target, which knows its registrations, has the last
// word).
func (s *Segment) RemoteContains(addr, size uint64) bool {
	if addr+size < addr {
		return false
	}
	i, found := slices.BinarySearchFunc(s.spans, addr, func(sp span, a uint64) int { return cmp.Compare(sp.start, a) })
	if !found {
		i--
	}
	return i >= 0 && addr+size <= s.spans[i].end
}

type span struct{ start, end uint64 }

// mergeSpans turns buffers into sorted ranges, joining buffers that touch.
func mergeSpans(bufs []metadata.BufferDesc) []span {
	out := make([]span, 0, len(bufs))
	for _, b := range bufs {
		if b.Addr+b.Length < b.Addr {
			continue // the decoder refuses these; never trust it twice
		}
		out = append(out, span{b.Addr, b.Addr + b.Length})
	}
	slices.SortFunc(out, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	merged := out[:0]
	for _, sp := range out {
		if n := len(merged); n > 0 && sp.start <= merged[n-1].end {
			merged[n-1].end = max(merged[n-1].end, sp.end)
			continue
		}
		merged = append(merged, sp)
	}
	return merged
}
