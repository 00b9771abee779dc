//go:build rdma_hw

package rdma

// The hardware suite: the same loopback and two-engine transfers as the
// fake-fabric tests, on real NICs through the real libibverbs. Opt in with
//
//	PYMOONCAKE_RDMA_DEVICES=mlx5_0[,mlx5_1...] go test -tags rdma_hw -run HW ./core/transport/rdma/
//
// (PYMOONCAKE_RDMA_GID_INDEX picks a GID index on RoCE hosts where the
// automatic choice is wrong). With the tag, a device that is named but
// unusable fails the suite; nothing is skipped.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/pymooncake/pymooncake/core/handshake"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/ibv"
)

type hwNet struct {
	mu    sync.Mutex
	hosts map[string]*host
}

func hwConfig(t *testing.T) (Config, []string) {
	devs := os.Getenv("PYMOONCAKE_RDMA_DEVICES")
	if devs == "" {
		t.Fatal("the rdma_hw suite needs PYMOONCAKE_RDMA_DEVICES naming this host's RDMA devices")
	}
	var cfg Config
	if s := os.Getenv("PYMOONCAKE_RDMA_GID_INDEX"); s != "" {
		i, err := strconv.Atoi(s)
		require.NoError(t, err, "PYMOONCAKE_RDMA_GID_INDEX")
		cfg.GIDIndex, cfg.GIDIndexSet = i, true
	}
	return cfg, strings.Split(devs, ",")
}

func (n *hwNet) add(t *testing.T, name string, size int) *host {
	cfg, devs := hwConfig(t)
	topo, err := topology.Discover(os.DirFS("/"), nil, devs)
	require.NoError(t, err)
	require.Len(t, topo.HCAs, len(devs), "named devices not usable: skipped %+v", topo.Skipped)
	p, err := ibv.Open()
	require.NoError(t, err)
	tr, err := New(context.Background(), cfg, Deps{
		Provider: p, LocalName: name, Topology: topo, Logger: zaptest.NewLogger(t),
		Handshake: func(ctx context.Context, peer string, req handshake.HandShakeDesc) (handshake.HandShakeDesc, error) {
			n.mu.Lock()
			h, ok := n.hosts[peer]
			n.mu.Unlock()
			if !ok {
				return handshake.HandShakeDesc{}, fmt.Errorf("no peer %q", peer)
			}
			return h.t.OnConnection(ctx, req), nil
		},
		PeerDesc: func(ctx context.Context, peer string) (*metadata.SegmentDesc, error) {
			n.mu.Lock()
			h, ok := n.hosts[peer]
			n.mu.Unlock()
			if !ok {
				return nil, metadata.ErrNotFound
			}
			return h.desc(t), nil
		},
	})
	require.NoError(t, err)
	h := &host{name: name, t: tr}
	h.mem, err = syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	require.NoError(t, err)
	for i := range h.mem {
		h.mem[i] = 0 // fault every page in: "*" then resolves to its NUMA node
	}
	require.NoError(t, tr.RegisterMemory(h.addr(0), uint64(size), "*"))
	n.mu.Lock()
	n.hosts[name] = h
	n.mu.Unlock()
	t.Cleanup(func() { h.close(t) })
	return h
}

func TestHWLoopback(t *testing.T) {
	testutil.ResourceCheck(t)
	n := &hwNet{hosts: map[string]*host{}}
	a := n.add(t, "hw-a", 2*xferSize)
	for i := range 200 {
		fill(a.mem[:xferSize], uint64(i))
		requireDone(t, a.transfer(t, context.Background(), a, transport.Request{
			Opcode: transport.Write, Local: uintptr(a.addr(0)), Remote: a.addr(xferSize), Length: xferSize}))
		requireEqualBytes(t, a.mem[:xferSize], a.mem[xferSize:])
	}
}

func TestHWTwoEngines(t *testing.T) {
	testutil.ResourceCheck(t)
	n := &hwNet{hosts: map[string]*host{}}
	a, b := n.add(t, "hw-a", 2*xferSize), n.add(t, "hw-b", 2*xferSize)
	start := time.Now()
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
	t.Logf("20 transfers of %d bytes in %v", xferSize, time.Since(start))
}
