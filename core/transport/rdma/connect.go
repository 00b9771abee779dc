package rdma

import (
	"context"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// nicPath is "<segment>@<hca>".
func nicPath(segment, hca string) string { return segment + "@" + hca }

// connect runs the active side of an endpoint's connection setup, in its
// own goroutine. No lock is held across the RPC (Mooncake R1): a
// Connection request from the same peer meanwhile completes the endpoint
// through OnConnection, and this side then only checks the reply agrees.
func (t *Transport) connect(ep *endpoint) {
	c := ep.ctx
	ctx, cancel := context.WithTimeout(t.life.Context(), t.cfg.HandshakeTimeout)
	defer cancel()
	err := t.activeConnect(ctx, ep)

	ep.mu.Lock()
	ep.connecting = false
	if err == nil && ep.mode.Load() == modeLive {
		ep.mu.Unlock()
		t.peerWorks(ep.peerName)
		ep.post()
		return
	}
	if err == nil {
		// ClosePeer, an eviction or an HCA event took it out of service:
		// no fault of the peer's, and its work went with it.
		err = fmt.Errorf("endpoint %s left service while connecting", ep.peerPath)
	}
	ep.mu.Unlock()
	if ctx.Err() != nil && t.life.Ended() {
		err = fmt.Errorf("connect %s: %w", ep.peerPath, ErrClosed)
		ep.retire(modeClosed, err)
	} else {
		t.dlog.Warn("rdma connection setup failed", zap.String("hca", c.name), zap.String("peer", ep.peerPath), zap.Error(err))
		t.peerFailed(ep.peerName, err)
		ep.retire(modeFailed, err)
	}
	ep.maybeDestroy()
}

func (t *Transport) activeConnect(ctx context.Context, ep *endpoint) error {
	c := ep.ctx
	lid, gid := c.address()
	local := nicPath(t.name, c.name)
	req := handshake.HandShakeDesc{
		LocalNICPath: local,
		PeerNICPath:  ep.peerPath,
		QPNum:        ep.qpNums(),
		LocalGID:     gid.String(),
		LocalLID:     lid,
	}
	if ep.peerPath == local {
		// Loopback: each QP is connected to itself.
		ep.mu.Lock()
		defer ep.mu.Unlock()
		return ep.connectLocked(req.QPNum, gid, lid)
	}
	var (
		reply handshake.HandShakeDesc
		err   error
	)
	switch {
	case ep.peerName == t.name:
		// Another HCA of this engine: no RPC needed.
		reply = t.OnConnection(ctx, req)
	case t.deps.Handshake == nil:
		return fmt.Errorf("connect %s: %w: no handshake function", ep.peerPath, ErrHandshake)
	default:
		reply, err = t.deps.Handshake(ctx, ep.peerName, req)
		if err != nil {
			return fmt.Errorf("connect %s: %w: %w", ep.peerPath, ErrHandshake, err)
		}
	}
	switch {
	case reply.ReplyMsg != "":
		return fmt.Errorf("connect %s: %w: peer refused: %s", ep.peerPath, ErrHandshake, reply.ReplyMsg)
	case reply.LocalNICPath != ep.peerPath || reply.PeerNICPath != local:
		return fmt.Errorf("connect %s: %w: reply is for %q -> %q", ep.peerPath, ErrHandshake, reply.LocalNICPath, reply.PeerNICPath)
	case len(reply.QPNum) != len(ep.qps):
		return fmt.Errorf("connect %s: %w: peer has %d qps, this side %d (MC_NUM_QP_PER_EP must match)",
			ep.peerPath, ErrHandshake, len(reply.QPNum), len(ep.qps))
	}
	peerGID, peerLID, err := t.peerAddress(ctx, ep, reply)
	if err != nil {
		return err
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.state == connConnected {
		// OnConnection connected it meanwhile (simultaneous connect).
		if !slices.Equal(ep.peerQPN, reply.QPNum) {
			return fmt.Errorf("connect %s: %w: peer answered qps %v, its own request named %v",
				ep.peerPath, ErrHandshake, reply.QPNum, ep.peerQPN)
		}
		return nil
	}
	if err := ep.connectLocked(reply.QPNum, peerGID, peerLID); err != nil {
		return fmt.Errorf("connect %s: %w", ep.peerPath, err)
	}
	return nil
}

// peerAddress is the peer NIC's GID and LID: from the reply when the peer
// sent them (Mooncake HEAD and pymooncake do), else from its descriptor.
func (t *Transport) peerAddress(ctx context.Context, ep *endpoint, reply handshake.HandShakeDesc) (verbs.GID, uint16, error) {
	if reply.LocalGID != "" {
		g, err := verbs.ParseGID(reply.LocalGID)
		if err != nil {
			return g, 0, fmt.Errorf("connect %s: %w: %w", ep.peerPath, ErrHandshake, err)
		}
		return g, reply.LocalLID, nil
	}
	ep.mu.Lock()
	gs, lid := ep.peerGID, ep.peerLID
	ep.mu.Unlock()
	if gs == "" {
		d, err := t.lookupPeerDevice(ctx, ep.peerName, ep.peerNIC)
		if err != nil {
			return verbs.GID{}, 0, err
		}
		gs, lid = d.GID, d.LID
	}
	g, err := verbs.ParseGID(gs)
	if err != nil {
		return g, 0, fmt.Errorf("connect %s: %w: descriptor gid: %w", ep.peerPath, ErrHandshake, err)
	}
	return g, lid, nil
}

// lookupPeerDevice finds a peer NIC in the peer's descriptor.
func (t *Transport) lookupPeerDevice(ctx context.Context, peer, nic string) (metadata.DeviceDesc, error) {
	if t.deps.PeerDesc == nil {
		return metadata.DeviceDesc{}, fmt.Errorf("descriptor of %q: %w: no descriptor lookup", peer, ErrHandshake)
	}
	d, err := t.deps.PeerDesc(ctx, peer)
	if err != nil {
		return metadata.DeviceDesc{}, fmt.Errorf("descriptor of %q: %w: %w", peer, ErrHandshake, err)
	}
	if d == nil {
		return metadata.DeviceDesc{}, fmt.Errorf("descriptor of %q: %w: none", peer, ErrHandshake)
	}
	for _, dev := range d.Devices {
		if dev.Name == nic {
			return dev, nil
		}
	}
	return metadata.DeviceDesc{}, fmt.Errorf("descriptor of %q lists no device %q: %w", peer, nic, ErrHandshake)
}

// OnConnection is the passive side of a Connection message: it finds or
// creates the endpoint for the requester's NIC path on the HCA the request
// names, connects its QPs to the requester's, and replies with its own QP
// numbers, GID and LID. A refusal is a reply with reply_msg set (and is
// logged). A request for an endpoint that is itself connecting completes
// it; one for an endpoint connected to other QPs (the peer restarted)
// replaces it.
func (t *Transport) OnConnection(ctx context.Context, req handshake.HandShakeDesc) handshake.HandShakeDesc {
	reply := handshake.HandShakeDesc{LocalNICPath: req.PeerNICPath, PeerNICPath: req.LocalNICPath}
	refuse := func(format string, args ...any) handshake.HandShakeDesc {
		reply.ReplyMsg = fmt.Sprintf(format, args...)
		reply.QPNum = nil
		t.dlog.Warn("rdma connection refused", zap.String("from", req.LocalNICPath),
			zap.String("to", req.PeerNICPath), zap.String("reason", reply.ReplyMsg))
		return reply
	}
	if !t.life.Enter() {
		return refuse("transport closed")
	}
	defer t.life.Exit()
	// The request's context, ended also by Close.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(t.life.Context(), cancel)
	defer stop()
	seg, hca, ok := splitNICPath(req.PeerNICPath)
	if !ok || seg != t.name {
		return refuse("peer_nic_path %q is not a nic of %q", req.PeerNICPath, t.name)
	}
	var c *hcaContext
	for _, x := range t.ctxs {
		if x.name == hca {
			c = x
		}
	}
	if c == nil || c.fatal.Load() {
		return refuse("no usable hca %q", hca)
	}
	peerName, peerNIC, ok := splitNICPath(req.LocalNICPath)
	if !ok {
		return refuse("local_nic_path %q: want <segment>@<hca>", req.LocalNICPath)
	}
	if len(req.QPNum) != t.cfg.NumQPPerEP {
		return refuse("%d qps requested, this side uses %d (MC_NUM_QP_PER_EP must match)", len(req.QPNum), t.cfg.NumQPPerEP)
	}
	var (
		gid verbs.GID
		lid uint16
		err error
	)
	if req.LocalGID != "" {
		if gid, err = verbs.ParseGID(req.LocalGID); err != nil {
			return refuse("bad local_gid: %v", err)
		}
		lid = req.LocalLID
	} else {
		d, err := t.lookupPeerDevice(ctx, peerName, peerNIC)
		if err != nil {
			return refuse("%v", err)
		}
		if gid, err = verbs.ParseGID(d.GID); err != nil {
			return refuse("descriptor gid of %s: %v", req.LocalNICPath, err)
		}
		lid = d.LID
	}

	for attempt := 0; attempt < 2; attempt++ {
		ep, err := c.store.getOrCreate(req.LocalNICPath, func() (*endpoint, error) { return newEndpoint(c, req.LocalNICPath) })
		if err != nil {
			return refuse("endpoint for %s: %v", req.LocalNICPath, err)
		}
		ep.mu.Lock()
		if ep.state == connConnected {
			same := slices.Equal(ep.peerQPN, req.QPNum)
			ep.mu.Unlock()
			if same {
				return t.accept(reply, c, ep)
			}
			// The peer recreated its QPs: this endpoint's are stale.
			ep.retire(modeFailed, fmt.Errorf("peer %s reconnected with new qps", req.LocalNICPath))
			continue
		}
		if ep.mode.Load() != modeLive {
			ep.mu.Unlock()
			continue
		}
		err = ep.connectLocked(req.QPNum, gid, lid)
		ep.mu.Unlock()
		if err != nil {
			ep.retire(modeFailed, err)
			return refuse("connect %s: %v", req.LocalNICPath, err)
		}
		return t.accept(reply, c, ep)
	}
	return refuse("endpoint for %s keeps leaving service", req.LocalNICPath)
}

func (t *Transport) accept(reply handshake.HandShakeDesc, c *hcaContext, ep *endpoint) handshake.HandShakeDesc {
	lid, gid := c.address()
	reply.QPNum = ep.qpNums()
	reply.LocalGID = gid.String()
	reply.LocalLID = lid
	t.peerWorks(ep.peerName)
	return reply
}
