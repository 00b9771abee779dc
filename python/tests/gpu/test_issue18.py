"""Issue 18 item 1: transfer_read_on_cuda / batch_transfer_read_on_cuda
timed out when the target was the engine's own session (the serving side,
in the same process, staged GPU memory through the driver while the
caller's stream was held, and a lazily loaded kernel waited for that
stream). The workload exactly as the issue describes it, reads and writes,
single and batch (4 chunks), with and without the concurrent matmul,
against the engine's own session and against a second process on the same
GPU: one engine, two 64 MiB GPU tensors; a side stream ``copy_stream``
waits on an event recorded on the default stream; the transfer on
``copy_stream``; a 4096x4096 matmul on the default stream; the default
stream waits on an event recorded on ``copy_stream``; the result is
checked. Ten iterations, each with a new fill value."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pymooncake.engine import TransferEngine

from . import gpulib

N = 64 << 20
ITERATIONS = 10
CHUNKS = 4


@pytest.fixture(scope="module")
def second_process() -> Iterator[gpulib.GPUPeer]:
    p = gpulib.GPUPeer(N)
    yield p
    p.close()


def wait_done(e: TransferEngine, ticket: int) -> int:
    deadline = time.monotonic() + 30
    while (rc := e.cuda_transfer_status(ticket)) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    return rc


@pytest.mark.parametrize("matmul", [False, True], ids=["alone", "matmul"])
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
@pytest.mark.parametrize("op", ["read", "write"])
@pytest.mark.parametrize("target", ["same-process", "two-process"])
def test_issue18_workload(torch: Any, gpu_engine: TransferEngine, request: pytest.FixtureRequest, target: str, op: str, batch: bool, matmul: bool) -> None:
    e = gpu_engine
    src = torch.empty(N, dtype=torch.uint8, device="cuda")
    dst = torch.empty(N, dtype=torch.uint8, device="cuda")
    assert e.register_memory(src.data_ptr(), N) == 0
    assert e.register_memory(dst.data_ptr(), N) == 0
    peer: gpulib.GPUPeer | None = None
    if target == "same-process":
        segment = e.get_segment_name()  # host:rpc_port, the engine's own session
        # A read brings src into dst; a write sends src into dst.
        local, remote = (dst, src.data_ptr()) if op == "read" else (src, dst.data_ptr())
    else:
        peer = request.getfixturevalue("second_process")
        segment = peer.segment
        local, remote = (dst, peer.gpu) if op == "read" else (src, peer.gpu)
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    copy_stream = torch.cuda.Stream()
    default = torch.cuda.current_stream()
    chunk = N // CHUNKS
    try:
        for it in range(ITERATIONS):
            value = it + 1
            # The source gets this iteration's value, the destination is
            # cleared, on the default stream (the peer's: synchronously).
            if op == "read" and peer is not None:
                peer.set("gpu", value)
            else:
                src.fill_(value)
            if op == "write" and peer is not None:
                peer.set("gpu", 0)
            else:
                dst.zero_()
            ready = torch.cuda.Event()
            ready.record(default)
            copy_stream.wait_event(ready)
            fn: Any
            if batch:
                fn = e.batch_transfer_read_on_cuda if op == "read" else e.batch_transfer_write_on_cuda
                ticket = fn(
                    segment,
                    [local.data_ptr() + i * chunk for i in range(CHUNKS)],
                    [remote + i * chunk for i in range(CHUNKS)],
                    [chunk] * CHUNKS,
                    copy_stream.cuda_stream,
                )
            else:
                fn = e.transfer_read_on_cuda if op == "read" else e.transfer_write_on_cuda
                ticket = fn(segment, local.data_ptr(), remote, N, copy_stream.cuda_stream)
            if matmul:
                c = a @ b
            done = torch.cuda.Event()
            done.record(copy_stream)
            default.wait_event(done)
            if op == "write" and peer is not None:
                torch.cuda.synchronize()
                assert peer.check("gpu", value), f"iteration {it}"
            else:
                assert bool(torch.all(dst == value).item()), f"iteration {it}"
            assert wait_done(e, ticket) == 1, f"iteration {it}"
            if matmul:
                torch.testing.assert_close(c[:2, :2].cpu(), (a[:2] @ b[:, :2]).cpu(), rtol=1e-2, atol=1e-1)
    finally:
        torch.cuda.synchronize()
        assert e.unregister_memory(src.data_ptr()) == 0
        assert e.unregister_memory(dst.data_ptr()) == 0
