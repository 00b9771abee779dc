package barex

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/handshake"
)

// peer is what the transport keeps for one target segment: where it is,
// its barex port (its own, never another peer's: Mooncake B1), and a
// channel set per local device.
type peer struct {
	t    *Transport
	name string
	// hs is a token: one barex_port exchange with this peer at a time. It
	// is a channel so that waiting for it honours a context.
	hs    chan struct{}
	route atomic.Pointer[route]

	mu   sync.Mutex
	host string           // +checklocks:mu
	port int              // +checklocks:mu; the peer's barex port, 0 until exchanged
	sets map[int]*chanSet // +checklocks:mu; by local device index
	gone bool             // +checklocks:mu; ClosePeer or Close ran
}

// peerFor returns the state of the named peer, creating it. host is where
// its channels connect (the descriptor's data host); a new host makes the
// next channel setup exchange ports again.
func (t *Transport) peerFor(name, host string) *peer {
	t.peersMu.RLock()
	p := t.peers[name]
	t.peersMu.RUnlock()
	if p == nil {
		t.peersMu.Lock()
		if p = t.peers[name]; p == nil {
			p = &peer{t: t, name: name, hs: make(chan struct{}, 1), sets: map[int]*chanSet{}}
			t.peers[name] = p
		}
		t.peersMu.Unlock()
	}
	p.mu.Lock()
	if host != "" && host != p.host {
		if p.host != "" {
			t.log.Info("barex peer moved; its port is exchanged again", zap.String("peer", name),
				zap.String("from", p.host), zap.String("to", host))
		}
		p.host, p.port = host, 0
	}
	p.mu.Unlock()
	return p
}

// set returns the peer's channel set of a local device.
func (p *peer) set(dev device) (*chanSet, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return nil, fmt.Errorf("peer %q: %w", p.name, ErrClosed)
	}
	s := p.sets[dev.index]
	if s == nil {
		s = &chanSet{p: p, dev: dev, chans: make([]*channel, p.t.cfg.NumQPPerEP)}
		p.sets[dev.index] = s
	}
	return s, nil
}

func (p *peer) channelSets() []*chanSet {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*chanSet, 0, len(p.sets))
	for _, s := range p.sets {
		out = append(out, s)
	}
	return out
}

// barexPort returns where to connect: the peer's host and barex port,
// exchanging ports in a Connection handshake when not known yet. fresh
// says the port was exchanged by this call, not remembered.
func (p *peer) barexPort(ctx context.Context) (host string, port int, fresh bool, err error) {
	select {
	case p.hs <- struct{}{}:
	case <-ctx.Done():
		return "", 0, false, fmt.Errorf("barex port of %q: %w", p.name, ctx.Err())
	}
	defer func() { <-p.hs }()
	t := p.t
	p.mu.Lock()
	host, port = p.host, p.port
	p.mu.Unlock()
	if port != 0 {
		return host, port, false, nil
	}
	if host == "" {
		return "", 0, false, fmt.Errorf("barex port of %q: %w: no host to connect to", p.name, ErrHandshake)
	}
	if p.name == t.name {
		port = t.port // this engine's own segment: no RPC
	} else {
		if t.deps.Handshake == nil {
			return "", 0, false, fmt.Errorf("barex port of %q: %w: no handshake function", p.name, ErrHandshake)
		}
		mine := t.port
		reply, err := t.deps.Handshake(ctx, p.name, handshake.HandShakeDesc{
			LocalNICPath: t.name, PeerNICPath: p.name, BarexPort: &mine,
		})
		switch {
		case err != nil:
			return "", 0, false, fmt.Errorf("barex port of %q: %w: %w", p.name, ErrHandshake, err)
		case reply.ReplyMsg != "":
			return "", 0, false, fmt.Errorf("barex port of %q: %w: peer refused: %s", p.name, ErrHandshake, reply.ReplyMsg)
		case reply.BarexPort == nil || *reply.BarexPort <= 0 || *reply.BarexPort > 65535:
			// Mooncake reads a missing barex_port as 0: a peer built
			// without barex (B13).
			return "", 0, false, fmt.Errorf("barex port of %q: %w: the reply has no barex_port (is the peer a barex engine?)", p.name, ErrHandshake)
		}
		port = *reply.BarexPort
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone {
		return "", 0, false, fmt.Errorf("peer %q: %w", p.name, ErrClosed)
	}
	if p.host == host {
		p.port = port
	}
	return host, port, true, nil
}

// forgetPort drops a port that failed, so the next setup asks again (the
// peer may have restarted on another port).
func (p *peer) forgetPort(port int) {
	p.mu.Lock()
	if p.port == port {
		p.port = 0
	}
	p.mu.Unlock()
}

// close takes the peer out of service: queued work fails with cause, every
// channel is closed (waiting until the deadline for its callbacks), and the
// port is forgotten.
func (p *peer) close(cause error, deadline time.Time) {
	p.mu.Lock()
	p.gone = true
	sets := p.sets
	p.sets = nil
	p.port = 0
	p.mu.Unlock()
	for _, s := range sets {
		s.mu.Lock()
		s.closed = true
		q := s.queue
		s.queue = nil
		var chans []*channel
		for i, ch := range s.chans {
			if ch != nil {
				chans = append(chans, ch)
				s.chans[i] = nil
			}
		}
		s.mu.Unlock()
		finishAll(q, cause)
		for _, ch := range chans {
			p.t.closeChannel(ch, cause, time.Until(deadline))
		}
	}
}

// channel is one barex channel of a set.
type channel struct {
	nativeChannel
	// closed is why the transport closed the channel: batches that then
	// fail carry it, so that work flushed by a close says so.
	closed atomic.Pointer[error]
}

// chanSet is the channels between one local device and one peer: exactly
// NumQPPerEP of them when healthy. Slots of channels found inactive are
// emptied (the channel is closed) and refilled by a setup goroutine.
type chanSet struct {
	p   *peer
	dev device

	mu         sync.Mutex
	chans      []*channel // +checklocks:mu; NumQPPerEP slots, nil while missing
	connecting bool       // +checklocks:mu; a setup goroutine runs
	failed     error      // +checklocks:mu; the last setup's failure, nil after a success
	queue      []*piece   // +checklocks:mu; waiting for a channel
	closed     bool       // +checklocks:mu
	rr         uint32     // +checklocks:mu; round-robin start
}

// submit posts pieces on the set's live channels, round robin, or queues
// them while there is none. Channels found inactive are closed and
// replaced; a setup starts when there are no channels yet or one was just
// lost.
func (s *chanSet) submit(ps []*piece) {
	if len(ps) == 0 {
		return
	}
	t := s.p.t
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		finishAll(ps, fmt.Errorf("peer %q: %w", s.p.name, ErrClosed))
		return
	}
	live, dead := s.sweepLocked()
	start := len(live) < len(s.chans) && !s.connecting && (len(dead) > 0 || len(live) == 0)
	if start {
		s.connecting = true
	}
	var (
		targets []*channel
		shares  [][]*piece
	)
	if len(live) == 0 {
		s.queue = append(s.queue, ps...)
	} else {
		targets, shares = s.distributeLocked(live, ps)
	}
	s.mu.Unlock()
	if start && !t.life.Go(s.fill) {
		s.fillFailed(fmt.Errorf("channel setup: %w", ErrClosed))
	}
	if len(dead) > 0 {
		t.dlog.Warn("barex channels inactive; closed and replaced", zap.String("peer", s.p.name),
			zap.String("device", s.dev.name), zap.Int("channels", len(dead)))
		t.closeChannelsAsync(dead, fmt.Errorf("%w: channel inactive", ErrChannel))
	}
	for i, ch := range targets {
		t.post(ch, shares[i])
	}
}

