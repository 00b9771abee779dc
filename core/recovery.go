package core

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metadata"
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
// Mooncake's CheckSegmentStatus is meant to be, the right way round.
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

// Recover drops a bad segment: its connections are closed and its
// descriptor forgotten, locally only (no key another engine published is
// ever deleted), so the next open re-resolves the peer.
func (e *Engine) Recover(h SegmentHandle) {
	if err := e.CheckSegmentStatus(h); err == nil || errors.Is(err, ErrUnknownSegment) {
		return
	}
	if err := e.CloseSegment(h); err == nil {
		e.log.Info("dropped a failed segment; it is re-resolved on next use", zap.Int32("segment", int32(h)))
	}
}

// TransferTo runs reqs (whose Segment fields are ignored) against the
// segment called target and waits: the synchronous Python calls. The handle
// is cached by name. If the transfer fails because the peer's connections
// broke (it died or restarted), the peer is re-resolved and the transfer is
// retried once, within the same ctx: after a peer has finished restarting
// under the same name, no call fails.
func (e *Engine) TransferTo(ctx context.Context, target string, reqs []Request, n *Notify) error {
	h, err := e.OpenSegment(ctx, target)
	if err != nil {
		return err
	}
	err = e.Transfer(ctx, withSegment(reqs, h), n)
	if err == nil || !errors.Is(err, tcp.ErrPeer) || ctx.Err() != nil {
		return err
	}
	old, _ := e.segs.get(h)
	if cerr := e.CloseSegment(h); cerr != nil && !errors.Is(cerr, ErrUnknownSegment) {
		return err
	}
	h2, rerr := e.OpenSegment(ctx, target)
	if rerr != nil {
		return fmt.Errorf("%w (re-resolving the peer failed too: %v)", err, rerr)
	}
	if s, gerr := e.segs.get(h2); gerr == nil && old != nil {
		e.log.Info("retrying a transfer after the peer's connections failed",
			zap.String("segment", target),
			zap.Bool("restarted", instanceOf(s.desc) != instanceOf(old.desc) || s.peer != old.peer),
			zap.NamedError("cause", err))
	}
	if rerr := e.Transfer(ctx, withSegment(reqs, h2), n); rerr != nil {
		return fmt.Errorf("after re-resolving the peer: %w", rerr)
	}
	return nil
}

func withSegment(reqs []Request, h SegmentHandle) []Request {
	out := make([]Request, len(reqs))
	for i, r := range reqs {
		r.Segment = h
		out[i] = r
	}
	return out
}
