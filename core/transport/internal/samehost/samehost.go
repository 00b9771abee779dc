package samehost

import (
	"errors"
	"fmt"

	"github.com/pymooncake/pymooncake/core/internal/dl"
)

// ErrUnavailable means that this system cannot tell its identity (no
// /proc): same-host transports do not run.
var ErrUnavailable = dl.ErrUnavailable

// ErrOtherHost matches every reason for which two identities are not one
// host's processes that can share memory.
var ErrOtherHost = errors.New("not a process of this host")

// Identity is what a process publishes so that a peer can tell whether it
// runs on the same host, in the same namespaces.
type Identity struct {
	// BootID is /proc/sys/kernel/random/boot_id: one per host and boot.
	BootID string `json:"boot_id"`
	// NetNS and PidNS name the process's network and pid namespaces, as
	// /proc/self/ns/{net,pid} link to them ("net:[4026531840]").
	NetNS string `json:"net_ns"`
	PidNS string `json:"pid_ns"`
	// PID is the process id in PidNS.
	PID int `json:"pid"`
}

// Check says why peer is not a process this one can share memory with
// directly: another host (boot id), another network namespace (abstract
// Unix sockets are per network namespace), another pid namespace (its pid
// means nothing here), this very process, or a process that is gone. nil
// means that it is a live process of this host in our namespaces. alive
// reports whether a pid names a live process (Alive, or a test's).
func (me Identity) Check(peer Identity, alive func(pid int) bool) error {
	switch {
	case peer.BootID == "" || peer.NetNS == "" || peer.PidNS == "" || peer.PID <= 0:
		return fmt.Errorf("incomplete identity %+v: %w", peer, ErrOtherHost)
	case peer.BootID != me.BootID:
		return fmt.Errorf("boot id %s is not ours (%s): another host: %w", peer.BootID, me.BootID, ErrOtherHost)
	case peer.NetNS != me.NetNS:
		return fmt.Errorf("network namespace %s is not ours (%s): %w", peer.NetNS, me.NetNS, ErrOtherHost)
	case peer.PidNS != me.PidNS:
		return fmt.Errorf("pid namespace %s is not ours (%s): %w", peer.PidNS, me.PidNS, ErrOtherHost)
	case peer.PID == me.PID:
		return fmt.Errorf("pid %d is this process: %w", peer.PID, ErrOtherHost)
	case alive != nil && !alive(peer.PID):
		return fmt.Errorf("pid %d is not a live process here: %w", peer.PID, ErrOtherHost)
	}
	return nil
}
