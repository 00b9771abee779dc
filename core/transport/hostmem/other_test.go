//go:build !linux

package hostmem

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/memory"
)

// TestUnavailableElsewhere: off Linux the transport says it is absent, so
// that the engine runs without it.
func TestUnavailableElsewhere(t *testing.T) {
	_, err := New(Config{}, memory.New())
	require.ErrorIs(t, err, ErrUnavailable)
}
