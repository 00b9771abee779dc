package metadata

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
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

// Instance returns the incarnation id the descriptor carries, or "".
func (d *SegmentDesc) Instance() string {
	var id string
	if raw, ok := d.Extra[InstanceKey]; ok && json.Unmarshal(raw, &id) != nil {
		return ""
	}
	return id
}
