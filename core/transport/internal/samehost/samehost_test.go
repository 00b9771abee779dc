package samehost

import (
	"errors"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLocal(t *testing.T) {
	me, err := Local()
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("no /proc: %v", err)
	}
	require.NoError(t, err)
	require.Len(t, me.BootID, 36)
	require.Contains(t, me.NetNS, "net:[")
	require.Contains(t, me.PidNS, "pid:[")
	require.Equal(t, os.Getpid(), me.PID)
	require.True(t, Alive(os.Getppid()))
	require.False(t, Alive(-1))
}

func TestCheck(t *testing.T) {
	me := Identity{BootID: "b", NetNS: "net:[1]", PidNS: "pid:[2]", PID: 10}
	alive := func(pid int) bool { return pid == 11 }
	other := func(f func(*Identity)) Identity { p := me; p.PID = 11; f(&p); return p }
	tests := []struct {
		name string
		peer Identity
		ok   bool
	}{
		{name: "a live process of this host", peer: other(func(*Identity) {}), ok: true},
		{name: "another host", peer: other(func(p *Identity) { p.BootID = "c" })},
		{name: "another network namespace", peer: other(func(p *Identity) { p.NetNS = "net:[9]" })},
		{name: "another pid namespace", peer: other(func(p *Identity) { p.PidNS = "pid:[9]" })},
		{name: "this process", peer: me},
		{name: "gone", peer: other(func(p *Identity) { p.PID = 12 })},
		{name: "nothing published", peer: Identity{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := me.Check(tc.peer, alive)
			if tc.ok {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrOtherHost)
		})
	}
}
