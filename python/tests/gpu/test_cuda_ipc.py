"""CUDA IPC between two processes on one GPU: the peer's GPU memory is
mapped into this process (cudaMalloc memory through a legacy IPC handle,
NVLinkAllocator's cuMemCreate memory in a torch MemPool through a POSIX file
descriptor) and copied by the GPU; the peer's host memory goes to the data
transports behind CUDA IPC (the host-memory transport, else TCP).
Writes, reads, batches, the *_on_cuda calls, an unregistration on the peer
while this process has the memory mapped, and 100 map/drop cycles without a
leaked descriptor; data checked by digest on both sides."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pymooncake.engine import TransferEngine

from . import gpulib

MiB = 1 << 20
SIZE = 48 * MiB + 4097
SLEEP = 200_000_000  # GPU clock cycles (~0.1 s)
MECHANISM = {"cudamalloc": "legacy cuda ipc", "vmm": "vmm posix fd"}


@pytest.fixture(params=["cudamalloc", "vmm"])
def kind(request: pytest.FixtureRequest) -> str:
    k: str = request.param
    return k


@pytest.fixture
def peer(kind: str) -> Iterator[gpulib.GPUPeer]:
    p = gpulib.GPUPeer(SIZE, vmm=kind == "vmm")
    yield p
    p.close()


@pytest.fixture
def local(torch: Any, gpu_engine: TransferEngine) -> dict[str, Any]:
    bufs = {
        "gpu": torch.zeros(SIZE, dtype=torch.uint8, device="cuda:0"),
        "host": torch.zeros(SIZE, dtype=torch.uint8),
    }
    assert gpu_engine.batch_register_memory([b.data_ptr() for b in bufs.values()], [SIZE, SIZE]) == 0
    return bufs


def seeded(torch: Any, t: Any, seed: int) -> str:
    g = torch.Generator(device=t.device).manual_seed(seed)
    t.copy_(torch.randint(0, 256, (t.numel(),), dtype=torch.uint8, device=t.device, generator=g))
    torch.cuda.synchronize()
    return gpulib.digest(t)


def wait_done(e: TransferEngine, ticket: int) -> int:
    deadline = time.monotonic() + 30
    while (rc := e.cuda_transfer_status(ticket)) == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    return rc


def mapped_through(capfd: pytest.CaptureFixture[str], kind: str) -> None:
    """This process's engine logged the mapping of the peer's memory, by the
    expected mechanism (its log goes to this process's stderr)."""
    err = capfd.readouterr().err
    assert "mapped through CUDA IPC" in err, err[-4000:]
    assert MECHANISM[kind] in err, err[-4000:]


@pytest.mark.parametrize("src", ["gpu", "host"])
def test_write_and_read(
    torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any], kind: str, src: str, capfd: pytest.CaptureFixture[str]
) -> None:
    want = seeded(torch, local[src], 1)
    assert gpu_engine.transfer_sync_write(peer.segment, local[src].data_ptr(), peer.gpu, SIZE) == 0
    assert peer.digest("gpu") == want
    want = peer.fill("gpu", 2)
    assert gpu_engine.transfer_sync_read(peer.segment, local[src].data_ptr(), peer.gpu, SIZE) == 0
    torch.cuda.synchronize()
    assert gpulib.digest(local[src]) == want
    mapped_through(capfd, kind)


