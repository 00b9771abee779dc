package engine

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport/tcp"
)

// unregister_memory of a region that a peer is writing into waits for that
// write to finish, refuses every later one, and no byte lands after it
// returned (Mooncake returns at once and lets the write go on landing).
func TestUnregisterWaitsForWritesInFlight(t *testing.T) {
	testutil.ResourceCheck(t)
	tgt := newEngine(t, nil)
	const n = 1 << 20
	region := testutil.Mmap(t, n)
	require.NoError(t, tgt.RegisterMemory(addr(region), n, "*"))

	// A peer sends the header and half the body of a 1 MiB write, then
	// waits: the target is serving it.
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(descOf(t, tgt).TCPDataPort)))
	require.NoError(t, err)
	defer c.Close()
	var hb [tcp.HeaderSize]byte
	tcp.Header{Size: n, Addr: uint64(addr(region)), Opcode: tcp.FlagV2 | 1}.Encode(&hb)
	body := bytes.Repeat([]byte{0x5A}, n)
	_, err = c.Write(append(hb[:], body[:n/2]...))
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond) // the server is now reading the body

	done := make(chan error, 1)
	go func() { done <- tgt.UnregisterMemory(addr(region)) }()
	select {
	case err := <-done:
		t.Fatalf("unregister returned (%v) while a write into the region was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	_, err = c.Write(body[n/2:])
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("unregister did not return once the write finished")
	}
	var st [8]byte
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(c, st[:])
	require.NoError(t, err)
	require.Equal(t, tcp.EncodeStatus(tcp.StatusOK), st, "the write in flight completed")
	require.Equal(t, body, region, "all of it landed before unregister returned")

	// The next write into the region is refused, and nothing more lands.
	clear(region)
	_, err = c.Write(append(hb[:], body[:4096]...))
	require.NoError(t, err)
	_, err = io.ReadFull(c, st[:])
	require.NoError(t, err)
	require.Equal(t, tcp.EncodeStatus(tcp.StatusRejected), st)
	require.Equal(t, make([]byte, n), region)
}
