//go:build cgo && linux

package barex

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// oneDev is a host with one device, so that every piece takes it.
var oneDev = hostSpec{devices: "fake_0"}

func withCfg(s hostSpec, cfg Config) hostSpec { s.cfg = cfg; return s }

// TestChannelSetupFailure: when k of the n connects of a setup fail, the
// channels it opened are closed again (none leaks), the work fails with
// the cause, CheckStatus reports the peer, and the next transfer sets up
// all n.
func TestChannelSetupFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{NumQPPerEP: 4}))
	b := c.addHost("b", hostSpec{})
	knob(t, a.t, "fail_connect_skip", 2)
	knob(t, a.t, "fail_connect", 1)
	tasks := a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1000))
	require.Equal(t, transport.Failed, tasks[0].Status())
	require.ErrorIs(t, tasks[0].Err(), ErrChannel)
	require.ErrorIs(t, tasks[0].Err(), CodeConnect)
	require.Contains(t, tasks[0].Err().Error(), "injected connect failure", "the shim's text is kept")
	require.EqualValues(t, 3, counter(t, a.t, "connects"))
	require.Zero(t, counter(t, a.t, "open_chans"), "the two channels that opened were closed")
	require.EqualValues(t, 2, counter(t, a.t, "closes"))
	require.ErrorIs(t, a.t.CheckStatus(b.name), ErrChannel)
	require.ErrorIs(t, a.t.PeerHealth(b.name), transport.ErrPeer)

	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1000)))
	require.EqualValues(t, 4, counter(t, a.t, "open_chans"))
	require.NoError(t, a.t.CheckStatus(b.name))
}

// TestChannelsPerDevice: exactly MC_NUM_QP_PER_EP channels per (peer,
// local device), however many transfers use them; each on the device it
// was opened for.
func TestChannelsPerDevice(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{cfg: Config{NumQPPerEP: 3, RegChunkSize: 16 << 10, RandomDevice: true}})
	b := c.addHost("b", hostSpec{})
	o := c.addHost("o", hostSpec{})
	for range 5 {
		requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1<<20)))
		requireDone(t, a.transfer(t, context.Background(), o, read(a.addr(0), o.addr(0), 1<<20)))
	}
	require.EqualValues(t, 12, counter(t, a.t, "open_chans"), "2 peers x 2 devices x 3")
	require.EqualValues(t, 12, counter(t, a.t, "connects"), "no channel was added by later transfers")
	for _, peer := range []string{"b", "o"} {
		for dev := range 2 {
			hs := a.channels(t, peer, dev)
			require.Len(t, hs, 3)
		}
	}
	a.t.peersMu.RLock()
	p := a.t.peers["b"]
	a.t.peersMu.RUnlock()
	for _, s := range p.channelSets() {
		s.mu.Lock()
		for _, ch := range s.chans {
			require.Equal(t, s.dev.nic, ch.localNIC)
		}
		s.mu.Unlock()
	}
}

// TestRoundRobin: n pieces go over q = min(channels, n) channels, n/q
// consecutive pieces each and the remainder on the last, and each Submit
// starts one channel further than the last ended.
func TestRoundRobin(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{NumQPPerEP: 3}))
	b := c.addHost("b", hostSpec{})
	for i := range 3 {
		requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(i), b.addr(i), 100)))
	}
	hs := a.channels(t, "b", 0)
	require.Len(t, hs, 3)
	elems := func() []int64 {
		var out []int64
		for _, h := range hs {
			out = append(out, knob(t, a.t, "chan_elems", int64(h)))
		}
		return out
	}
	require.Equal(t, []int64{1, 1, 1}, elems(), "three single pieces, three channels")

	var reqs []transport.Request
	for i := range 7 {
		reqs = append(reqs, write(a.addr(1000*i), b.addr(1000*i), 100))
	}
	requireDone(t, a.transfer(t, context.Background(), b, reqs...))
	require.Equal(t, []int64{3, 3, 4}, elems(), "7 pieces: 2, 2 and 3")

	requireDone(t, a.transfer(t, context.Background(), b, reqs[:2]...))
	require.Equal(t, []int64{4, 4, 4}, elems(), "2 pieces on the next two channels")
	var posts []int64
	for _, h := range hs {
		posts = append(posts, knob(t, a.t, "chan_posts", int64(h)))
	}
	require.Equal(t, []int64{3, 3, 2}, posts, "one batch per channel and Submit")
}

