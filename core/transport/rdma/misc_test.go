package rdma

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pymooncake/pymooncake/core/topology"
	"github.com/pymooncake/pymooncake/core/transport/rdma/verbs/fake"
)

func mustTopo(tb testing.TB, matrix string) *topology.Topology {
	tb.Helper()
	topo, err := topology.Parse([]byte(matrix))
	require.NoError(tb, err)
	return topo
}

func nicSpecs(n int) []fake.NICSpec {
	var out []fake.NICSpec
	for i := range n {
		out = append(out, fake.NICSpec{Name: "mlx5_" + strconv.Itoa(i)})
	}
	return out
}
