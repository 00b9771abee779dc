package engine

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/metrics"
	"github.com/pymooncake/pymooncake/core/segment"
	"github.com/pymooncake/pymooncake/core/transport"
)

// CheckSegmentStatus reports whether an open segment is still usable: nil
// while it is, an error matching transport.ErrPeer when the connections of
// its transport have failed (the peer died, restarted or is unreachable),
// ErrUnknownSegment for an unknown handle. It is what Mooncake's
// CheckSegmentStatus is meant to be, the right way round, for every
// transport that reports health (transport.HealthReporter). It uses only
// what the engine already knows and never blocks; a peer that restarted at
// the same data address shows by rejecting requests, which Recover and
// TransferTo check against a fresh descriptor.
func (e *Engine) CheckSegmentStatus(h SegmentHandle) error {
	s, err := e.segs.Get(h)
	if err != nil {
		return err
	}
	if hr, ok := s.Transport.(transport.HealthReporter); ok {
		if err := hr.PeerHealth(s.Peer.Name); err != nil {
			return fmt.Errorf("segment %q over %s: %w", s.Name, s.Transport.Name(), err)
		}
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
	s, err := e.segs.Get(h)
	if err != nil {
		return false
	}
	if e.CheckSegmentStatus(h) != nil {
		if err := e.CloseSegment(h); err != nil {
			return false
		}
		e.metrics.Recovered(metrics.RecoveryDropped)
		e.log.Info("dropped a failed segment; it is re-resolved on next use",
			zap.String("segment", s.Name), zap.String("transport", s.Transport.Name()), zap.NamedError("cause", cause))
		return true
	}
	if !errors.Is(cause, transport.ErrRejected) {
		return false
	}
	fresh, err := e.resolve(ctx, s.Name)
	if err != nil {
		e.log.Info("re-resolving a segment after a rejection failed", zap.String("segment", s.Name), zap.Error(err))
		return false
	}
	if segment.SameIncarnation(s, fresh) {
		return false
	}
	e.metrics.Recovered(metrics.RecoveryRestarted)
	e.log.Info("peer restarted; segment re-resolved", zap.String("segment", s.Name),
		zap.String("instance", fresh.Desc().Instance()), zap.NamedError("cause", cause))
	return true
}

// retryWhy says why a transfer is retried: in words, and as the metrics
// count it.
type retryWhy struct {
	text   string
	reason metrics.Retry
}

var (
	whyRecovered = retryWhy{"segment recovered by another call", metrics.RetryRecovered}
	whyPeer      = retryWhy{"connection failed", metrics.RetryPeer}
	whyRestarted = retryWhy{"rejected by a new incarnation", metrics.RetryRestarted}
)

// reresolve returns the handle to retry a failed transfer on, and why, or
// 0 when the failure is not one a fresh descriptor can cure.
func (e *Engine) reresolve(ctx context.Context, h SegmentHandle, old *segment.Segment, target string, cause error) (SegmentHandle, retryWhy) {
	switch {
	case errors.Is(cause, ErrUnknownSegment):
		// Another call recovered the segment between our open and submit.
		h2, err := e.OpenSegment(ctx, target)
		if err != nil {
			return 0, retryWhy{}
		}
		return h2, whyRecovered
	case errors.Is(cause, transport.ErrPeer), errors.Is(cause, transport.ErrClosed):
		// The handle may be gone already: another call recovered it.
		if err := e.CloseSegment(h); err != nil && !errors.Is(err, ErrUnknownSegment) {
			return 0, retryWhy{}
		}
		h2, err := e.OpenSegment(ctx, target)
		if err != nil {
			e.log.Debug("re-resolving a failed peer", zap.String("segment", target), zap.Error(err))
			return 0, retryWhy{}
		}
		return h2, whyPeer
	case errors.Is(cause, transport.ErrRejected):
		fresh, err := e.resolve(ctx, target)
		if err != nil || old == nil || segment.SameIncarnation(old, fresh) {
			return 0, retryWhy{}
		}
		return fresh.Handle, whyRestarted
	}
	return 0, retryWhy{}
}