// TestPeerNICKeys: a piece carries the remote key of the peer NIC its
// channel reached (dest_rkeys[peer_nic]). The fake checks the key against
// that NIC's registration, so a descriptor with the keys swapped fails.
func TestPeerNICKeys(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{NumQPPerEP: 2}))
	b := c.addHost("b", hostSpec{devices: "fake_0,fake_1"})
	fill(a.mem, 5)
	requireDone(t, a.transfer(t, context.Background(), b,
		write(a.addr(0), b.addr(0), 1000), write(a.addr(1000), b.addr(1000), 1000)))
	requireEqualBytes(t, a.mem[:2000], b.mem[:2000])

	a.t.peersMu.RLock()
	s := a.t.peers["b"].channelSets()[0]
	a.t.peersMu.RUnlock()
	s.mu.Lock()
	nics := []int{s.chans[0].peerNIC, s.chans[1].peerNIC}
	s.mu.Unlock()
	slices.Sort(nics)
	require.Equal(t, []int{0, 1}, nics, "barex spread the channels over the peer's nics")

	swapped := b.desc().Clone()
	for i := range swapped.Buffers {
		r := swapped.Buffers[i].RKey
		r[0], r[1] = r[1], r[0]
	}
	tasks, g := a.submitDesc(context.Background(), b, swapped,
		write(a.addr(0), b.addr(0), 1000), write(a.addr(1000), b.addr(1000), 1000))
	wait(t, g)
	for _, task := range tasks {
		require.ErrorIs(t, task.Err(), CodeAccess)
	}
}

// TestCallbackFailure: a batch whose completion reports an error fails
// exactly its pieces; the other batches complete.
func TestCallbackFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{NumQPPerEP: 2}))
	b := c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))
	knob(t, a.t, "fail_batch", 1)
	tasks := a.transfer(t, context.Background(), b,
		write(a.addr(0), b.addr(0), 100), write(a.addr(100), b.addr(100), 100),
		read(a.addr(200), b.addr(200), 100), read(a.addr(300), b.addr(300), 100))
	var failed []int
	for i, task := range tasks {
		if task.Status() == transport.Failed {
			failed = append(failed, i)
			require.ErrorIs(t, task.Err(), CodeIO)
			var se *SliceError
			require.ErrorAs(t, task.Err(), &se)
			require.Equal(t, "b", se.Peer)
			require.Equal(t, "fake_0", se.Device)
		} else {
			require.Equal(t, transport.Completed, task.Status())
		}
	}
	// The first batch posted fails: the two writes, which share a channel
	// (the reads share the other).
	require.Equal(t, []int{0, 1}, failed)
}

// TestPartialPostFailure: a post the shim refuses fails exactly the pieces
// of that batch; every task ends (Mooncake B6 left them unmarked).
func TestPartialPostFailure(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{NumQPPerEP: 2, RegChunkSize: 64 << 10}))
	b := c.addHost("b", withCfg(hostSpec{}, Config{RegChunkSize: 64 << 10}))
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))
	knob(t, a.t, "fail_post", 1)
	// One task of 4 pieces: 2 per channel, one batch each.
	tasks := a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 256<<10))
	require.Equal(t, transport.Failed, tasks[0].Status())
	require.ErrorIs(t, tasks[0].Err(), CodeIO)
	require.Contains(t, tasks[0].Err().Error(), "injected post failure")
	require.EqualValues(t, 128<<10, tasks[0].Transferred(), "the other batch moved its bytes")
	require.Zero(t, a.t.batches.Live())
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 256<<10)))
}

