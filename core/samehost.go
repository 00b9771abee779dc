package core

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/pymooncake/pymooncake/core/engine"
	"github.com/pymooncake/pymooncake/core/transport"
	"github.com/pymooncake/pymooncake/core/transport/cudaipc"
	"github.com/pymooncake/pymooncake/core/transport/inproc"
)

// sameHost puts the same-host transports before the data transports: the
// engine's own segment (inproc), then GPU memory of the host's other
// processes through CUDA IPC, whose fallback for the rest is the data
// transports, in their order. PYMOONCAKE_SAME_HOST=0 leaves both out,
// PYMOONCAKE_CUDA_IPC=0 the second. CUDA IPC missing what it needs (no GPU
// driver, no /proc) is logged at debug; failing otherwise, it is logged
// and left out: it is a faster path, never a condition of initialize.
func (b *builder) sameHost(s engine.Services, data []transport.Transport) ([]transport.Transport, error) {
	var out []transport.Transport
	if !b.cfg.InProc.Off {
		cfg := b.cfg.InProc
		cfg.Instance, cfg.Memory, cfg.GPU, cfg.Logger = s.Instance, s.Memory, b.gpu, b.log
		x, err := inproc.New(cfg)
		if err != nil {
			for _, d := range data {
				_ = d.Close()
			}
			return nil, fmt.Errorf("in-process transport: %w", err)
		}
		out = append(out, x)
	}
	if !b.cfg.CUDAIPC.Off && b.gpu != nil {
		x, err := cudaipc.New(b.cfg.CUDAIPC, cudaipc.Deps{Name: s.Name, Instance: s.Instance, Memory: s.Memory,
			GPU: b.gpu, Fallback: data, Logger: b.log})
		switch {
		case err == nil:
			out = append(out, x)
		case errors.Is(err, transport.ErrUnavailable):
			b.log.Debug("no CUDA IPC between the processes of this host", zap.Error(err))
		default:
			b.log.Warn("CUDA IPC unusable; GPU memory of same-host peers goes over the data transport", zap.Error(err))
		}
	}
	return append(out, data...), nil
}
