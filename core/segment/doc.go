// Package segment keeps what an engine knows of the remote segments it has
// opened: the table of open segments (handles, descriptors, the transport
// chosen for each peer), the directory that finds peers (P2P handshake or a
// metadata store), and the incarnation id that tells a restarted peer from
// the one a descriptor was fetched from.
//
// A Segment is immutable once put in the Table; a refresh replaces it under
// the same Handle. Lookups load an immutable snapshot without locking.
// Handles are small integers from 1 upward (0 is Mooncake's
// LOCAL_SEGMENT_ID and never handed out); an unknown handle is
// ErrUnknownSegment, never a crash.
package segment