// TestCheckStatusAndReplacement: CheckStatus is an error iff a device has
// fewer healthy channels than MC_NUM_QP_PER_EP and none is being set up; a
// channel that went inactive is closed and replaced by the next Submit,
// and data keeps flowing.
func TestCheckStatusAndReplacement(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{NumQPPerEP: 2}))
	b := c.addHost("b", hostSpec{})
	require.NoError(t, a.t.CheckStatus(b.name), "a peer without channels is healthy")
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))
	require.NoError(t, a.t.CheckStatus(b.name))

	hs := a.channels(t, "b", 0)
	require.EqualValues(t, 1, knob(t, a.t, "deactivate", int64(hs[0])))
	require.ErrorIs(t, a.t.CheckStatus(b.name), ErrChannel)
	require.ErrorIs(t, a.t.PeerHealth(b.name), transport.ErrPeer)

	fill(a.mem[:4096], 8)
	for i := range 4 {
		requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(i), 4096)))
		requireEqualBytes(t, a.mem[:4096], b.mem[i:i+4096])
	}
	eventually(t, func() bool { return len(a.channels(t, "b", 0)) == 2 }, "the inactive channel was replaced")
	now := a.channels(t, "b", 0)
	require.NotContains(t, now, hs[0])
	require.Contains(t, now, hs[1])
	require.NoError(t, a.t.CheckStatus(b.name))
	eventually(t, func() bool { return counter(t, a.t, "closes") == 1 }, "the inactive channel was closed")
	require.EqualValues(t, 2, counter(t, a.t, "open_chans"))
	require.Equal(t, 1, c.handshakeCount(b.name), "the port is kept across a replacement")
}

// TestClosePeer: recovery closes the old channels at once, forgets the
// port, and the next transfer exchanges ports and connects again. Work in
// flight on a closed channel still ends as barex reports it.
func TestClosePeer(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{DrainTimeout: 100 * time.Millisecond}))
	b := c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1<<20)))
	require.EqualValues(t, 2, counter(t, a.t, "open_chans"))

	knob(t, a.t, "hold", 1)
	held, g := a.submit(context.Background(), b, write(a.addr(0), b.addr(0), 100))
	a.t.ClosePeer(b.name)
	require.Zero(t, counter(t, a.t, "open_chans"), "every channel to the peer is closed")
	knob(t, a.t, "hold", 0)
	wait(t, g)
	require.Equal(t, transport.Failed, held[0].Status(), "the batch's channel went away under it")
	require.ErrorIs(t, held[0].Err(), CodeIO)

	a.t.ClosePeer(b.name) // idempotent
	require.Equal(t, 1, c.handshakeCount(b.name))
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1<<20)))
	require.Equal(t, 2, c.handshakeCount(b.name), "the port was exchanged again")
	require.NoError(t, a.t.CheckStatus(b.name))
}

// TestPeerRestart: the peer dies; its channels go inactive and transfers
// fail without hanging; CheckStatus reports it; after ClosePeer (what the
// engine's recovery does) a new incarnation on another port is reached.
func TestPeerRestart(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{})
	b := c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1<<20)))
	desc := b.desc()
	c.mu.Lock()
	delete(c.hosts, "b")
	c.mu.Unlock()
	b.shutdown(t)

	tasks, g := a.submitDesc(context.Background(), b, desc, write(a.addr(0), desc.Buffers[0].Addr, 1<<20))
	wait(t, g)
	require.Equal(t, transport.Failed, tasks[0].Status())
	require.ErrorIs(t, a.t.CheckStatus("b"), ErrChannel)

	b2 := c.addHost("b", hostSpec{})
	a.t.ClosePeer("b")
	fill(a.mem, 6)
	requireDone(t, a.transfer(t, context.Background(), b2, write(a.addr(0), b2.addr(0), 1<<20)))
	requireEqualBytes(t, a.mem, b2.mem)
	require.NoError(t, a.t.CheckStatus("b"))
}

