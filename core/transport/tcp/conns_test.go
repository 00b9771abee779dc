package tcp

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
)

// TestPeerConns counts each kind of connection while it is open: pipelined
// lanes, pooled synchronous connections, v1 requests' own; and none once
// the peer is closed or the peer closes them.
func TestPeerConns(t *testing.T) {
	testutil.ResourceCheck(t)
	remote := testutil.Mmap(t, 8<<20)
	server := newTransport(t, Config{}, remote)
	client := newTransport(t, Config{Lanes: 2})
	local := testutil.Mmap(t, 8<<20)
	pe := peerOf(server, 2)
	require.Zero(t, client.PeerConns(pe.Name), "nothing dialled yet")

	// One large request split over both lanes: two connections stay open.
	requireDone(t, transfer(t, client, pe, write(local, addrOf(remote)))...)
	require.Equal(t, 2, client.PeerConns(pe.Name))
	require.Zero(t, client.PeerConns("someone else"))

	// A synchronous 4 KiB request runs on a pooled connection of its own.
	task := submitSync(context.Background(), client, pe, write(local[:4096], addrOf(remote)))
	waitTask(t, task)
	requireDone(t, task)
	require.Equal(t, 3, client.PeerConns(pe.Name))

	// v1 requests close their connection once served (just after the task
	// finished).
	requireDone(t, transfer(t, client, peerOf(server, 1), write(local[:4096], addrOf(remote)))...)
	settles(t, func() bool { return client.PeerConns(pe.Name) == 3 }, "a v1 request's connection is still counted")

	client.ClosePeer(pe.Name)
	require.Zero(t, client.PeerConns(pe.Name), "a closed peer's connections are gone")

	// The peer closing them while idle counts them out too.
	requireDone(t, transfer(t, client, pe, write(local[:4096], addrOf(remote)))...)
	require.Equal(t, 1, client.PeerConns(pe.Name))
	require.NoError(t, server.Close())
	settles(t, func() bool { return client.PeerConns(pe.Name) == 0 }, "connections the peer closed are still counted")
}
