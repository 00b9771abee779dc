//go:build cgo && linux

package dl

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// libc is always loaded in a cgo binary on glibc systems.
const libc = "libc.so.6"

func TestOpen(t *testing.T) {
	tests := []struct {
		name    string
		lib     string
		wantErr error
	}{
		{name: "present", lib: libc},
		{name: "absent", lib: "libpymooncake-absent.so.0", wantErr: ErrUnavailable},
		{name: "bad path", lib: "/nonexistent/dir/libx.so", wantErr: ErrUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Open(tc.lib)
			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
				require.NotErrorIs(t, err, ErrMissingSymbol)
				require.Nil(t, l)
				var de *Error
				require.True(t, errors.As(err, &de))
				require.Equal(t, tc.lib, de.Lib)
				require.NotEmpty(t, de.Msg, "dlerror text must be kept")
				require.Contains(t, err.Error(), tc.lib)
				require.Zero(t, Refs(tc.lib))
				return
			}
			require.NoError(t, err)
			require.NoError(t, l.Close())
		})
	}
}

func TestSym(t *testing.T) {
	l, err := Open(libc)
	require.NoError(t, err)
	defer l.Close()

	p, err := l.Sym("malloc")
	require.NoError(t, err)
	require.NotNil(t, p)

	p, err = l.Sym("pymooncake_no_such_symbol")
	require.ErrorIs(t, err, ErrMissingSymbol)
	require.NotErrorIs(t, err, ErrUnavailable)
	require.Nil(t, p)
	require.Contains(t, err.Error(), "pymooncake_no_such_symbol")
}

func TestRefcount(t *testing.T) {
	before := Refs(libc)
	a, err := Open(libc)
	require.NoError(t, err)
	b, err := Open(libc)
	require.NoError(t, err)
	require.Equal(t, before+2, Refs(libc))

	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "second close is a no-op")
	require.Equal(t, before+1, Refs(libc))
	_, err = a.Sym("malloc")
	require.ErrorIs(t, err, ErrClosed)

	_, err = b.Sym("malloc")
	require.NoError(t, err, "other handles keep the library")
	require.NoError(t, b.Close())
	require.Equal(t, before, Refs(libc))
}
