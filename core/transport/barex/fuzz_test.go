package barex

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/internal/submit"
)

// fuzzTransport is a Transport with local memory [1<<20, +1 MiB) in 64 KiB
// chunks and no shim: enough to route and cut.
func fuzzTransport(tb testing.TB) *Transport {
	topo, err := topology.Parse([]byte(`{"cpu:0":[["fake_0"],[]]}`))
	require.NoError(tb, err)
	cfg, err := Config{RegChunkSize: 64 << 10}.withDefaults()
	require.NoError(tb, err)
	t := &Transport{cfg: cfg, topo: topo, local: topo.Resolved(), keySlots: 1,
		devs: []device{{index: 0, name: "fake_0", nic: 0}}}
	keys := uint32(0)
	_, err = t.mem.Register(1<<20, 1<<20, cfg.RegChunkSize, "cpu:0", func(c *chunk) error {
		c.LKeys, c.RKeys = []uint32{keys}, []uint32{keys + 1}
		keys += 2
		return nil
	}, func([]*chunk) error { return nil })
	require.NoError(tb, err)
	return t
}

// FuzzPeerDescriptor: a peer's descriptor is peer input. Whatever it
// holds (overlapping, empty, keyless or wrapping buffers), routing and
// cutting against it never panics, and every piece lies inside one local
// chunk and one remote buffer the descriptor published.
func FuzzPeerDescriptor(f *testing.F) {
	seed := func(d *metadata.SegmentDesc, remote uint64, length uint32) []byte {
		raw, err := d.Marshal(false)
		require.NoError(f, err)
		var b []byte
		b = binary.LittleEndian.AppendUint64(b, remote)
		b = binary.LittleEndian.AppendUint32(b, length)
		return append(b, raw...)
	}
	good := &metadata.SegmentDesc{Name: "p", Protocol: Protocol, TCPProtoVersion: 1,
		Devices: []metadata.DeviceDesc{{Name: "fake_0", GID: "ignore"}},
		Buffers: []metadata.BufferDesc{
			{Name: "cpu:0", Addr: 1 << 30, Length: 40 << 10, RKey: []uint32{1, 2}, LKey: []uint32{1, 2}},
			{Name: "cpu:0", Addr: 1<<30 + 40<<10, Length: 40 << 10, RKey: []uint32{3, 4}, LKey: []uint32{3, 4}},
		}}
	f.Add(seed(good, 1<<30+100, 70_000))
	overlap := good.Clone()
	overlap.Buffers[1].Addr = 1<<30 + 10
	f.Add(seed(overlap, 1<<30, 50_000))
	keyless := good.Clone()
	keyless.Buffers[1].RKey, keyless.Buffers[1].LKey = nil, nil
	f.Add(seed(keyless, 1<<30, 50_000))
	f.Add(seed(good, ^uint64(0)-50, 20))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 12 {
			return
		}
		remote := binary.LittleEndian.Uint64(data)
		length := uint64(binary.LittleEndian.Uint32(data[8:])) % (1 << 20)
		d, err := metadata.DecodeSegmentDesc(data[12:])
		if err != nil {
			return
		}
		tr := fuzzTransport(t)
		p := &peer{t: tr, name: "p"}
		rt, err := p.routeFor(d)
		if err != nil {
			require.Nil(t, rt)
			return
		}
		task := &transport.Task{}
		task.Init(transport.Request{Opcode: transport.Write, Local: 1<<20 + 123, Remote: remote, Length: length}, nil)
		ps, err := tr.cut(task, rt, submit.NewCall(context.Background()), "p")
		if err != nil {
			require.Nil(t, ps)
			return
		}
		pos := uint64(0)
		for _, pc := range ps {
			require.Equal(t, uint64(task.Local)+pos, pc.local)
			require.Equal(t, remote+pos, pc.remote)
			require.True(t, pc.lchunk.Addr <= pc.local && pc.local+uint64(pc.length) <= pc.lchunk.End())
			require.True(t, pc.rbuf.Addr <= pc.remote && pc.remote+uint64(pc.length) <= pc.rbuf.Addr+pc.rbuf.Length)
			published := false
			for _, b := range d.Buffers {
				if b.Addr <= pc.remote && pc.remote+uint64(pc.length) <= b.Addr+b.Length && b.Addr+b.Length >= b.Addr {
					published = true
				}
			}
			require.True(t, published, "piece [%#x, +%d) is inside a published buffer", pc.remote, pc.length)
			pos += uint64(pc.length)
		}
		require.Equal(t, length, pos)
	})
}
