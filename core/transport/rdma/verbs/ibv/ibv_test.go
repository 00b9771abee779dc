package ibv

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/internal/dl"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs"
)

// hwDevices is the opt-in naming the RDMA devices a host really has; with
// it set, every "absent" answer below is a failure.
func hwDevices() string { return os.Getenv("PYMOONCAKE_RDMA_DEVICES") }

// TestOpenOnThisHost loads the real libibverbs. Without it, the error must
// be the conclusive "unavailable" naming the library. With it but without
// RDMA hardware, Devices must say "no RDMA devices".
func TestOpenOnThisHost(t *testing.T) {
	p, err := Open()
	if err != nil {
		require.Empty(t, hwDevices(), "PYMOONCAKE_RDMA_DEVICES is set but %s cannot be loaded: %v", Library, err)
		require.ErrorIs(t, err, verbs.ErrUnavailable)
		require.Contains(t, err.Error(), Library)
		require.Nil(t, p)
		t.Skipf("libibverbs absent (conclusive): %v", err)
	}
	defer func() {
		require.NoError(t, p.Close())
		require.Zero(t, dl.Refs(Library), "unloaded with the last provider")
	}()
	require.Equal(t, 1, dl.Refs(Library))
	q, err := Open()
	require.NoError(t, err)
	require.Equal(t, 1, dl.Refs(Library), "providers share one loaded library")
	require.NoError(t, q.Close())
	require.NoError(t, q.Close(), "idempotent")
	require.Equal(t, 1, dl.Refs(Library), "p still holds it")

	names, err := p.Devices()
	if hwDevices() == "" && err != nil {
		require.ErrorIs(t, err, verbs.ErrNoDevices)
		require.ErrorIs(t, err, verbs.ErrUnavailable)
		require.Contains(t, err.Error(), "no RDMA devices")
		_, err = p.Open("mlx5_0")
		require.ErrorIs(t, err, verbs.ErrNoDevices)
		return
	}
	require.NoError(t, err)
	require.NotEmpty(t, names)
	t.Logf("rdma devices: %v", names)
}
