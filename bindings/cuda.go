package bindings

import (
	"encoding/json"
	"fmt"

	"github.com/pymooncake/pymooncake/allocator"
	"github.com/pymooncake/pymooncake/core/engine"
)

// TransferOnCuda starts n transfers (lists as in BatchTransferSync) that
// run once the CUDA stream has run the work queued on it so far, and that
// hold the stream's later work until they are done
// (transfer_write_on_cuda, transfer_read_on_cuda, and the batch forms).
// stream is a cudaStream_t; 0 is the legacy default stream of device (-1:
// the device of the first GPU buffer). It returns a ticket for
// CudaTransferStatus. Errors found at once (no CUDA driver, unknown peer,
// unregistered range) are returned; a failure of the transfer itself is
// logged and reported by CudaTransferStatus, and the stream goes on.
func (e *Engine) TransferOnCuda(target string, opcode int, locals, remotes, lengths uintptr, n int, stream uintptr, device int) (ticket int64, err error) {
	const op = "transfer_on_cuda"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	reqs, total, err := readRequests(op, opcode, locals, remotes, lengths, n)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, invalid(op, "no buffers")
	}
	t, err := e.eng.TransferOnStream(target, reqs, stream, device, e.eng.TransferTimeout(total))
	if err != nil {
		return 0, fail(op, err)
	}
	return int64(t), nil
}

// CudaTransferStatus reports a TransferOnCuda ticket: 1 done, 0 not done
// yet; an error when the transfer failed or the ticket is unknown (the
// outcomes of the last 4096 tickets are kept).
func (e *Engine) CudaTransferStatus(ticket int64) (rc int, err error) {
	const op = "cuda_transfer_status"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return 0, err
	}
	if ticket <= 0 {
		return 0, fail(op, fmt.Errorf("ticket %d: %w", ticket, engine.ErrUnknownTicket))
	}
	done, err := e.eng.StreamTransferStatus(engine.Ticket(ticket))
	if err != nil {
		return 0, fail(op, err)
	}
	if done {
		return 1, nil
	}
	return 0, nil
}

// AllocatorBind makes the extension's allocators (mc_stream_alloc,
// mc_nvlink_malloc, ...) usable: it loads the CUDA driver once and hands
// them its function table. Python calls it before giving torch the
// extension's path. No CUDA driver or device fails with the not-supported
// code.
func AllocatorBind() (rc int, err error) {
	defer recoverInto("allocator", nil, &err)
	if err := allocator.Bind(); err != nil {
		return 0, fail("allocator", err)
	}
	return 0, nil
}

// AllocatorTrim waits for device's work and returns the stream allocator's
// cached memory to the driver.
func AllocatorTrim(device int) (rc int, err error) {
	defer recoverInto("allocator_trim", nil, &err)
	if err := allocator.Trim(device); err != nil {
		return 0, fail("allocator_trim", err)
	}
	return 0, nil
}

// AllocatorStats describes device's allocators as JSON: the stream pool's
// reserved and used bytes and whether it is GPUDirect-RDMA capable, whether
// NVLink allocations get FABRIC handles (1, 0, -1 unknown yet), and
// mc_allocator_probe (1 VMM, 0 not, -1 unknown).
func AllocatorStats(device int) (stats string, err error) {
	defer recoverInto("allocator_stats", nil, &err)
	s, err := allocator.Stats(device)
	if err != nil {
		return "", fail("allocator_stats", err)
	}
	b, err := json.Marshal(map[string]any{
		"reserved": s.Reserved, "used": s.Used, "rdma_pool": s.RDMA,
		"nvlink_bytes": s.NVLinkBytes, "nvlink_allocs": s.NVLinkAllocs,
		"fabric": allocator.Fabric(device), "vmm": allocator.Probe(device),
	})
	if err != nil {
		return "", fail("allocator_stats", err)
	}
	return string(b), nil
}

// AllocatorRDMAInfo says, as JSON, whether the allocation holding ptr is
// GPUDirect-RDMA capable (the driver's pointer attribute) and whether a
// dma-buf can be exported for it: 1 yes, 0 no, -1 not asked.
func AllocatorRDMAInfo(ptr uintptr) (info string, err error) {
	defer recoverInto("allocator_rdma_info", nil, &err)
	capable, dmabuf, err := allocator.RDMAInfo(ptr)
	if err != nil {
		return "", fail("allocator_rdma_info", err)
	}
	return fmt.Sprintf(`{"rdma_capable": %d, "dmabuf": %d}`, capable, dmabuf), nil
}

// AllocatorLastError describes the last failure of an allocator function
// (torch only sees NULL), or "".
func AllocatorLastError() (msg string, err error) {
	defer recoverInto("allocator", nil, &err)
	return allocator.LastError(), nil
}
