package segment

import (
	"slices"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// SameIncarnation reports whether two segments fetched for one name
// describe the same process: by instance id when they carry one, else by
// data endpoint and buffers (a Mooncake peer that restarted re-registers
// its memory, usually elsewhere).
func SameIncarnation(a, b *Segment) bool {
	ia, ib := a.Desc().Instance(), b.Desc().Instance()
	if ia != ib {
		return false
	}
	if ia != "" {
		return true
	}
	da, db := a.Desc(), b.Desc()
	return a.Peer.Name == b.Peer.Name && a.Peer.Host == b.Peer.Host && da.TCPDataPort == db.TCPDataPort &&
		slices.EqualFunc(da.Buffers, db.Buffers, func(x, y metadata.BufferDesc) bool {
			return x.Addr == y.Addr && x.Length == y.Length
		})
}
