package hostid

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/metadata"
)

func TestLocal(t *testing.T) {
	id, err := Local()
	require.NoError(t, err)
	require.Len(t, id.BootID, 36)
	require.NotZero(t, id.NetNS)
	require.NotZero(t, id.PIDNS)
	require.Equal(t, os.Getpid(), id.PID)
	again, err := Local()
	require.NoError(t, err)
	require.Equal(t, id, again)
	require.NoError(t, id.Reachable(again))
}

// fakeProc builds a /proc with the files Local reads.
func fakeProc(t *testing.T, boot, net, pid string) string {
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "sys/kernel/random"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(root, "self/ns"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "sys/kernel/random/boot_id"), []byte(boot), 0o644))
	require.NoError(t, os.Symlink(net, filepath.Join(root, "self/ns/net")))
	require.NoError(t, os.Symlink(pid, filepath.Join(root, "self/ns/pid")))
	return root
}

func TestLocalFrom(t *testing.T) {
	for _, c := range []struct {
		name, boot, net, pid string
		ok                   bool
	}{
		{"good", "0b4c6d3e-1111-2222-3333-444455556666\n", "net:[4026531840]", "pid:[4026531836]", true},
		{"empty boot id", "\n", "net:[1]", "pid:[2]", false},
		{"long boot id", string(make([]byte, 100)), "net:[1]", "pid:[2]", false},
		{"bad net link", "b", "net:4026531840", "pid:[2]", false},
		{"zero pid ns", "b", "net:[1]", "pid:[0]", false},
		{"not a number", "b", "net:[x]", "pid:[2]", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			id, err := localFrom(fakeProc(t, c.boot, c.net, c.pid))
			if !c.ok {
				require.ErrorIs(t, err, ErrMalformed)
				return
			}
			require.NoError(t, err)
			require.Equal(t, Identity{BootID: "0b4c6d3e-1111-2222-3333-444455556666", NetNS: 4026531840, PIDNS: 4026531836,
				UID: uint32(os.Getuid()), PID: os.Getpid()}, id)
		})
	}
	_, err := localFrom(t.TempDir())
	require.Error(t, err)
}

func TestPublishParse(t *testing.T) {
	id := Identity{BootID: "b", NetNS: 1, PIDNS: 2, UID: 3, PID: 4}
	d := &metadata.SegmentDesc{}
	Publish(d, id)
	got, err := Parse(d)
	require.NoError(t, err)
	require.Equal(t, id, got)

	_, err = Parse(&metadata.SegmentDesc{})
	require.ErrorIs(t, err, ErrNoIdentity)
	for _, raw := range []string{`"x"`, `{}`, `{"boot_id":"b","net_ns":1,"pid_ns":2,"pid":0}`,
		`{"boot_id":"","net_ns":1,"pid_ns":2,"pid":4}`, `{"boot_id":"b","net_ns":0,"pid_ns":2,"pid":4}`, `[1]`} {
		_, err := Parse(&metadata.SegmentDesc{Extra: map[string]json.RawMessage{Key: json.RawMessage(raw)}})
		require.ErrorIs(t, err, ErrMalformed, raw)
	}
}

func TestReachable(t *testing.T) {
	id := Identity{BootID: "b", NetNS: 1, PIDNS: 2, UID: 3, PID: 4}
	for _, c := range []struct {
		name string
		edit func(*Identity)
		ok   bool
	}{
		{"same", func(*Identity) {}, true},
		{"other process, user and pid namespace", func(p *Identity) { p.PID, p.UID, p.PIDNS = 9, 9, 9 }, true},
		{"other boot", func(p *Identity) { p.BootID = "c" }, false},
		{"other network namespace", func(p *Identity) { p.NetNS = 7 }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := id
			c.edit(&p)
			err := id.Reachable(p)
			if c.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrElsewhere)
			}
		})
	}
}

func TestAlive(t *testing.T) {
	require.True(t, Alive(os.Getpid()))
	require.True(t, Alive(os.Getppid()))
	require.False(t, Alive(-1))
	require.False(t, Alive(0))
}

func TestSibling(t *testing.T) {
	me := Identity{BootID: "b", NetNS: 1, PIDNS: 2, UID: 1000, PID: 10}
	alive := func(pid int) bool { return pid == 11 }
	other := func(f func(*Identity)) Identity { p := me; p.PID = 11; f(&p); return p }
	tests := []struct {
		name string
		peer Identity
		want error // nil: a sibling
	}{
		{name: "a live process of this host", peer: other(func(*Identity) {})},
		{name: "another user's", peer: other(func(p *Identity) { p.UID = 0 })},
		{name: "another host", peer: other(func(p *Identity) { p.BootID = "c" }), want: ErrElsewhere},
		{name: "another network namespace", peer: other(func(p *Identity) { p.NetNS = 9 }), want: ErrElsewhere},
		{name: "another pid namespace", peer: other(func(p *Identity) { p.PIDNS = 9 }), want: ErrElsewhere},
		{name: "this process", peer: me, want: ErrElsewhere},
		{name: "gone", peer: other(func(p *Identity) { p.PID = 12 }), want: ErrElsewhere},
		{name: "nothing published", peer: Identity{}, want: ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := me.Sibling(tc.peer, alive)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.want)
		})
	}
}
