package engine

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// A target restarts under the same name (HTTP metadata): the first sync
// call after the restart re-resolves it and succeeds.
func TestTransferToSurvivesPeerRestart(t *testing.T) {
	testutil.ResourceCheck(t)
	meta := startHTTPMetadata(t)
	ini := newStoreEngine(t, "ini", meta)
	local := testutil.Mmap(t, 1<<20)
	require.NoError(t, ini.RegisterMemory(addr(local), 1<<20, "*"))
	remote := testutil.Mmap(t, 1<<20)

	var instances []string
	for round := 0; round < 3; round++ {
		tgt := newStoreEngine(t, "restarting-target", meta)
		require.NoError(t, tgt.RegisterMemory(addr(remote), 1<<20, "*"))
		instances = append(instances, tgt.instance)
		fill(local, uint64(round))
		err := ini.TransferTo(ctxT(t), "restarting-target", []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 1 << 20}}, nil)
		require.NoError(t, err, "round %d", round)
		requireSame(t, local, remote)
		require.NoError(t, tgt.Close())
	}
	require.NotEqual(t, instances[0], instances[1], "each incarnation has its own id")

	// With the target gone for good, the call fails and the segment is bad.
	err := ini.TransferTo(ctxT(t), "restarting-target", []Request{{Opcode: transport.Write, Local: addr(local), Remote: uint64(addr(remote)), Length: 16}}, nil)
	require.Error(t, err)
}

func TestCheckSegmentStatus(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	require.NoError(t, p.ini.CheckSegmentStatus(p.seg))
	require.ErrorIs(t, p.ini.CheckSegmentStatus(999), ErrUnknownSegment)
	require.NoError(t, p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 64}}, nil))
	require.NoError(t, p.tgt.Close())
	err := p.ini.Transfer(ctxT(t), []Request{{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 64}}, nil)
	require.ErrorIs(t, err, tcp.ErrPeer)
	require.ErrorIs(t, p.ini.CheckSegmentStatus(p.seg), tcp.ErrPeer)
	require.True(t, p.ini.Recover(ctxT(t), p.seg, err))
	require.ErrorIs(t, p.ini.CheckSegmentStatus(p.seg), ErrUnknownSegment, "recovery drops the handle")
	m := p.ini.Metrics()
	require.Equal(t, uint64(1), m.Recoveries["dropped"])
	require.Equal(t, uint64(1), m.Transports["tcp"].Write.Failures["peer"], "the failure is counted by cause")
	_, err = p.ini.OpenSegment(context.Background(), p.tgt.Name())
	require.Error(t, err, "the dead peer cannot be re-opened")
}
