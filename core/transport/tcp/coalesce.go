package tcp

import (
	"cmp"
	"encoding/json"
	"slices"

	"github.com/pymooncake/pymooncake/core/metadata"
	"github.com/pymooncake/pymooncake/core/transport"
)

// Coalescing pays for small blocks, whose headers and acknowledgements
// dominate; large ones already fill the lanes. A carrier stays at most
// maxCoalesced bytes, so big runs still spread across lanes as several
// requests.
const (
	coalesceBelow = 1 << 20 // only blocks smaller than this are merged
	maxCoalesced  = 4 << 20
)

// coalesce returns the tasks to put on the wire for one Submit. Consecutive
// tasks of the same opcode whose local and remote ranges both continue the
// previous one's, within one local registration and one buffer of the
// target, become a single request that carries them (KV blocks are often
// laid out this way, and so is transfer_engine_bench's one-thread layout):
// one header and one acknowledgement instead of one per block. Each task
// keeps its own status and byte count; a failure of the carrier fails every
// task it carries. A batch with no such run is returned as it is, with no
// allocation.
func (p *peer) coalesce(bufs *descInfo, tasks []*transport.Task) []*transport.Task {
	if !anyRun(tasks) {
		return tasks
	}
	wire := make([]*transport.Task, 0, len(tasks))
	for i := 0; i < len(tasks); {
		head := tasks[i]
		j, total := i+1, head.Length
		for j < len(tasks) && total > 0 && head.Length < coalesceBelow && tasks[j].Length < coalesceBelow &&
			total+tasks[j].Length <= maxCoalesced && follows(&tasks[j-1].Request, &tasks[j].Request) {
			total += tasks[j].Length
			j++
		}
		// Shrink the run until both sides lie in one registration: a TCP
		// target checks each request against one buffer.
		for j > i+1 && !(p.t.srv.mem.Contains(uint64(head.Local), total) && bufs.oneBuffer(head.Remote, total)) {
			j--
			total -= tasks[j].Length
		}
		if j == i+1 {
			wire = append(wire, head)
			i++
			continue
		}
		carrier := new(transport.Task)
		carrier.Init(transport.Request{Opcode: head.Opcode, Local: head.Local, Remote: head.Remote, Length: total}, nil)
		carrier.Carry(tasks[i:j])
		wire = append(wire, carrier)
		i = j
	}
	return wire
}

// anyRun reports whether some task continues the one before it.
func anyRun(tasks []*transport.Task) bool {
	for i := 1; i < len(tasks); i++ {
		if follows(&tasks[i-1].Request, &tasks[i].Request) {
			return true
		}
	}
	return false
}

// follows reports whether b continues a on both sides, with data to move.
func follows(a, b *transport.Request) bool {
	return a.Opcode == b.Opcode && a.Length > 0 && b.Length > 0 &&
		uint64(a.Local)+a.Length == uint64(b.Local) && a.Remote+a.Length == b.Remote
}

// descInfo is what Submit needs to know of a peer's descriptor, worked out
// once per descriptor: its buffers sorted by address (for the one-buffer
// check of coalesce), and whether the peer serves the scatter-gather
// framing.
type descInfo struct {
	desc  *metadata.SegmentDesc
	spans []span // sorted by start; buffers may overlap or touch
	sg    bool
}

type span struct{ start, end uint64 }

// describe returns the descInfo of desc, from the peer's cache when desc is
// the descriptor it was built for.
func (p *peer) describe(desc *metadata.SegmentDesc) *descInfo {
	if ix := p.info.Load(); ix != nil && ix.desc == desc {
		return ix
	}
	ix := &descInfo{desc: desc, spans: make([]span, 0, len(desc.Buffers))}
	if raw, ok := desc.Extra[SGKey]; ok {
		var v int
		ix.sg = json.Unmarshal(raw, &v) == nil && v >= SGVersion
	}
	for _, b := range desc.Buffers {
		if b.Addr+b.Length >= b.Addr {
			ix.spans = append(ix.spans, span{b.Addr, b.Addr + b.Length})
		}
	}
	slices.SortFunc(ix.spans, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	p.info.Store(ix)
	return ix
}

// oneBuffer reports whether [addr, addr+size) lies inside the buffer that
// starts nearest at or below addr. Registrations do not overlap, so that is
// the only candidate; should a peer publish overlapping buffers, a missed
// run only goes out uncoalesced.
func (ix *descInfo) oneBuffer(addr, size uint64) bool {
	if addr+size < addr {
		return false
	}
	i, _ := slices.BinarySearchFunc(ix.spans, addr+1, func(s span, a uint64) int { return cmp.Compare(s.start, a) })
	return i > 0 && addr+size <= ix.spans[i-1].end
}