// TestConcurrentPeersOwnPorts: channel setups to two peers at once each
// use that peer's own barex port (Mooncake kept one port for all, B1).
func TestConcurrentPeersOwnPorts(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{})
	b := c.addHost("b", hostSpec{})
	o := c.addHost("o", hostSpec{})
	// Both exchanges are in flight before either returns.
	var arrived sync.WaitGroup
	arrived.Add(2)
	c.hook = func(from, to string) error {
		arrived.Done()
		arrived.Wait()
		return nil
	}
	fill(a.mem, 7)
	var wg sync.WaitGroup
	for _, target := range []*host{b, o} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tasks, g := a.submit(context.Background(), target, write(a.addr(0), target.addr(0), 1<<20))
			wait(t, g)
			for _, task := range tasks {
				if task.Err() != nil {
					t.Errorf("to %s: %v", target.name, task.Err())
				}
			}
		}()
	}
	wg.Wait()
	requireEqualBytes(t, a.mem, b.mem)
	requireEqualBytes(t, a.mem, o.mem)
	for _, target := range []*host{b, o} {
		a.t.peersMu.RLock()
		p := a.t.peers[target.name]
		a.t.peersMu.RUnlock()
		p.mu.Lock()
		require.Equal(t, target.t.Port(), p.port)
		p.mu.Unlock()
	}
	require.NotEqual(t, b.t.Port(), o.t.Port())
}

// TestMisplacedChannel: a channel barex put on another device than asked
// is closed and the setup fails (Mooncake trusted the placement, B4).
func TestMisplacedChannel(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{topo: `{"cpu:0":[["fake_0"],[]]}`})
	b := c.addHost("b", hostSpec{})
	knob(t, a.t, "misplace", 1)
	tasks := a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10))
	require.ErrorIs(t, tasks[0].Err(), ErrChannel)
	require.Contains(t, tasks[0].Err().Error(), "placed the channel on nic 1, not 0")
	require.Zero(t, counter(t, a.t, "open_chans"))
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))
}

// TestDeadlines: a connect slower than ConnectTimeout fails as a deadline;
// a Submit whose context ends while its pieces wait for a channel fails
// them at once with the context's error.
func TestDeadlines(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{cfg: Config{ConnectTimeout: 50 * time.Millisecond}})
	b := c.addHost("b", hostSpec{})
	knob(t, a.t, "connect_delay_ms", 5000)
	start := time.Now()
	tasks := a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10))
	require.ErrorIs(t, tasks[0].Err(), context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second)

	knob(t, a.t, "connect_delay_ms", 20)
	ctx, cancel := context.WithCancel(context.Background())
	tasks, g := a.submit(ctx, b, write(a.addr(0), b.addr(0), 10))
	cancel()
	wait(t, g)
	require.ErrorIs(t, tasks[0].Err(), context.Canceled)
	knob(t, a.t, "connect_delay_ms", 0)
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))
}

// TestEICNICs: EIC NICs ("soe", "solar") are the only ones used when
// present, and are what barex is told to use, unless the user set
// ACCL_USE_NICS, which is then used as is.
func TestEICNICs(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	tests := []struct {
		name    string
		devices string
		cfg     Config
		want    []string
	}{
		{name: "eic present", devices: "mlx5_0,soe_0,solar_1", want: []string{"soe_0", "solar_1"}},
		{name: "user's list kept", devices: "mlx5_0,soe_0,solar_1", cfg: Config{UseNICs: "solar_1", UseNICsSet: true},
			want: []string{"solar_1"}},
		{name: "user's list wins over eic", devices: "mlx5_0,soe_0", cfg: Config{UseNICs: "mlx5_0", UseNICsSet: true},
			want: []string{"mlx5_0"}},
		{name: "no eic", devices: "mlx5_0,mlx5_1", want: []string{"mlx5_0", "mlx5_1"}},
		{name: "a device whose contexts failed is left out", devices: "mlx5_0:down,mlx5_1", want: []string{"mlx5_1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			h := c.addHost("h", hostSpec{devices: tc.devices, cfg: tc.cfg})
			require.Equal(t, tc.want, h.t.Topology().HCANames())
			var names []string
			for _, d := range h.desc().Devices {
				names = append(names, d.Name)
			}
			require.Equal(t, tc.want, names)
		})
	}
}

