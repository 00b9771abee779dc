"""GPU memory between two engines in two processes over TCP, through the
staging pipeline: GPU to GPU in both directions, host and GPU mixed in one
batch, data checked by digest on both sides. CUDA IPC is turned off here
(PYMOONCAKE_CUDA_IPC=0, in this process and the peer's), so that TCP is what
runs; test_cuda_ipc.py covers the same host through CUDA IPC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pymooncake.engine import TransferEngine

from . import gpulib

MiB = 1 << 20
SIZE = 48 * MiB + 4097  # not a multiple of the staging chunk


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


@pytest.mark.parametrize(
    ("src", "dst"),
    [("gpu", "gpu"), ("host", "gpu"), ("gpu", "host"), ("host", "host")],
)
def test_write_and_read(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any], src: str, dst: str) -> None:
    remote = {"gpu": peer.gpu, "host": peer.host}
    # Write local src into the peer's dst.
    want = seeded(torch, local[src], 1)
    assert gpu_engine.transfer_sync_write(peer.segment, local[src].data_ptr(), remote[dst], SIZE) == 0
    assert peer.digest(dst) == want
    # Read the peer's dst (refilled) back into local src.
    want = peer.fill(dst, 2)
    assert gpu_engine.transfer_sync_read(peer.segment, local[src].data_ptr(), remote[dst], SIZE) == 0
    torch.cuda.synchronize()
    assert gpulib.digest(local[src]) == want


def test_mixed_batches(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any]) -> None:
    """One batch of four blocks: GPU to GPU, host to GPU, GPU to host, host
    to host; then the same, read back, asynchronously."""
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

    want_gpu, want_host = peer.fill("gpu", 5), peer.fill("host", 6)
    assert want_gpu != want_host
    local["gpu"].zero_()
    local["host"].zero_()
    torch.cuda.synchronize()
    bid = gpu_engine.batch_transfer_async_read(peer.segment, locals_, remotes, lengths)
    assert bid > 0
    assert gpu_engine.get_batch_transfer_status([bid]) == 0
    torch.cuda.synchronize()
    assert gpulib.digest(local["gpu"][:q]) == peer.digest("gpu", 0, q)
    assert gpulib.digest(local["host"][q : 2 * q]) == peer.digest("gpu", q, q)
    assert gpulib.digest(local["gpu"][2 * q : 3 * q]) == peer.digest("host", 2 * q, q)
    assert gpulib.digest(local["host"][3 * q :]) == peer.digest("host", 3 * q)


def test_unregistered_gpu_range_is_refused(torch: Any, gpu_engine: TransferEngine, peer: gpulib.GPUPeer, local: dict[str, Any]) -> None:
    stray = torch.zeros(MiB, dtype=torch.uint8, device="cuda:0")
    assert gpu_engine.transfer_sync_write(peer.segment, stray.data_ptr(), peer.gpu, MiB) == -1
    assert gpu_engine.transfer_sync_write(peer.segment, local["gpu"].data_ptr(), peer.gpu + SIZE - 10, MiB) == -1
