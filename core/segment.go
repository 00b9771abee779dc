package core

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// SegmentHandle names an open remote segment. Handles are small integers
// from 1 upward (0 is Mooncake's LOCAL_SEGMENT_ID and never handed out).
type SegmentHandle int32

// segment is an opened peer segment. It is immutable once published; a
// refresh replaces it.
type segment struct {
	handle SegmentHandle
	name   string // the name it was opened with
	desc   *metadata.SegmentDesc
	peer   transport.Peer
	spans  []span // desc's buffers as merged, sorted ranges
	// closes is the transport's count of idle connections the peer closed
	// when the descriptor was fetched (see peerClosedSince).
	closes uint64
}

// remoteContains reports whether [addr, addr+size) lies inside the
// descriptor's buffers. Buffers that touch are one range: RDMA and barex
// publish a large registration as several chunk buffers, and a request may
// span chunks (the target, which knows its registrations, has the last
// word).
func (s *segment) remoteContains(addr, size uint64) bool {
	if addr+size < addr {
		return false
	}
	for _, sp := range s.spans {
		if addr >= sp.start && addr+size <= sp.end {
			return true
		}
	}
	return false
}

// oneBuffer reports whether [addr, addr+size) lies inside a single buffer
// of the descriptor: what a TCP target checks for each request.
func (s *segment) oneBuffer(addr, size uint64) bool {
	for _, b := range s.desc.Buffers {
		if addr >= b.Addr && addr+size >= addr && addr+size <= b.Addr+b.Length {
			return true
		}
	}
	return false
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

// segmentTable maps names and handles to open segments. Lookups load an
// immutable snapshot; writers copy under mu.
type segmentTable struct {
	mu   sync.Mutex
	next SegmentHandle // +checklocks:mu
	snap atomic.Pointer[segmentSnapshot]
}

type segmentSnapshot struct {
	byName   map[string]*segment
	byHandle map[SegmentHandle]*segment
}

func (t *segmentTable) load() *segmentSnapshot {
	if s := t.snap.Load(); s != nil {
		return s
	}
	return &segmentSnapshot{}
}

func (t *segmentTable) get(h SegmentHandle) (*segment, error) {
	if s, ok := t.load().byHandle[h]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("segment %d: %w", h, ErrUnknownSegment)
}

func (t *segmentTable) lookup(name string) (*segment, bool) {
	s, ok := t.load().byName[name]
	return s, ok
}

// put stores s under its name, reusing the handle already given to that
// name if there is one, and returns the stored segment.
func (t *segmentTable) put(name string, desc *metadata.SegmentDesc, peer transport.Peer, closes uint64) *segment {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.load()
	s := &segment{name: name, desc: desc, peer: peer, spans: mergeSpans(desc.Buffers), closes: closes}
	if prev, ok := old.byName[name]; ok {
		s.handle = prev.handle
	} else {
		t.next++
		s.handle = t.next
	}
	byName, byHandle := maps.Clone(old.byName), maps.Clone(old.byHandle)
	if byName == nil {
		byName, byHandle = map[string]*segment{}, map[SegmentHandle]*segment{}
	}
	byName[name] = s
	byHandle[s.handle] = s
	t.snap.Store(&segmentSnapshot{byName: byName, byHandle: byHandle})
	return s
}

func (t *segmentTable) remove(h SegmentHandle) (*segment, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.load()
	s, ok := old.byHandle[h]
	if !ok {
		return nil, false
	}
	byName, byHandle := maps.Clone(old.byName), maps.Clone(old.byHandle)
	delete(byHandle, h)
	delete(byName, s.name)
	t.snap.Store(&segmentSnapshot{byName: byName, byHandle: byHandle})
	return s, true
}

// OpenSegment opens the segment called name (a peer's server name), fetching
// its descriptor on first use, and returns its handle. Handles are cached by
// name unless MC_DISABLE_METACACHE is set.
func (e *Engine) OpenSegment(ctx context.Context, name string) (SegmentHandle, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	name = strings.TrimLeft(name, "/")
	if name == "" {
		return 0, fmt.Errorf("open segment: empty name: %w", ErrInvalidArgument)
	}
	if s, ok := e.segs.lookup(name); ok && !e.cfg.Env.DisableMetaCache && !e.peerClosedSince(s) {
		return s.handle, nil
	}
	s, err := e.resolve(ctx, name)
	if err != nil {
		return 0, err
	}
	return s.handle, nil
}

// resolve fetches name's descriptor and locates its data endpoint. The
// descriptor's own name, not the string opened, locates the peer (§5.1).
func (e *Engine) resolve(ctx context.Context, name string) (*segment, error) {
	raw, err := e.dir.fetch(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open segment %q: %w", name, err)
	}
	desc, err := metadata.DecodeSegmentDesc(raw)
	if err != nil {
		return nil, fmt.Errorf("open segment %q: %w: %w", name, ErrMetadata, err)
	}
	// Mooncake routes a request to the transport named by the target's
	// protocol; an engine has one, so other targets are unreachable.
	if desc.Protocol != e.xp.Protocol() {
		return nil, fmt.Errorf("open segment %q: its protocol is %q but this engine runs %q: %w", name, desc.Protocol, e.xp.Protocol(), ErrNotSupported)
	}
	if desc.Protocol == metadata.ProtocolTCP && (desc.TCPDataPort <= 0 || desc.TCPDataPort > 65535) {
		return nil, fmt.Errorf("open segment %q: tcp_data_port %d: %w", name, desc.TCPDataPort, ErrMetadata)
	}
	// Mooncake 0.3.13+ publishes tcp_data_host and connects there; older
	// peers are reached at the host of their name (or their rpc_meta).
	// TCP data and barex channels go to this host; RDMA ignores it.
	host := desc.TCPDataHost
	if host == "" {
		if host, err = e.dir.host(ctx, desc.Name); err != nil {
			return nil, fmt.Errorf("open segment %q: locate %q: %w", name, desc.Name, err)
		}
	}
	peer := transport.Peer{Name: desc.Name, Host: host, DataPort: desc.TCPDataPort, ProtoVersion: desc.TCPProtoVersion}
	return e.segs.put(name, desc, peer, e.peerCloses(peer)), nil
}

// CloseSegment forgets an open segment and drops its data connections. The
// handle becomes unknown; opening the name again fetches a fresh descriptor.
func (e *Engine) CloseSegment(h SegmentHandle) error {
	s, ok := e.segs.remove(h)
	if !ok {
		return fmt.Errorf("close segment %d: %w", h, ErrUnknownSegment)
	}
	if _, still := e.segs.lookupPeer(s.peer.Name); !still {
		e.xp.ClosePeer(s.peer.Name)
	}
	e.dir.forget(s.peer.Name)
	return nil
}

// lookupPeer reports whether another open segment still uses peer.
func (t *segmentTable) lookupPeer(peer string) (*segment, bool) {
	for _, s := range t.load().byHandle {
		if s.peer.Name == peer {
			return s, true
		}
	}
	return nil, false
}

// SegmentDesc returns the cached descriptor of an open segment. The caller
// must not modify it.
func (e *Engine) SegmentDesc(h SegmentHandle) (*metadata.SegmentDesc, error) {
	s, err := e.segs.get(h)
	if err != nil {
		return nil, err
	}
	return s.desc, nil
}