def test_batches(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any], kind: str) -> None:
    """A synchronous batch of four blocks: GPU to GPU and host to GPU through
    CUDA IPC, GPU to host and host to host through the data transports
    behind it (the host-memory transport's TCP fallback for GPU memory, its
    cross-memory attach for host memory); then the same read back
    asynchronously."""
    q = SIZE // 4
    seeded(torch, local["gpu"], 3)
    seeded(torch, local["host"], 4)
    g, h = local["gpu"].data_ptr(), local["host"].data_ptr()
    locals_ = [g, h + q, g + 2 * q, h + 3 * q]
    remotes = [peer.gpu, peer.gpu + q, peer.host + 2 * q, peer.host + 3 * q]
    lengths = [q, q, q, SIZE - 3 * q]
    assert gpu_engine.batch_transfer_sync_write(peer.segment, locals_, remotes, lengths) == 0
    assert peer.digest("gpu", 0, q) == gpulib.digest(local["gpu"][:q])
    assert peer.digest("gpu", q, q) == gpulib.digest(local["host"][q : 2 * q])
    assert peer.digest("host", 2 * q, q) == gpulib.digest(local["gpu"][2 * q : 3 * q])
    assert peer.digest("host", 3 * q) == gpulib.digest(local["host"][3 * q :])

    peer.fill("gpu", 5)
    peer.fill("host", 6)
    local["gpu"].zero_()
    local["host"].zero_()
    torch.cuda.synchronize()
    bid = gpu_engine.batch_transfer_async_read(peer.segment, locals_, remotes, lengths)
    assert bid != 0
    assert gpu_engine.get_batch_transfer_status([bid]) == 0
    torch.cuda.synchronize()
    assert gpulib.digest(local["gpu"][:q]) == peer.digest("gpu", 0, q)
    assert gpulib.digest(local["host"][q : 2 * q]) == peer.digest("gpu", q, q)
    assert gpulib.digest(local["gpu"][2 * q : 3 * q]) == peer.digest("host", 2 * q, q)
    assert gpulib.digest(local["host"][3 * q :]) == peer.digest("host", 3 * q)


def test_on_cuda(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any], kind: str) -> None:
    """The copies are queued on the caller's stream: ordered after the
    kernels before the call and before those after it; no stream is held,
    so the ticket is done at once."""
    x = local["gpu"]
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(SLEEP)
        x.fill_(7)
    ticket = gpu_engine.transfer_write_on_cuda(peer.segment, x.data_ptr(), peer.gpu, SIZE, s.cuda_stream)
    assert gpu_engine.cuda_transfer_status(ticket) == 1, "queued on the stream: done as far as the engine goes"
    with torch.cuda.stream(s):
        x.fill_(9)
    s.synchronize()
    assert peer.check("gpu", 7), "the copy ran after the fill before it and before the one after it"

    want = peer.fill("gpu", 11)
    with torch.cuda.stream(s):
        torch.cuda._sleep(SLEEP)
        x.fill_(1)
    ticket = gpu_engine.transfer_read_on_cuda(peer.segment, x.data_ptr(), peer.gpu, SIZE, s)
    with torch.cuda.stream(s):
        y = x.to(torch.int32) * 3  # kernels after the read see its bytes
        w = torch.special.i1(x[:4096].to(torch.float64))  # loaded lazily
    big = torch.empty(777 * MiB, dtype=torch.uint8, device="cuda")  # cudaMalloc meanwhile
    s.synchronize()
    assert wait_done(gpu_engine, ticket) == 1
    assert gpulib.digest(x) == want
    assert torch.equal(y, x.to(torch.int32) * 3)
    torch.testing.assert_close(w, torch.special.i1(x[:4096].to(torch.float64)))
    del big

    # Batches on the legacy default stream (0).
    half = SIZE // 2
    x[:half].fill_(3)
    x[half:].fill_(4)
    # x[half:] (4s, SIZE - half bytes) to the peer's start, x[:half] (3s)
    # after it: SIZE is odd, so the two halves differ by a byte.
    ticket = gpu_engine.batch_transfer_write_on_cuda(peer.segment, [x.data_ptr() + half, x.data_ptr()], [peer.gpu, peer.gpu + SIZE - half], [SIZE - half, half])
    x.fill_(0)
    torch.cuda.synchronize()
    assert wait_done(gpu_engine, ticket) == 1
    want = gpulib.digest(torch.cat([torch.full((SIZE - half,), 4, dtype=torch.uint8), torch.full((half,), 3, dtype=torch.uint8)]))
    assert peer.digest("gpu") == want
    ticket = gpu_engine.batch_transfer_read_on_cuda(peer.segment, [x.data_ptr()], [peer.gpu], [SIZE], 0)
    z = x.clone()
    torch.cuda.synchronize()
    assert wait_done(gpu_engine, ticket) == 1
    assert gpulib.digest(z) == want

    # The peer's host memory cannot be mapped: the transfer holds the
    # stream and goes to the data transports behind CUDA IPC.
    want = peer.fill("host", 12)
    ticket = gpu_engine.transfer_read_on_cuda(peer.segment, x.data_ptr(), peer.host, SIZE, s.cuda_stream)
    s.synchronize()
    assert wait_done(gpu_engine, ticket) == 1
    assert gpulib.digest(x) == want


