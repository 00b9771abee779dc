package cudaipc

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/pymooncake/pymooncake/core/gpu"
	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport/internal/hostid"
)

// Key is the descriptor key under which an engine publishes its CUDA IPC
// endpoint. Mooncake ignores unknown keys; Mooncake peers never publish
// it, so they never match.
const Key = "pymooncake_cuda_ipc"

// socketPrefix starts every endpoint's abstract socket name: the only
// sockets this transport dials.
const socketPrefix = "@pymooncake-cudaipc-"

// maxPublished bounds what a peer's endpoint may list.
const maxPublished = 1 << 16

// published is the value of Key.
type published struct {
	Version int    `json:"v"`
	Socket  string `json:"socket"`
	hostid.Identity
	// GPUs are the UUIDs of the engine's devices, by ordinal.
	GPUs []string `json:"gpus"`
	// Buffers are the engine's registered GPU buffers: address, length and
	// index into GPUs.
	Buffers [][3]uint64 `json:"buffers"`
}

var errNoEndpoint = errors.New("publishes no CUDA IPC endpoint")

// gspan is one published GPU buffer of a peer.
type gspan struct {
	start, end uint64
	// ord is the device holding it as this process numbers it, or -1 when
	// this process does not see that GPU.
	ord int
}

// peerInfo is a peer's endpoint as decoded from one descriptor.
type peerInfo struct {
	desc  *metadata.SegmentDesc
	pub   published
	spans []gspan // sorted by start, no overlaps
}

// decodeEndpoint reads a peer's endpoint from its descriptor, mapping its
// GPUs to this process's ordinals through local (UUID → ordinal). Peer
// input: anything malformed is an error.
func decodeEndpoint(d *metadata.SegmentDesc, local map[gpu.UUID]int) (*peerInfo, error) {
	raw, ok := d.Extra[Key]
	if !ok {
		return nil, errNoEndpoint
	}
	var pub published
	if err := json.Unmarshal(raw, &pub); err != nil {
		return nil, fmt.Errorf("%s: %w", Key, err)
	}
	if pub.Version != 1 {
		return nil, fmt.Errorf("%s: version %d (this engine speaks 1)", Key, pub.Version)
	}
	if !strings.HasPrefix(pub.Socket, socketPrefix) || len(pub.Socket) > 108 {
		return nil, fmt.Errorf("%s: socket %q is not a pymooncake endpoint", Key, pub.Socket)
	}
	if len(pub.GPUs) > maxPublished || len(pub.Buffers) > maxPublished {
		return nil, fmt.Errorf("%s: %d GPUs and %d buffers: too many", Key, len(pub.GPUs), len(pub.Buffers))
	}
	ords := make([]int, len(pub.GPUs))
	for i, s := range pub.GPUs {
		u, err := gpu.ParseUUID(s)
		if err != nil {
			return nil, fmt.Errorf("%s: gpu %d: %w", Key, i, err)
		}
		ords[i] = -1
		if o, ok := local[u]; ok {
			ords[i] = o
		}
	}
	pi := &peerInfo{desc: d, pub: pub, spans: make([]gspan, 0, len(pub.Buffers))}
	for i, b := range pub.Buffers {
		addr, n, g := b[0], b[1], b[2]
		if n == 0 || addr+n < addr || g >= uint64(len(ords)) {
			return nil, fmt.Errorf("%s: buffer %d [%#x, +%d) on gpu %d: malformed", Key, i, addr, n, g)
		}
		pi.spans = append(pi.spans, gspan{start: addr, end: addr + n, ord: ords[g]})
	}
	slices.SortFunc(pi.spans, func(a, b gspan) int { return cmp.Compare(a.start, b.start) })
	for i := 1; i < len(pi.spans); i++ {
		if pi.spans[i].start < pi.spans[i-1].end {
			return nil, fmt.Errorf("%s: buffers [%#x, %#x) and [%#x, %#x) overlap", Key,
				pi.spans[i-1].start, pi.spans[i-1].end, pi.spans[i].start, pi.spans[i].end)
		}
	}
	return pi, nil
}

// reachable reports whether [addr, addr+n) lies in published GPU buffers
// (touching ones count as one range) on devices this process sees, and
// returns the start of the buffer holding addr.
func (pi *peerInfo) reachable(addr, n uint64) (uint64, bool) {
	if n == 0 || addr+n < addr {
		return 0, false
	}
	i, found := slices.BinarySearchFunc(pi.spans, addr, func(s gspan, a uint64) int { return cmp.Compare(s.start, a) })
	if !found {
		i--
	}
	if i < 0 || addr >= pi.spans[i].end {
		return 0, false
	}
	first := pi.spans[i].start
	end := addr + n
	for ; i < len(pi.spans); i++ {
		s := pi.spans[i]
		if s.ord < 0 {
			return 0, false
		}
		if end <= s.end {
			return first, true
		}
		if i+1 == len(pi.spans) || pi.spans[i+1].start != s.end {
			return 0, false
		}
	}
	return 0, false
}

// visible reports whether any published GPU buffer is on a device this
// process sees.
func (pi *peerInfo) visible() bool {
	return slices.ContainsFunc(pi.spans, func(s gspan) bool { return s.ord >= 0 })
}
