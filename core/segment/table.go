package segment

import (
	"fmt"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Table maps names and handles to open segments. Lookups load an immutable
// snapshot; writers copy it under mu. The zero value is ready.
type Table struct {
	mu   sync.Mutex
	next Handle // +checklocks:mu
	snap atomic.Pointer[snapshot]
}

type snapshot struct {
	byName   map[string]*Segment
	byHandle map[Handle]*Segment
}

var empty = &snapshot{}

func (t *Table) load() *snapshot {
	if s := t.snap.Load(); s != nil {
		return s
	}
	return empty
}

// Get returns the open segment h.
func (t *Table) Get(h Handle) (*Segment, error) {
	if s, ok := t.load().byHandle[h]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("segment %d: %w", h, ErrUnknownSegment)
}

// Lookup returns the segment opened under name.
func (t *Table) Lookup(name string) (*Segment, bool) {
	s, ok := t.load().byName[name]
	return s, ok
}

// ByPeer returns an open segment whose descriptor is named peer.
func (t *Table) ByPeer(peer string) (*Segment, bool) {
	for _, s := range t.load().byHandle {
		if s.Peer.Name == peer {
			return s, true
		}
	}
	return nil, false
}

// All returns the open segments, in no order.
func (t *Table) All() []*Segment {
	m := t.load().byHandle
	out := make([]*Segment, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	return out
}

// Put stores a segment opened under name, reusing the handle already given
// to that name if there is one, and returns it. link records the outcomes
// of requests to it (nil: nowhere).
func (t *Table) Put(name string, peer transport.Peer, tr transport.Transport, closes uint64, link *metrics.Link) *Segment {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.load()
	s := &Segment{Name: name, Peer: peer, Transport: tr, Closes: closes, Link: link, spans: mergeSpans(peer.Desc.Buffers)}
	if prev, ok := old.byName[name]; ok {
		s.Handle = prev.Handle
	} else {
		t.next++
		s.Handle = t.next
	}
	byName, byHandle := maps.Clone(old.byName), maps.Clone(old.byHandle)
	if byName == nil {
		byName, byHandle = map[string]*Segment{}, map[Handle]*Segment{}
	}
	byName[name] = s
	byHandle[s.Handle] = s
	t.snap.Store(&snapshot{byName: byName, byHandle: byHandle})
	return s
}

// Remove forgets segment h and returns it.
func (t *Table) Remove(h Handle) (*Segment, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.load()
	s, ok := old.byHandle[h]
	if !ok {
		return nil, false
	}
	byName, byHandle := maps.Clone(old.byName), maps.Clone(old.byHandle)
	delete(byHandle, h)
	delete(byName, s.Name)
	t.snap.Store(&snapshot{byName: byName, byHandle: byHandle})
	return s, true
}