// sweepLocked empties the slots of channels that are no longer active and
// returns the live channels and the dead ones.
// +checklocks:s.mu
func (s *chanSet) sweepLocked() (live, dead []*channel) {
	nat := s.p.t.nat
	for i, ch := range s.chans {
		if ch == nil {
			continue
		}
		if ok, err := nat.Active(ch.handle); err != nil || !ok {
			dead = append(dead, ch)
			s.chans[i] = nil
			continue
		}
		live = append(live, ch)
	}
	return live, dead
}

// distributeLocked splits n pieces over q = min(len(live), n) channels,
// starting one channel further at every call: channel i of the q gets
// n/q consecutive pieces, the last also the remainder (Mooncake's split).
// +checklocks:s.mu
func (s *chanSet) distributeLocked(live []*channel, ps []*piece) ([]*channel, [][]*piece) {
	n := len(ps)
	q := min(len(live), n)
	start := int(s.rr % uint32(len(live)))
	s.rr += uint32(q)
	targets := make([]*channel, q)
	shares := make([][]*piece, q)
	per := n / q
	for i := range q {
		targets[i] = live[(start+i)%len(live)]
		lo, hi := i*per, (i+1)*per
		if i == q-1 {
			hi = n
		}
		shares[i] = ps[lo:hi]
	}
	return targets, shares
}

// fill is a setup goroutine: it opens the channels the set lacks, again
// while channels die meanwhile, until the set is full or HandshakeTimeout.
// Each round is all or nothing: when one connect fails, the channels that
// round opened are closed again. Queued pieces then go to the channels the
// set still has, or fail when it has none.
func (s *chanSet) fill() {
	t := s.p.t
	ctx, cancel := context.WithTimeout(t.life.Context(), t.cfg.HandshakeTimeout)
	defer cancel()
	var err error
	for {
		var opened []*channel
		opened, err = s.open(ctx)
		s.mu.Lock()
		if err == nil && s.closed {
			err = fmt.Errorf("peer %q: %w", s.p.name, ErrClosed)
		}
		var spare []*channel
		missing := 0
		if err == nil {
			j := 0
			for i := range s.chans {
				if s.chans[i] == nil && j < len(opened) {
					s.chans[i] = opened[j]
					j++
				}
				if s.chans[i] == nil {
					missing++
				}
			}
			spare = opened[j:]
			s.failed = nil
		} else {
			spare = opened
			s.failed = err
		}
		s.mu.Unlock()
		t.closeChannels(spare, fmt.Errorf("%w: setup abandoned", ErrChannel))
		if err != nil || missing == 0 {
			break
		}
	}
	switch {
	case err != nil && t.life.Ended():
		// Close cut the setup short: what waited for it fails as closed.
		err = fmt.Errorf("channel setup to %q: %w", s.p.name, ErrClosed)
	case err != nil:
		t.dlog.Warn("barex channel setup failed", zap.String("peer", s.p.name), zap.String("device", s.dev.name), zap.Error(err))
	}
	s.flush(err)
}

