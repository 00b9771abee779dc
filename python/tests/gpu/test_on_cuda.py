"""The *_on_cuda methods over TCP, ordered on a CUDA stream against real
kernels: the transfer holds the stream, sees what the kernels queued before
it wrote, the kernels queued after it see what it read, and a failure is
reported, not fatal. CUDA IPC is turned off here (PYMOONCAKE_CUDA_IPC=0, in
this process and the peer's), so that the hold and its bounce buffers are
what runs; test_cuda_ipc.py covers the same calls through CUDA IPC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pymooncake import AddressNotRegisteredError
from pymooncake.engine import TransferEngine

from . import gpulib

MiB = 1 << 20
SIZE = 32 * MiB
SLEEP = 200_000_000  # GPU clock cycles (~0.1 s): the kernel before the transfer is slow


@pytest.fixture(autouse=True)
def _over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both engines read it at initialize (the peer inherits it)."""
    monkeypatch.setenv("PYMOONCAKE_CUDA_IPC", "0")


@pytest.fixture
def peer() -> Iterator[gpulib.GPUPeer]:
    p = gpulib.GPUPeer(SIZE)
    yield p
    p.close()


@pytest.fixture
def x(torch: Any, gpu_engine: TransferEngine) -> Iterator[Any]:
    t = torch.zeros(SIZE, dtype=torch.uint8, device="cuda:0")
    assert gpu_engine.register_memory(t.data_ptr(), SIZE) == 0
    yield t
    gpu_engine.unregister_memory(t.data_ptr())


def wait_done(e: TransferEngine, ticket: int) -> int:
    deadline = time.monotonic() + 30
    while (rc := e.cuda_transfer_status(ticket)) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    return rc


def test_write_on_cuda_is_ordered(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, x: Any) -> None:
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(SLEEP)
        x.fill_(7)  # the kernel the transfer must wait for
    ticket = gpu_engine.transfer_write_on_cuda(peer.segment, x.data_ptr(), peer.gpu, SIZE, s.cuda_stream)
    with torch.cuda.stream(s):
        x.fill_(9)  # must not run before the transfer has read x
    assert gpu_engine.cuda_transfer_status(ticket) == 0, "the stream is still sleeping"
    s.synchronize()
    assert gpu_engine.cuda_transfer_status(ticket) == 1, "the stream went on only after the transfer"
    assert peer.digest("gpu") == gpulib.digest(torch.full((SIZE,), 7, dtype=torch.uint8))
    assert int(x[0]) == 9


def test_read_on_cuda_is_ordered(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, x: Any) -> None:
    want = peer.fill("gpu", 11)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(SLEEP)
        x.fill_(1)  # overwritten by the read, which comes after
    ticket = gpu_engine.transfer_read_on_cuda(peer.segment, x.data_ptr(), peer.gpu, SIZE, s)
    with torch.cuda.stream(s):
        # Kernels after the read see its bytes. Kernels this process has
        # not run yet are loaded lazily, which synchronises the device: it
        # waits for the held stream, so the transfer must need no CUDA call
        # to let it go (this deadlocked until the transfer's deadline with
        # staging copies made while the stream was held).
        y = x.to(torch.int32) * 2
        w = torch.special.i0(x[:4096].to(torch.float64))
    big = torch.empty(777 * MiB, dtype=torch.uint8, device="cuda")  # cudaMalloc meanwhile
    s.synchronize()
    assert gpu_engine.cuda_transfer_status(ticket) == 1
    assert gpulib.digest(x) == want
    assert torch.equal(y, x.to(torch.int32) * 2)
    torch.testing.assert_close(w, torch.special.i0(x[:4096].to(torch.float64)))
    del big


def test_batch_on_cuda_and_the_default_stream(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, x: Any) -> None:
    half = SIZE // 2
    torch.cuda._sleep(SLEEP)  # on the current (legacy default) stream
    x[:half].fill_(3)
    x[half:].fill_(4)
    ticket = gpu_engine.batch_transfer_write_on_cuda(peer.segment, [x.data_ptr() + half, x.data_ptr()], [peer.gpu, peer.gpu + half], [half, half])
    x.fill_(0)
    torch.cuda.synchronize()
    assert wait_done(gpu_engine, ticket) == 1
    want = torch.cat([torch.full((half,), 4, dtype=torch.uint8), torch.full((half,), 3, dtype=torch.uint8)])
    assert peer.digest("gpu") == gpulib.digest(want)
    ticket = gpu_engine.batch_transfer_read_on_cuda(peer.segment, [x.data_ptr()], [peer.gpu], [SIZE], 0)
    z = x.clone()
    torch.cuda.synchronize()
    assert gpu_engine.cuda_transfer_status(ticket) == 1
    assert gpulib.digest(z) == gpulib.digest(want)


def test_failures_are_reported_not_fatal(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, x: Any) -> None:
    # Refused before anything is queued: raised, as Mooncake raises.
    with pytest.raises(AddressNotRegisteredError):
        gpu_engine.transfer_write_on_cuda(peer.segment, x.data_ptr(), peer.gpu + SIZE, MiB)
    # Failing once the stream reaches it: the peer died meanwhile.
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(4 * SLEEP)
    ticket = gpu_engine.transfer_write_on_cuda(peer.segment, x.data_ptr(), peer.gpu, SIZE, s.cuda_stream)
    with torch.cuda.stream(s):
        x.fill_(5)
    peer.kill()
    s.synchronize()
    assert gpu_engine.cuda_transfer_status(ticket) == -1, "the failure is in the ticket"
    assert int(x[-1]) == 5, "the stream went on; the process is alive"
