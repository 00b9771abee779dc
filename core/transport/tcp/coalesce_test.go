package tcp

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// withBuffers is pe whose descriptor publishes bufs, as a target's does.
func withBuffers(pe transport.Peer, bufs ...[]byte) transport.Peer {
	d := *pe.Desc
	for _, b := range bufs {
		d.Buffers = append(d.Buffers, metadata.BufferDesc{Name: d.Name, Addr: addrOf(b), Length: uint64(len(b))})
	}
	pe.Desc = &d
	return pe
}

// Requests contiguous on both sides go out as one request, cut where either
// side changes registration; every request keeps its own status and bytes.
func TestCoalescedRequests(t *testing.T) {
	testutil.ResourceCheck(t)
	const block = 64 << 10
	remote := testutil.Mmap(t, 5<<20)
	// The target registers its memory as three buffers back to back: 2 MiB,
	// 2 MiB and 1 MiB. A TCP target checks each request against one.
	lo, hi, next := remote[:2<<20], remote[2<<20:4<<20], remote[4<<20:]
	server := newTransport(t, Config{}, lo, hi, next)
	local := testutil.Mmap(t, 4<<20)
	client := newTransport(t, Config{}, local)
	pe := withBuffers(peerOf(server, 2), lo, hi, next)

	var reqs []transport.Request
	for i := range 48 { // 3 MiB contiguous on both sides, across lo and hi
		off := uint64(i * block)
		reqs = append(reqs, write(local[off:off+block], addrOf(remote)+off))
	}
	for i := range 8 { // a gap on the remote side, then a run into next
		off := uint64(48*block + i*block)
		reqs = append(reqs, write(local[off:off+block], addrOf(next)+uint64(i*block)))
	}
	reqs = append(reqs, transport.Request{Opcode: transport.Write, Local: uintptr(addrOf(local)), Remote: addrOf(remote)})

	p, err := client.peer(pe)
	require.NoError(t, err)
	tasks := make([]*transport.Task, len(reqs))
	for i, r := range reqs {
		tasks[i] = new(transport.Task)
		tasks[i].Init(r, nil)
	}
	wire := p.coalesce(p.describe(pe.Desc), tasks)
	require.Len(t, wire, 4, "one request per contiguous run within one registration, the zero-length one alone")
	require.EqualValues(t, 2<<20, wire[0].Length, "the run is cut where the target's registration ends")
	require.EqualValues(t, 1<<20, wire[1].Length)
	require.EqualValues(t, 8*block, wire[2].Length)

	fill(local, 61)
	for i, task := range transfer(t, client, pe, reqs...) {
		require.Equal(t, transport.Completed, task.Status(), "task %d", i)
		require.Equal(t, reqs[i].Length, task.Transferred(), "task %d", i)
	}
	require.Equal(t, local[:48*block], remote[:48*block])
	require.Equal(t, local[48*block:56*block], next[:8*block])

	// Scattered requests are returned as they are.
	scattered := []*transport.Task{tasks[3], tasks[1]}
	require.Equal(t, scattered, p.coalesce(p.describe(pe.Desc), scattered))
}

// A failed coalesced request fails every request it carried.
func TestCoalescedFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 1<<20)
	local := testutil.Mmap(t, 1<<20)
	server := newTransport(t, Config{}, remote[:4096]) // the target serves less than it publishes
	client := newTransport(t, Config{}, local)
	pe := withBuffers(peerOf(server, 2), remote)
	var reqs []transport.Request
	for i := range 4 {
		off := uint64(i * 4096)
		reqs = append(reqs, write(local[off:off+4096], addrOf(remote)+off))
	}
	for i, task := range transfer(t, client, pe, reqs...) {
		require.Equal(t, transport.Failed, task.Status(), "task %d", i)
		require.ErrorIs(t, task.Err(), ErrRejected, "task %d", i)
		require.Zero(t, task.Transferred(), "task %d", i)
	}
}
