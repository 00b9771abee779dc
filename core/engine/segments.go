package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
)

// SegmentHandle names an open remote segment: a small integer from 1
// upward (0 is Mooncake's LOCAL_SEGMENT_ID and never handed out).
type SegmentHandle = segment.Handle

// OpenSegment opens the segment called name (a peer's server name), fetching
// its descriptor on first use, and returns its handle. Handles are cached by
// name unless MC_DISABLE_METACACHE is set; a cached one is fetched again
// once the peer closed a connection (it may have restarted).
func (e *Engine) OpenSegment(ctx context.Context, name string) (SegmentHandle, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	name = strings.TrimLeft(name, "/")
	if name == "" {
		return 0, fmt.Errorf("open segment: empty name: %w", ErrInvalidArgument)
	}
	if s, ok := e.segs.Lookup(name); ok && !e.cfg.Env.DisableMetaCache && !e.peerClosedSince(s) {
		return s.Handle, nil
	}
	s, err := e.resolve(ctx, name)
	if err != nil {
		return 0, err
	}
	return s.Handle, nil
}

// resolve fetches name's descriptor, locates its data endpoint and chooses
// its transport. The descriptor's own name, not the string opened, locates
// the peer (protocol.md §5.1).
func (e *Engine) resolve(ctx context.Context, name string) (*segment.Segment, error) {
	raw, err := e.dir.Fetch(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open segment %q: %w", name, err)
	}
	desc, err := metadata.DecodeSegmentDesc(raw)
	if err != nil {
		return nil, fmt.Errorf("open segment %q: %w: %w", name, ErrMetadata, err)
	}
	x, err := e.choose(desc)
	if err != nil {
		return nil, fmt.Errorf("open segment %q: %w", name, err)
	}
	// Mooncake 0.3.13+ publishes tcp_data_host and connects there; older
	// peers are reached at the host of their name (or their rpc_meta).
	host := desc.TCPDataHost
	if host == "" {
		if host, err = e.dir.Host(ctx, desc.Name); err != nil {
			return nil, fmt.Errorf("open segment %q: locate %q: %w", name, desc.Name, err)
		}
	}
	peer := transport.Peer{Name: desc.Name, Host: host, Desc: desc}
	closes := peerCloses(x, peer)
	link := e.metrics.Link(desc.Name, x.Name())
	s := e.segs.Put(name, peer, x, closes, link)
	// A CloseSegment of the peer's last other segment may have released
	// its metrics label between Link and Put; linking again takes it
	// back, or gets the one the peer has now if the label went meanwhile.
	if again := e.metrics.Link(desc.Name, x.Name()); again != link {
		s = e.segs.Put(name, peer, x, closes, again)
	}
	return s, nil
}

// choose picks the transport for a peer: the first, in order of preference,
// that accepts its descriptor (so a Mooncake peer always gets the transport
// of its protocol). The choice is logged once per peer.
func (e *Engine) choose(desc *metadata.SegmentDesc) (transport.Transport, error) {
	var why []error
	for _, x := range e.xps {
		err := x.Accept(desc)
		if err == nil {
			if prev, seen := e.chosen.Swap(desc.Name, x.Name()); !seen || prev != x.Name() {
				e.log.Info("transport chosen for peer", zap.String("peer", desc.Name),
					zap.String("transport", x.Name()), zap.Errors("passed_over", why))
				if seen {
					e.metrics.Failover(prev.(string), x.Name())
				}
			}
			return x, nil
		}
		why = append(why, err)
	}
	return nil, fmt.Errorf("no transport of this engine reaches a peer that runs %q (%w): %w",
		desc.Protocol, errors.Join(why...), ErrNotSupported)
}

// CloseSegment forgets an open segment and drops its data connections. The
// handle becomes unknown; opening the name again fetches a fresh descriptor.
func (e *Engine) CloseSegment(h SegmentHandle) error {
	s, ok := e.segs.Remove(h)
	if !ok {
		return fmt.Errorf("close segment %d: %w", h, ErrUnknownSegment)
	}
	if _, still := e.segs.ByPeer(s.Peer.Name); !still {
		// Every transport: an earlier incarnation of the peer may have been
		// reached through another.
		for _, x := range e.xps {
			x.ClosePeer(s.Peer.Name)
		}
		e.metrics.Release(s.Peer.Name)
	}
	e.dir.Forget(s.Peer.Name)
	return nil
}

// SegmentDesc returns the cached descriptor of an open segment. The caller
// must not modify it.
func (e *Engine) SegmentDesc(h SegmentHandle) (*metadata.SegmentDesc, error) {
	s, err := e.segs.Get(h)
	if err != nil {
		return nil, err
	}
	return s.Desc(), nil
}

// peerCloses is the transport's count of idle connections peer closed, or
// 0 for a transport that does not count them.
func peerCloses(x transport.Transport, peer transport.Peer) uint64 {
	if c, ok := x.(transport.CloseCounter); ok {
		return c.PeerCloses(peer)
	}
	return 0
}

// peerClosedSince reports whether the peer of a cached segment closed an
// idle connection since its descriptor was fetched. It may have died or
// restarted (under the same name, or at a P2P name now taken by a new
// process), so OpenSegment fetches the descriptor again before a call uses
// it: the first call after a restart, async ones included, then goes to the
// new incarnation. A live peer that dropped an idle connection costs one
// fetch.
func (e *Engine) peerClosedSince(s *segment.Segment) bool {
	return peerCloses(s.Transport, s.Peer) != s.Closes
}

// FirstBufferAddress returns the address of the first buffer the segment
// called name publishes (get_first_buffer_address). A segment with no
// buffer is an error; so is one that cannot be opened (Mooncake
// dereferences null). A cached descriptor without buffers is fetched again
// first: it may predate the peer's first registration.
func (e *Engine) FirstBufferAddress(ctx context.Context, name string) (uint64, error) {
	h, err := e.OpenSegment(ctx, name)
	if err != nil {
		return 0, err
	}
	desc, err := e.SegmentDesc(h)
	if err == nil && len(desc.Buffers) == 0 {
		// No transfer can be in flight to a segment without buffers, so
		// dropping it to fetch a fresh descriptor disturbs nothing.
		if cerr := e.CloseSegment(h); cerr == nil {
			if h, err = e.OpenSegment(ctx, name); err == nil {
				desc, err = e.SegmentDesc(h)
			}
		}
	}
	if err != nil {
		return 0, err
	}
	if len(desc.Buffers) == 0 {
		return 0, fmt.Errorf("segment %q has no buffers: %w", name, ErrInvalidArgument)
	}
	return desc.Buffers[0].Addr, nil
}
