package core

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/internal/testutil"
	"github.com/pymooncake/pymooncake/core/transport"
)

// BenchmarkSameHostScattered is SGLang's page-size-1 batch at the engine
// level: 64 regions a side, 1,007 entries of 2 KiB per region, each to a
// random slot of the peer's region of the same layer, one synchronous
// Transfer, between two engines of this process, over each path.
func BenchmarkSameHostScattered(b *testing.B) {
	for _, value := range []string{"0", "", "shm"} {
		b.Run("PYMOONCAKE_SAME_HOST="+value, func(b *testing.B) {
			env := map[string]string{}
			if value != "" {
				env["PYMOONCAKE_SAME_HOST"] = value
			}
			tgt := startEngine(b, env, nil, nil)
			ini := startEngine(b, env, nil, nil)
			const regions, per, block, regionSize = 64, 1007, 2 << 10, 4 << 20
			r := rand.New(rand.NewPCG(1, 2))
			var reqs []engine.Request
			for k := range regions {
				local, remote := testutil.Mmap(b, regionSize), testutil.Mmap(b, regionSize)
				if err := ini.RegisterMemory(addr(local), regionSize, "*"); err != nil {
					b.Fatal(err)
				}
				if err := tgt.RegisterMemory(addr(remote), regionSize, "*"); err != nil {
					b.Fatal(err)
				}
				for i, s := range r.Perm(regionSize / block)[:per] {
					reqs = append(reqs, engine.Request{Opcode: transport.Write, Local: addr(local) + uintptr(i*block), Remote: uint64(addr(remote)) + uint64(s*block), Length: block})
				}
				_ = k
			}
			b.SetBytes(int64(len(reqs) * block))
			for b.Loop() {
				if err := ini.TransferTo(ctxT(b), tgt.Name(), reqs, nil); err != nil {
					b.Fatal(fmt.Errorf("transfer: %w", err))
				}
			}
		})
	}
}
