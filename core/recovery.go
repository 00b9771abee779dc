package core

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// InstanceKey is the descriptor key under which a pymooncake engine
// publishes a random id of its process incarnation. Mooncake's decoder
// ignores unknown keys, so Mooncake peers are unaffected; peers without the
// key are still opened and recovered, only without this extra certainty.
const InstanceKey = "pymooncake_instance"

func newInstanceID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// instanceOf returns the incarnation id a descriptor carries, or "".
func instanceOf(d *metadata.SegmentDesc) string {
	var id string
	if raw, ok := d.Extra[InstanceKey]; ok && json.Unmarshal(raw, &id) != nil {
		return ""
	}
	return id
}

// CheckSegmentStatus reports whether an open segment is still usable: nil
// while it is, an error when its data connections have failed (the peer
// died, restarted or is unreachable) or the handle is unknown. It is what
// Mooncake's CheckSegmentStatus is meant to be, the right way round. It
// uses only what the engine already knows and never blocks; a peer that
// restarted at the same data address shows by rejecting requests, which
// Recover and TransferTo check against a fresh descriptor.
func (e *Engine) CheckSegmentStatus(h SegmentHandle) error {
	s, err := e.segs.get(h)
	if err != nil {
		return err
	}
	if !e.xp.PeerHealthy(s.peer.Name) {
		return fmt.Errorf("segment %q: connections to %s failed: %w", s.name, s.peer.Name, tcp.ErrPeer)
	}
	return nil
}

// Recover checks a segment after a failed submit or a failed task, whose
// error is cause (nil if unknown), and repairs it when it is bad; it
// reports whether it did. A segment whose connections failed is dropped:
// its connections are closed and its descriptor forgotten, locally only
// (no key another engine published is ever deleted), so the next open
// re-resolves the peer. When the peer rejected an address range that the
// cached descriptor allows, the descriptor is fetched again under the same
// handle: if it names another incarnation of the peer (a restart at the
// same address), the next call uses the fresh one. ctx bounds that fetch.
func (e *Engine) Recover(ctx context.Context, h SegmentHandle, cause error) bool {
	s, err := e.segs.get(h)
	if err != nil {
		return false
	}
	if e.CheckSegmentStatus(h) != nil {
		if err := e.CloseSegment(h); err != nil {
			return false
		}
		e.log.Info("dropped a failed segment; it is re-resolved on next use",
			zap.String("segment", s.name), zap.NamedError("cause", cause))
		return true
	}
	if !errors.Is(cause, tcp.ErrRejected) {
		return false
	}
	fresh, err := e.resolve(ctx, s.name)
	if err != nil {
		e.log.Info("re-resolving a segment after a rejection failed", zap.String("segment", s.name), zap.Error(err))
		return false
	}
	if sameIncarnation(s, fresh) {
		return false
	}
	e.log.Info("peer restarted; segment re-resolved", zap.String("segment", s.name),
		zap.String("instance", instanceOf(fresh.desc)), zap.NamedError("cause", cause))
	return true
}

// peerCloseCounter is the optional part of a transport that counts the idle
// connections a peer closed (TCP's pooled lanes).
type peerCloseCounter interface {
	PeerCloses(pe transport.Peer) uint64
}

func (e *Engine) peerCloses(pe transport.Peer) uint64 {
	if c, ok := e.xp.(peerCloseCounter); ok {
		return c.PeerCloses(pe)
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
func (e *Engine) peerClosedSince(s *segment) bool {
	return e.peerCloses(s.peer) != s.closes
}

// sameIncarnation reports whether two descriptors fetched for one name
// describe the same process: by instance id when they carry one, else by
// data endpoint and buffers (a Mooncake peer that restarted re-registers
// its memory, usually elsewhere).
func sameIncarnation(a, b *segment) bool {
	ia, ib := instanceOf(a.desc), instanceOf(b.desc)
	if ia != ib {
		return false
	}
	if ia != "" {
		return true
	}
	return a.peer == b.peer && slices.EqualFunc(a.desc.Buffers, b.desc.Buffers, func(x, y metadata.BufferDesc) bool {
		return x.Addr == y.Addr && x.Length == y.Length
	})
}

// TransferTo runs reqs (whose Segment fields are ignored) against the
// segment called target and waits: the synchronous Python calls. The handle
// is cached by name. If the transfer fails because the peer restarted, the
// peer is re-resolved and the transfer retried once, within the same ctx:
// after a peer has finished restarting under the same name, no call fails.
// A restart shows as a failed connection (refused, reset: the peer died or
// moved), as connections closed or a handle dropped by another call's
// recovery, or as a rejected range together with a descriptor of another
// incarnation. A call that ran out of time is not retried.
func (e *Engine) TransferTo(ctx context.Context, target string, reqs []Request, n *Notify) error {
	h, err := e.OpenSegment(ctx, target)
	if err != nil {
		return err
	}
	err = e.Transfer(ctx, withSegment(reqs, h), n)
	if err == nil || ctx.Err() != nil || e.closed.Load() {
		return err
	}
	old, _ := e.segs.get(h)
	h2, why := e.reresolve(ctx, h, old, target, err)
	if h2 == 0 {
		return err
	}
	s, gerr := e.segs.get(h2)
	e.log.Info("retrying a transfer after the peer's connections failed",
		zap.String("segment", target), zap.String("why", why),
		zap.Bool("restarted", gerr == nil && old != nil && !sameIncarnation(old, s)),
		zap.NamedError("cause", err))
	if rerr := e.Transfer(ctx, withSegment(reqs, h2), n); rerr != nil {
		if errors.Is(rerr, tcp.ErrPeer) {
			// Still unreachable: cache nothing of it, so that the first
			// call once it is back (an async one too) resolves it afresh.
			_ = e.CloseSegment(h2)
		}
		return fmt.Errorf("after re-resolving the peer: %w", rerr)
	}
	return nil
}

// reresolve returns the handle to retry a failed transfer on, and why, or
// 0 when the failure is not one a fresh descriptor can cure.
func (e *Engine) reresolve(ctx context.Context, h SegmentHandle, old *segment, target string, cause error) (SegmentHandle, string) {
	switch {
	case errors.Is(cause, ErrUnknownSegment):
		// Another call recovered the segment between our open and submit.
		h2, err := e.OpenSegment(ctx, target)
		if err != nil {
			return 0, ""
		}
		return h2, "segment recovered by another call"
	case errors.Is(cause, tcp.ErrPeer), errors.Is(cause, tcp.ErrClosed):
		// The handle may be gone already: another call recovered it.
		if err := e.CloseSegment(h); err != nil && !errors.Is(err, ErrUnknownSegment) {
			return 0, ""
		}
		h2, err := e.OpenSegment(ctx, target)
		if err != nil {
			e.log.Debug("re-resolving a failed peer", zap.String("segment", target), zap.Error(err))
			return 0, ""
		}
		return h2, "connection failed"
	case errors.Is(cause, tcp.ErrRejected):
		fresh, err := e.resolve(ctx, target)
		if err != nil || old == nil || sameIncarnation(old, fresh) {
			return 0, ""
		}
		return fresh.handle, "rejected by a new incarnation"
	}
	return 0, ""
}

func withSegment(reqs []Request, h SegmentHandle) []Request {
	out := make([]Request, len(reqs))
	for i, r := range reqs {
		r.Segment = h
		out[i] = r
	}
	return out
}
