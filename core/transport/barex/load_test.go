//go:build cgo && linux

package barex

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/topology"
)

func newWith(t *testing.T, cfg Config) (*Transport, error) {
	topo, err := topology.Parse([]byte(matrix("fake_0", "fake_1")))
	require.NoError(t, err)
	return New(context.Background(), cfg, Deps{LocalName: "me", Topology: topo})
}

// TestLoadFailures: without a shim, New fails naming the library and
// keeping dlerror's text, as unavailability; a library that is not a shim,
// or a shim of another ABI version, is a different error; nothing stays
// loaded. Reading the environment loads nothing.
func TestLoadFailures(t *testing.T) {
	testutil.ResourceCheck(t)
	requireFake(t)
	abi2 := filepath.Join(t.TempDir(), "abi2", ShimName)
	require.NoError(t, os.MkdirAll(filepath.Dir(abi2), 0o755))
	require.NoError(t, buildShim(abi2, "-DFAKE_ABI_VERSION=2"))

	_, err := ConfigFromEnv(env(map[string]string{"MC_NUM_QP_PER_EP": "2", "ACCL_MIN_PORT": "bad"}))
	require.Error(t, err)
	require.Zero(t, dl.Refs(ShimName), "reading the environment loads nothing")

	tests := []struct {
		name        string
		shim        string
		unavailable bool
		wantErr     error
		mention     []string
	}{
		{name: "no shim anywhere", unavailable: true, mention: []string{ShimName, "cannot open shared object file"}},
		{name: "MC_BAREX_SHIM names a missing file", shim: "/nonexistent/" + ShimName, unavailable: true,
			mention: []string{"/nonexistent/" + ShimName, "No such file"}},
		{name: "MC_BAREX_SHIM names another library", shim: "libc.so.6", wantErr: dl.ErrMissingSymbol,
			mention: []string{"mcbx_abi_version", "libc.so.6"}},
		{name: "a shim of another abi", shim: abi2, wantErr: ErrABIVersion, mention: []string{"abi 2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			refs := dl.Refs(tc.shim)
			tr, err := newWith(t, Config{ShimPath: tc.shim})
			require.Nil(t, tr)
			require.Error(t, err)
			if tc.unavailable {
				require.ErrorIs(t, err, ErrUnavailable)
			} else {
				require.NotErrorIs(t, err, ErrUnavailable)
				require.ErrorIs(t, err, tc.wantErr)
			}
			for _, m := range tc.mention {
				require.Contains(t, err.Error(), m)
			}
			require.Equal(t, refs, dl.Refs(tc.shim), "a failed load keeps no reference")
			t.Log(err)
		})
	}
}

// TestLoadNextToBinary: with no MC_BAREX_SHIM, a shim next to the object
// holding this code (here the test binary; in the wheel, the extension) is
// found through the real search.
func TestLoadNextToBinary(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	path := filepath.Join(filepath.Dir(selfPath()), ShimName)
	if _, err := os.Stat(path); err == nil {
		t.Fatalf("%s exists already", path)
	}
	src, err := os.Open(fakeShim)
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		t.Skipf("cannot place a shim next to the test binary: %v", err)
	}
	t.Cleanup(func() { os.Remove(path) })
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())

	t.Setenv("MCBX_FAKE_DEVICES", "fake_0,fake_1")
	tr, err := newWith(t, Config{})
	require.NoError(t, err)
	require.Equal(t, 1, dl.Refs(path))
	require.NoError(t, tr.Close())
	require.NoError(t, tr.Close(), "close is idempotent")
	require.Zero(t, dl.Refs(path), "close drops the library reference")
}

// TestNoDevices: a shim without a usable device is unavailability too.
func TestNoDevices(t *testing.T) {
	testutil.ResourceCheck(t)
	fakeLeakCheck(t)
	refs := dl.Refs(fakeShim)
	tests := []struct {
		name    string
		devices string
		topo    string
		useNICs string
	}{
		{name: "barex lists none of the topology's hcas", devices: "other_0", topo: matrix("fake_0")},
		{name: "every context failed", devices: "fake_0:down,fake_1:down", topo: matrix("fake_0", "fake_1")},
		{name: "ACCL_USE_NICS leaves nothing", devices: "fake_0", topo: matrix("fake_0"), useNICs: "fake_9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MCBX_FAKE_DEVICES", tc.devices)
			topo, err := topology.Parse([]byte(tc.topo))
			require.NoError(t, err)
			cfg := Config{ShimPath: fakeShim, UseNICs: tc.useNICs, UseNICsSet: tc.useNICs != ""}
			tr, err := New(context.Background(), cfg, Deps{LocalName: "me", Topology: topo})
			require.Nil(t, tr)
			require.ErrorIs(t, err, ErrNoDevices)
			require.ErrorIs(t, err, ErrUnavailable)
			require.Equal(t, refs, dl.Refs(fakeShim))
		})
	}
}

func TestNewInvalid(t *testing.T) {
	topo, err := topology.Parse([]byte(matrix("fake_0")))
	require.NoError(t, err)
	tests := []struct {
		name string
		cfg  Config
		deps Deps
	}{
		{name: "no name", deps: Deps{Topology: topo}},
		{name: "name with @", deps: Deps{LocalName: "a@b", Topology: topo}},
		{name: "no topology", deps: Deps{LocalName: "a"}},
		{name: "bad config", cfg: Config{NumQPPerEP: 300}, deps: Deps{LocalName: "a", Topology: topo}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := New(context.Background(), tc.cfg, tc.deps)
			require.Nil(t, tr)
			require.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
	tr, err := New(context.Background(), Config{}, Deps{LocalName: "a", Topology: &topology.Topology{}})
	require.Nil(t, tr)
	require.ErrorIs(t, err, ErrNoDevices)
}
