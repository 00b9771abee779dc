package core

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Requests contiguous on both sides go out as one request, split where a
// side changes registration; every request keeps its own status and bytes.
func TestCoalescedRequests(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 4<<20, nil, nil)
	// A second target registration right after the first: a run that
	// crosses into it must be cut there, since a TCP target checks each
	// request against one buffer.
	next := mmapBuf(t, 1<<20)
	require.NoError(t, p.tgt.RegisterMemory(addr(next), 1<<20, "*"))
	// and the first buffer as two registrations back to back at 2 MiB
	require.NoError(t, p.tgt.UnregisterMemory(addr(p.remote)))
	require.NoError(t, p.tgt.RegisterMemoryBatch([]uintptr{addr(p.remote), addr(p.remote) + 2<<20}, []uint64{2 << 20, 2 << 20}, "*"))

	const block = 64 << 10
	var reqs []Request
	for i := 0; i < 48; i++ { // 3 MiB contiguous on both sides
		off := uintptr(i * block)
		reqs = append(reqs, Request{Opcode: transport.Write, Local: addr(p.local) + off, Segment: p.seg, Remote: uint64(addr(p.remote)) + uint64(off), Length: block})
	}
	// a gap on the remote side, then a run into the other registration
	for i := 0; i < 8; i++ {
		off := uintptr(48*block + i*block)
		reqs = append(reqs, Request{Opcode: transport.Write, Local: addr(p.local) + off, Segment: p.seg, Remote: uint64(addr(next)) + uint64(i*block), Length: block})
	}
	reqs = append(reqs, Request{Opcode: transport.Write, Local: addr(p.local), Segment: p.seg, Remote: uint64(addr(p.remote)), Length: 0})

	s, err := p.ini.resolve(ctxT(t), p.tgt.Name()) // the descriptor with both buffers, as a submit's check gets it
	require.NoError(t, err)
	segs := make([]*segment, len(reqs))
	tasks := make([]*transport.Task, len(reqs))
	for i := range reqs {
		segs[i], tasks[i] = s, new(transport.Task)
	}
	wire, _ := p.ini.coalesce(reqs, segs, tasks)
	require.Len(t, wire, 4, "one request per contiguous run within one registration, the zero-length one alone")
	require.EqualValues(t, 2<<20, wire[0].Length, "the run is cut where the target's registration ends")

	fill(p.local, 61)
	id, err := p.ini.AllocateBatch(len(reqs))
	require.NoError(t, err)
	require.NoError(t, p.ini.Submit(id, reqs))
	st, err := p.ini.Wait(ctxT(t), id)
	require.NoError(t, err)
	require.Equal(t, transport.Completed, st)
	for i, r := range reqs {
		ts, n, err := p.ini.TaskStatus(id, i)
		require.NoError(t, err)
		require.Equal(t, transport.Completed, ts, "task %d", i)
		require.Equal(t, r.Length, n, "task %d", i)
	}
	require.NoError(t, p.ini.FreeBatch(id))
	requireSame(t, p.local[:48*block], p.remote[:48*block])
	requireSame(t, p.local[48*block:56*block], next[:8*block])
}

// A failed coalesced request fails every request it carried.
func TestCoalescedFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	p := newPair(t, 1<<20, nil, nil)
	var reqs []Request
	for i := 0; i < 4; i++ {
		off := uintptr(i * 4096)
		reqs = append(reqs, Request{Opcode: transport.Write, Local: addr(p.local) + off, Segment: p.seg, Remote: uint64(addr(p.remote)) + uint64(off), Length: 4096})
	}
	require.NoError(t, p.tgt.Close())
	id, err := p.ini.AllocateBatch(len(reqs))
	require.NoError(t, err)
	require.NoError(t, p.ini.Submit(id, reqs))
	st, err := p.ini.Wait(ctxT(t), id)
	require.Error(t, err)
	require.Equal(t, transport.Failed, st)
	for i := range reqs {
		ts, _, err := p.ini.TaskStatus(id, i)
		require.NoError(t, err)
		require.Equal(t, transport.Failed, ts, "task %d", i)
	}
	require.NoError(t, p.ini.FreeBatch(id))
}