// TestPort: the barex port comes from [ACCL_MIN_PORT, ACCL_MAX_PORT] and
// stays bound by the transport from the start (no probe-then-bind race).
func TestPort(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	h := c.addHost("h", hostSpec{})
	require.GreaterOrEqual(t, h.t.Port(), 17000)
	require.LessOrEqual(t, h.t.Port(), 35000)

	ln, err := net.Listen("tcp", ":0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	one := c.addHost("one", hostSpec{cfg: Config{MinPort: port, MaxPort: port}})
	require.Equal(t, port, one.t.Port())
	_, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
	require.ErrorIs(t, err, syscall.EADDRINUSE, "the port is held")
	tr, err := c.newTransport("two", hostSpec{cfg: Config{MinPort: port, MaxPort: port}})
	require.Nil(t, tr)
	require.ErrorIs(t, err, CodeAddrInUse)
}

// TestOnConnection: the reply carries this engine's barex_port; an RDMA
// engine's request and any request after Close are refused.
func TestOnConnection(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	h := c.addHost("h", hostSpec{})
	port := 1234
	reply := h.t.OnConnection(context.Background(), handshake.HandShakeDesc{LocalNICPath: "p", PeerNICPath: "h", BarexPort: &port})
	require.Empty(t, reply.ReplyMsg)
	require.NotNil(t, reply.BarexPort)
	require.Equal(t, h.t.Port(), *reply.BarexPort)
	require.Equal(t, "p", reply.PeerNICPath)

	reply = h.t.OnConnection(context.Background(), handshake.HandShakeDesc{LocalNICPath: "p@mlx5_0", PeerNICPath: "h@mlx5_0", QPNum: []uint32{7, 8}})
	require.NotEmpty(t, reply.ReplyMsg)
	require.Nil(t, reply.BarexPort)

	h.shutdown(t)
	reply = h.t.OnConnection(context.Background(), handshake.HandShakeDesc{BarexPort: &port})
	require.NotEmpty(t, reply.ReplyMsg)
}

// TestHandshakeFailures: a failed, refused or port-less exchange fails the
// work with ErrHandshake and is tried again by the next transfer.
func TestHandshakeFailures(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{})
	b := c.addHost("b", hostSpec{})
	zero, big := 0, 70000
	tests := []struct {
		name  string
		reply handshake.HandShakeDesc
		err   error
	}{
		{name: "rpc fails", err: errors.New("connection refused")},
		{name: "refused", reply: handshake.HandShakeDesc{ReplyMsg: "no"}},
		{name: "no barex_port (not a barex engine)", reply: handshake.HandShakeDesc{}},
		{name: "port 0", reply: handshake.HandShakeDesc{BarexPort: &zero}},
		{name: "port out of range", reply: handshake.HandShakeDesc{BarexPort: &big}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a.t.deps.Handshake = func(context.Context, string, handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
				return tc.reply, tc.err
			}
			tasks := a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10))
			require.ErrorIs(t, tasks[0].Err(), ErrHandshake)
			require.ErrorIs(t, a.t.CheckStatus(b.name), ErrChannel)
		})
	}
	a.t.deps.Handshake = c.handshake("a")
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))

	// A transfer to this engine's own segment needs no exchange.
	fill(a.mem[:100], 1)
	requireDone(t, a.transfer(t, context.Background(), a, write(a.addr(0), a.addr(4096), 100)))
	requireEqualBytes(t, a.mem[:100], a.mem[4096:4196])
}

// TestTeardownWithPendingCallbacks: Close with batches whose callbacks
// never come (the fake holds them) closes every channel before the engine
// (§5.9), gives up after DrainTimeout, fails the work with ErrClosed, and
// leaves the remaining registrations to the shim to release after its
// callbacks stopped.
func TestTeardownWithPendingCallbacks(t *testing.T) {
	testutil.ResourceCheck(t)
	requireFake(t)
	chans, mrs := global(t, "chans_at_close"), global(t, "mrs_at_close")
	c := newCluster(t)
	a := c.addHost("a", withCfg(oneDev, Config{DrainTimeout: 100 * time.Millisecond}))
	b := c.addHost("b", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 10)))
	knob(t, a.t, "hold", 1)
	tasks, g := a.submit(context.Background(), b, write(a.addr(0), b.addr(0), 1<<20), read(a.addr(0), b.addr(0), 100))
	start := time.Now()
	a.shutdown(t)
	require.Less(t, time.Since(start), 2*time.Second)
	wait(t, g)
	for _, task := range tasks {
		require.Equal(t, transport.Failed, task.Status())
		require.ErrorIs(t, task.Err(), ErrClosed)
		require.NotErrorIs(t, task.Err(), transport.ErrPeer, "closing is not a peer failure")
	}
	require.Equal(t, chans, global(t, "chans_at_close"), "every channel was closed before the engine")
	require.Equal(t, mrs+1, global(t, "mrs_at_close"), "the shim released the one registration in use")
}