// fillFailed ends a setup that could not start.
func (s *chanSet) fillFailed(err error) {
	s.mu.Lock()
	s.failed = err
	s.mu.Unlock()
	s.flush(err)
}

// flush ends a setup: queued pieces go to the live channels, or fail with
// err when there is none.
func (s *chanSet) flush(err error) {
	s.mu.Lock()
	s.connecting = false
	q := s.queue
	s.queue = nil
	live := 0
	for _, ch := range s.chans {
		if ch != nil {
			live++
		}
	}
	s.mu.Unlock()
	if live == 0 {
		if err == nil {
			err = fmt.Errorf("%w: no channel", ErrChannel)
		}
		finishAll(q, err)
		return
	}
	s.submit(q)
}

// open connects the channels the set lacks, from its device, and checks
// that barex placed each on that device.
func (s *chanSet) open(ctx context.Context) ([]*channel, error) {
	t := s.p.t
	s.mu.Lock()
	missing := 0
	for _, ch := range s.chans {
		if ch == nil {
			missing++
		}
	}
	s.mu.Unlock()
	host, port, fresh, err := s.p.barexPort(ctx)
	if err != nil {
		return nil, err
	}
	var out []*channel
	for len(out) < missing {
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("connect to %s:%d: %w", host, port, err)
		}
		timeout := t.cfg.ConnectTimeout
		if dl, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(dl))
		}
		nc, err := t.nat.Connect(host, port, s.dev.nic, timeout)
		if err != nil {
			refused := errors.Is(err, CodeConnect)
			if refused || errors.Is(err, CodeTimedOut) {
				s.p.forgetPort(port)
			}
			if refused && !fresh {
				// Nothing listens on the port learnt earlier: the peer
				// may have restarted on another one. Ask it, once.
				if host, port, fresh, err = s.p.barexPort(ctx); err != nil {
					return out, err
				}
				continue
			}
			return out, fmt.Errorf("connect %s to %q at %s:%d: %w: %w", s.dev.name, s.p.name, host, port, ErrChannel, err)
		}
		out = append(out, &channel{nativeChannel: nc})
		if nc.localNIC != s.dev.nic {
			return out, fmt.Errorf("connect %s to %q: %w: barex placed the channel on nic %d, not %d",
				s.dev.name, s.p.name, ErrChannel, nc.localNIC, s.dev.nic)
		}
	}
	return out, nil
}

// check reports a set with fewer healthy channels than NumQPPerEP that is
// not being set up.
func (s *chanSet) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	healthy := 0
	for _, ch := range s.chans {
		if ch == nil {
			continue
		}
		if ok, err := s.p.t.nat.Active(ch.handle); err == nil && ok {
			healthy++
		}
	}
	if healthy == len(s.chans) || (s.connecting && s.failed == nil) {
		return nil
	}
	err := fmt.Errorf("device %s: %d of %d channels healthy: %w", s.dev.name, healthy, len(s.chans), ErrChannel)
	if s.failed != nil {
		err = fmt.Errorf("%w (last setup: %w)", err, s.failed)
	}
	return err
}

// purgeCanceled fails queued pieces whose Submit context ended.
func (s *chanSet) purgeCanceled() {
	s.mu.Lock()
	var gone []*piece
	keep := s.queue[:0]
	for _, p := range s.queue {
		if p.call.Err() != nil {
			gone = append(gone, p)
			continue
		}
		keep = append(keep, p)
	}
	clear(s.queue[len(keep):])
	s.queue = keep
	s.mu.Unlock()
	for _, p := range gone {
		p.finish(nil, p.call.Err())
	}
}

// closeChannel closes one channel, waiting up to timeout for the callbacks
// of its batches (their completions still arrive, and a failed one carries
// cause).
func (t *Transport) closeChannel(ch *channel, cause error, timeout time.Duration) {
	ch.closed.Store(&cause)
	if err := t.nat.CloseChannel(ch.handle, timeout); err != nil {
		t.dlog.Warn("close barex channel", zap.Uint64("channel", ch.handle), zap.Error(err))
	}
}

func (t *Transport) closeChannels(chs []*channel, cause error) {
	for _, ch := range chs {
		t.closeChannel(ch, cause, t.cfg.DrainTimeout)
	}
}

// closeChannelsAsync closes channels in a goroutine of the transport (or
// at once when it is closing: Close waits for the goroutines it owns, and
// the engine is still up until then).
func (t *Transport) closeChannelsAsync(chs []*channel, cause error) {
	if !t.life.Go(func() { t.closeChannels(chs, cause) }) {
		t.closeChannels(chs, cause)
	}
}
