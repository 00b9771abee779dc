package segment

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// InstanceKey is the descriptor key under which a pymooncake engine
// publishes a random id of its process incarnation. Mooncake's decoder
// ignores unknown keys, so Mooncake peers are unaffected; peers without the
// key are still opened and recovered, only without this extra certainty.
const InstanceKey = "pymooncake_instance"

// NewInstanceID returns a random incarnation id.
func NewInstanceID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// InstanceOf returns the incarnation id a descriptor carries, or "".
func InstanceOf(d *metadata.SegmentDesc) string {
	var id string
	if raw, ok := d.Extra[InstanceKey]; ok && json.Unmarshal(raw, &id) != nil {
		return ""
	}
	return id
}

// SameIncarnation reports whether two segments fetched for one name
// describe the same process: by instance id when they carry one, else by
// data endpoint and buffers (a Mooncake peer that restarted re-registers
// its memory, usually elsewhere).
func SameIncarnation(a, b *Segment) bool {
	ia, ib := InstanceOf(a.Desc()), InstanceOf(b.Desc())
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