// TestStartStopUnderLoad: engines start and stop while transfers run in
// both directions; every task ends (completed, or failed because an end
// closed), nothing leaks (goroutines, fds, channels, registrations, shim
// engines), and a fresh engine under the same name carries on.
func TestStartStopUnderLoad(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	b := c.addHost("b", hostSpec{cfg: Config{RegChunkSize: 64 << 10}})
	for round := range 3 {
		a := c.addHost(fmt.Sprintf("a%d", round), hostSpec{cfg: Config{RegChunkSize: 48 << 10, NumQPPerEP: 3}})
		var (
			wg       sync.WaitGroup
			done     = make(chan struct{})
			progress = make(chan struct{}, 1024)
		)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-done:
						return
					default:
					}
					off := (w*256 + i%64) << 10
					req := write(a.addr(off), b.addr(off), 200<<10)
					if i%2 == 1 {
						req = read(a.addr(off), b.addr(off), 200<<10)
					}
					tasks, g := a.submit(context.Background(), b, req)
					if err := g.Wait(context.Background()); err != nil {
						t.Errorf("wait: %v", err)
						return
					}
					switch st := tasks[0].Status(); {
					case st == transport.Completed:
						select {
						case progress <- struct{}{}:
						default:
						}
					case st == transport.Failed && errors.Is(tasks[0].Err(), ErrClosed):
						return
					default:
						t.Errorf("task %v: %v", st, tasks[0].Err())
						return
					}
				}
			}()
		}
		// Let some transfers complete, then close the initiator under load.
		timeout := time.After(10 * time.Second)
		for range 20 {
			select {
			case <-progress:
			case <-timeout:
				t.Fatal("no progress under load")
			}
		}
		a.shutdown(t)
		close(done)
		wg.Wait()
		c.mu.Lock()
		delete(c.hosts, a.name)
		c.mu.Unlock()
	}
	// The target stops under load too: transfers fail, none hangs.
	a := c.addHost("last", hostSpec{})
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 1<<20)))
	desc := b.desc()
	tasks, g := a.submitDesc(context.Background(), b, desc, write(a.addr(0), desc.Buffers[0].Addr, 1<<20))
	b.shutdown(t)
	wait(t, g)
	require.Contains(t, []transport.Status{transport.Completed, transport.Failed}, tasks[0].Status())
}

// TestLargeShare: a channel's share longer than maxBatch elements is
// posted as several batches, and every byte arrives.
func TestLargeShare(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	c := newCluster(t)
	a := c.addHost("a", hostSpec{devices: "fake_0", mem: 4 << 20, cfg: Config{NumQPPerEP: 1, RegChunkSize: 4096}})
	b := c.addHost("b", hostSpec{mem: 4 << 20, cfg: Config{RegChunkSize: 4096}})
	fill(a.mem, 12)
	requireDone(t, a.transfer(t, context.Background(), b, write(a.addr(0), b.addr(0), 2*maxBatch*4096+100)))
	requireEqualBytes(t, a.mem[:2*maxBatch*4096+100], b.mem[:2*maxBatch*4096+100])
	hs := a.channels(t, "b", 0)
	require.Len(t, hs, 1)
	require.EqualValues(t, 3, knob(t, a.t, "chan_posts", int64(hs[0])), "513 pieces: 256 + 256 + 1")
	require.EqualValues(t, 2*maxBatch+1, knob(t, a.t, "chan_elems", int64(hs[0])))
}
