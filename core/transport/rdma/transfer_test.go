package rdma

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

const xferSize = 4_096_000 // Mooncake's rdma_transport_test and loopback size

// TestLoopback is Mooncake's rdma_loopback_test on the fake fabric: 200
// writes of 4,096,000 bytes into the engine's own segment, each checked.
func TestLoopback(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	a := c.addHost("10.0.0.1:15000", hostSpec{mem: 2 * xferSize})
	src, dst := a.mem[:xferSize], a.mem[xferSize:]
	for i := range 200 {
		fill(src, uint64(i))
		tasks := a.transfer(t, context.Background(), a, transport.Request{
			Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: a.addr(xferSize), Length: xferSize})
		requireDone(t, tasks)
		requireEqualBytes(t, src, dst)
	}
}

// TestTwoEngines is Mooncake's rdma_transport_test2 on the fake fabric,
// handshakes over real loopback TCP: 10 writes then 10 reads of 4,096,000
// bytes, each checked.
func TestTwoEngines(t *testing.T) {
	testutil.ResourceCheck(t)
	c := newCluster(t)
	c.rpc = true
	a := c.addHost("10.0.0.1:15000", hostSpec{mem: 2 * xferSize})
	b := c.addHost("10.0.0.2:15000", hostSpec{mem: 2 * xferSize})
	for i := range 10 {
		fill(a.mem[:xferSize], uint64(i))
		requireDone(t, a.transfer(t, context.Background(), b, transport.Request{
			Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: b.addr(0), Length: xferSize}))
		requireEqualBytes(t, a.mem[:xferSize], b.mem[:xferSize])
	}
	for i := range 10 {
		fill(b.mem[:xferSize], uint64(100+i))
		requireDone(t, a.transfer(t, context.Background(), b, transport.Request{
			Opcode: transport.Read, Local: uintptr(a.addr(xferSize)), Remote: b.addr(0), Length: xferSize}))
		requireEqualBytes(t, b.mem[:xferSize], a.mem[xferSize:])
	}
	require.NoError(t, a.t.PeerHealth(b.name))
}