def test_unregister_while_mapped(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any], kind: str) -> None:
    """The peer's unregister_memory returns once this process dropped its
    mapping; the range is then refused; registered again, it is mapped
    afresh."""
    want = seeded(torch, local["gpu"], 21)
    assert gpu_engine.transfer_sync_write(peer.segment, local["gpu"].data_ptr(), peer.gpu, SIZE) == 0
    t0 = time.monotonic()
    assert peer.ask(op="unregister", where="gpu")["rc"] == 0
    assert time.monotonic() - t0 < 5, "the drop was answered, not timed out"
    assert gpu_engine.transfer_sync_write(peer.segment, local["gpu"].data_ptr(), peer.gpu, SIZE) == -1
    assert peer.ask(op="register", where="gpu")["rc"] == 0
    assert peer.digest("gpu") == want, "untouched since"
    want = seeded(torch, local["gpu"], 22)
    assert gpu_engine.transfer_sync_write(peer.segment, local["gpu"].data_ptr(), peer.gpu, SIZE) == 0
    assert peer.digest("gpu") == want


@pytest.mark.parametrize("kind", ["cudamalloc"])
def test_cuda_ipc_off(torch: Any, peer: gpulib.GPUPeer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """PYMOONCAKE_CUDA_IPC=0 on the initiator: the same transfer goes over
    TCP."""
    monkeypatch.setenv("PYMOONCAKE_CUDA_IPC", "0")
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        x = torch.zeros(SIZE, dtype=torch.uint8, device="cuda:0")
        assert e.register_memory(x.data_ptr(), SIZE) == 0
        want = peer.fill("gpu", 31)
        assert e.transfer_sync_read(peer.segment, x.data_ptr(), peer.gpu, SIZE) == 0
        torch.cuda.synchronize()
        assert gpulib.digest(x) == want
        assert "mapped through CUDA IPC" not in capfd.readouterr().err
    finally:
        e.close()


def test_open_close_cycles(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any], kind: str) -> None:
    """100 cycles of mapping the peer's buffer, using it and dropping it (the
    peer unregisters and registers it again) leave no file descriptor
    behind, in this process or the peer's."""

    def fds(pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    def cycle(i: int) -> None:
        local["gpu"][:MiB].fill_(i % 251)
        torch.cuda.synchronize()
        assert gpu_engine.transfer_sync_write(peer.segment, local["gpu"].data_ptr(), peer.gpu, MiB) == 0
        assert peer.ask(op="unregister", where="gpu")["rc"] == 0
        assert peer.ask(op="register", where="gpu")["rc"] == 0

    for i in range(5):  # the driver's own descriptors, opened on first use
        cycle(i)
    before = (fds(os.getpid()), fds(peer.pid))
    for i in range(100):
        cycle(i)
    after = (fds(os.getpid()), fds(peer.pid))
    assert after[0] <= before[0] + 2, f"this process's descriptors: {before[0]} -> {after[0]}"
    assert after[1] <= before[1] + 2, f"the peer's descriptors: {before[1]} -> {after[1]}"
    assert peer.digest("gpu", 0, MiB) == gpulib.digest(torch.full((MiB,), 99 % 251, dtype=torch.uint8))
