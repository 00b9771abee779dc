package hostid

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/pymooncake/pymooncake/core/metadata"
)

// Key is the descriptor key under which an engine publishes its Identity.
const Key = "pymooncake_host"

// maxBootID bounds the boot id a peer may publish (a UUID is 36 bytes).
const maxBootID = 64

var (
	// ErrNoIdentity means a descriptor carries no Identity: a Mooncake
	// peer, or a pymooncake peer with its same-host transports off.
	ErrNoIdentity = errors.New("hostid: the peer publishes no host identity")
	// ErrMalformed means a descriptor's Identity cannot be trusted.
	ErrMalformed = errors.New("hostid: malformed host identity")
	// ErrElsewhere means the peer runs on another host, or in another
	// network namespace of this one: its Unix sockets cannot be reached.
	ErrElsewhere = errors.New("hostid: the peer is not reachable through this host's Unix sockets")
)

// Identity says where an engine runs.
type Identity struct {
	// BootID is the kernel's boot id: equal only on the same host, within
	// one boot.
	BootID string `json:"boot_id"`
	// NetNS and PIDNS are the inodes of the network and PID namespaces.
	NetNS uint64 `json:"net_ns"`
	PIDNS uint64 `json:"pid_ns"`
	// UID is the real user id, PID the process id in its PID namespace.
	UID uint32 `json:"uid"`
	PID int    `json:"pid"`
}

// Local returns this process's Identity, read from /proc. An error means
// /proc is not there to say (a sandbox): same-host paths are then unknown.
func Local() (Identity, error) {
	return localFrom("/proc")
}

func localFrom(proc string) (Identity, error) {
	b, err := os.ReadFile(proc + "/sys/kernel/random/boot_id")
	if err != nil {
		return Identity{}, fmt.Errorf("hostid: boot id: %w", err)
	}
	id := Identity{BootID: strings.TrimSpace(string(b)), UID: uint32(os.Getuid()), PID: os.Getpid()}
	if id.BootID == "" || len(id.BootID) > maxBootID {
		return Identity{}, fmt.Errorf("hostid: boot id %q: %w", id.BootID, ErrMalformed)
	}
	if id.NetNS, err = nsInode(proc + "/self/ns/net"); err != nil {
		return Identity{}, err
	}
	if id.PIDNS, err = nsInode(proc + "/self/ns/pid"); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// nsInode reads a namespace link ("net:[4026531840]") for its inode.
func nsInode(path string) (uint64, error) {
	link, err := os.Readlink(path)
	if err != nil {
		return 0, fmt.Errorf("hostid: namespace: %w", err)
	}
	_, rest, ok := strings.Cut(link, ":[")
	n, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64)
	if !ok || !strings.HasSuffix(rest, "]") || err != nil || n == 0 {
		return 0, fmt.Errorf("hostid: namespace link %s -> %q: %w", path, link, ErrMalformed)
	}
	return n, nil
}

// Publish puts id into d under Key.
func Publish(d *metadata.SegmentDesc, id Identity) {
	b, err := json.Marshal(id)
	if err != nil {
		return // a struct of strings and integers always marshals
	}
	if d.Extra == nil {
		d.Extra = map[string]json.RawMessage{}
	}
	d.Extra[Key] = b
}

// Parse returns the Identity a descriptor publishes: ErrNoIdentity when it
// has none, ErrMalformed when it cannot be trusted.
func Parse(d *metadata.SegmentDesc) (Identity, error) {
	raw, ok := d.Extra[Key]
	if !ok {
		return Identity{}, ErrNoIdentity
	}
	var id Identity
	if err := json.Unmarshal(raw, &id); err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if id.BootID == "" || len(id.BootID) > maxBootID || id.NetNS == 0 || id.PIDNS == 0 || id.PID <= 0 {
		return Identity{}, fmt.Errorf("%w: %s", ErrMalformed, raw)
	}
	return id, nil
}

// Reachable reports whether the engine of identity peer can be reached
// through abstract Unix sockets from the engine of identity id: nil when
// both run in one boot of one host and in one network namespace, else an
// error matching ErrElsewhere that says which differs.
func (id Identity) Reachable(peer Identity) error {
	switch {
	case id.BootID != peer.BootID:
		return fmt.Errorf("another host (boot id %s, ours %s): %w", peer.BootID, id.BootID, ErrElsewhere)
	case id.NetNS != peer.NetNS:
		return fmt.Errorf("another network namespace (%d, ours %d): %w", peer.NetNS, id.NetNS, ErrElsewhere)
	}
	return nil
}

// Sibling reports whether peer is another live process of this host in our
// network and PID namespaces: what CUDA IPC needs, whose endpoints pass
// file descriptors and name processes by pid. nil when it is; else an
// error matching ErrMalformed (an incomplete identity) or ErrElsewhere
// that says why. alive reports whether a pid names a live process (Alive,
// or a test's).
func (id Identity) Sibling(peer Identity, alive func(pid int) bool) error {
	if peer.BootID == "" || peer.NetNS == 0 || peer.PIDNS == 0 || peer.PID <= 0 {
		return fmt.Errorf("incomplete identity %+v: %w", peer, ErrMalformed)
	}
	if err := id.Reachable(peer); err != nil {
		return err
	}
	switch {
	case peer.PIDNS != id.PIDNS:
		return fmt.Errorf("another pid namespace (%d, ours %d): %w", peer.PIDNS, id.PIDNS, ErrElsewhere)
	case peer.PID == id.PID:
		return fmt.Errorf("pid %d is this process: %w", peer.PID, ErrElsewhere)
	case alive != nil && !alive(peer.PID):
		return fmt.Errorf("pid %d is not a live process here: %w", peer.PID, ErrElsewhere)
	}
	return nil
}
