"""pymooncake.allocator on a GPU: tensors from each allocator, in a
torch.cuda.MemPool (as SGLang uses them) and as the process's current
allocator, used by real kernels, freed on other streams, and registered
with an engine. BarexAllocator runs against a FAKE libaccl_barex.so built
here (the real one is Alibaba's and absent); its absence is tested too."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from pymooncake.allocator import BarexAllocator, NVLinkAllocator, StreamAllocator
from pymooncake.engine import TransferEngine

from . import gpulib

KINDS = ["stream", "nvlink", "barex"]
MiB = 1 << 20


@pytest.fixture
def fake_barex(monkeypatch: pytest.MonkeyPatch) -> str:
    lib = gpulib.build_fake_barex()
    if lib is None:
        pytest.skip("no C compiler to build the fake libaccl_barex.so")
    monkeypatch.setattr(BarexAllocator, "search_paths", (lib,))
    monkeypatch.setattr(BarexAllocator, "_instances", {})
    return lib


def allocator(kind: str, request: pytest.FixtureRequest) -> Any:
    if kind == "barex":
        request.getfixturevalue("fake_barex")
        return BarexAllocator
    return StreamAllocator if kind == "stream" else NVLinkAllocator


def check_origin(kind: str, ptr: int) -> None:
    """The memory came from the allocator under test."""
    if kind == "nvlink":
        handles = gpulib.pointer_attribute(ptr, gpulib.CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES)
        assert handles & (1 | 8), f"not cuMemCreate memory with a POSIX fd or FABRIC handle: {handles}"
    else:
        # mc_stream_alloc's pool, or the fake barex's (cuMemAllocAsync).
        assert gpulib.pointer_attribute(ptr, gpulib.CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE) != 0


def kernels(torch: Any, a: Any, b: Any) -> None:
    """Real kernels on the tensors, checked against the CPU."""
    c = a @ b
    d = a * 2 + 1
    torch.testing.assert_close(c.cpu(), a.cpu() @ b.cpu(), rtol=1e-3, atol=1e-2)
    assert torch.equal(d.cpu(), a.cpu() * 2 + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_allocator_in_mempool(torch: Any, kind: str, request: pytest.FixtureRequest) -> None:
    cls = allocator(kind, request)
    alloc = cls.get_allocator(0)
    assert cls.get_allocator(torch.device("cuda:0")) is alloc, "one allocator per device, cached"
    assert cls.get_allocator("cuda:0") is alloc
    pool = torch.cuda.MemPool(alloc.allocator())
    with torch.cuda.use_mem_pool(pool):
        a = torch.randn(1024, 1024, device="cuda")
        b = torch.randn(1024, 1024, device="cuda")
        big = torch.empty(300 * MiB, dtype=torch.uint8, device="cuda")
    check_origin(kind, a.data_ptr())
    check_origin(kind, big.data_ptr())
    kernels(torch, a, b)
    big.fill_(7)
    assert int(big[-1]) == 7

    # Freed on another stream: used there, recorded, dropped.
    side = torch.cuda.Stream()
    with torch.cuda.use_mem_pool(pool):
        e = torch.empty(MiB, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        e.fill_(3.0)
        total = e.sum()
    e.record_stream(side)
    del e
    torch.cuda.synchronize()
    assert float(total) == 3.0 * MiB

    # Registered with an engine: GPU memory, detected.
    eng = TransferEngine()
    assert eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        assert eng.register_memory(a.data_ptr(), a.numel() * a.element_size()) == 0
        assert eng.batch_register_memory([b.data_ptr(), big.data_ptr()], [b.numel() * 4, big.numel()], "cpu:0") == 0
        assert eng.batch_unregister_memory([a.data_ptr(), b.data_ptr(), big.data_ptr()]) == 0
    finally:
        eng.close()

    del a, b, big
    del pool
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    if kind == "stream":
        StreamAllocator.trim(0)
        assert StreamAllocator.stats(0)["used"] == 0, "every segment went back through mc_stream_free"


CURRENT = """
import sys, torch
from pymooncake.allocator import {cls}
from pymooncake.engine import TransferEngine
{setup}
torch.cuda.memory.change_current_allocator({cls}.get_allocator(0))
a = torch.randn(512, 512, device="cuda")
b = torch.randn(512, 512, device="cuda")
c = a @ b
torch.testing.assert_close(c.cpu(), a.cpu() @ b.cpu(), rtol=1e-3, atol=1e-2)
# Allocated and used on a side stream, freed there (its allocation stream).
side = torch.cuda.Stream()
with torch.cuda.stream(side):
    t = torch.full((1 << 20,), 5.0, device="cuda")
    s = t.sum()
    del t
side.synchronize()
assert float(s) == 5.0 * (1 << 20)
# Two engines in this process move one tensor into another.
x = torch.arange(1 << 20, dtype=torch.int32, device="cuda")
y = torch.zeros_like(x)
e1, e2 = TransferEngine(), TransferEngine()
assert e1.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
assert e2.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
assert e1.register_memory(x.data_ptr(), x.numel() * 4) == 0
assert e2.register_memory(y.data_ptr(), y.numel() * 4) == 0
torch.cuda.synchronize()
assert e1.transfer_sync_write(e2.get_segment_name(), x.data_ptr(), y.data_ptr(), x.numel() * 4) == 0
assert torch.equal(x, y)
e1.close(); e2.close()
del a, b, c, x, y
torch.cuda.synchronize()
print("OK")
"""


@pytest.mark.parametrize("kind", KINDS)
def test_allocator_as_current_allocator(kind: str, request: pytest.FixtureRequest) -> None:
    """change_current_allocator must come before any CUDA allocation: each
    kind runs in a fresh interpreter."""
    from pmtest import run_python

    cls = {"stream": "StreamAllocator", "nvlink": "NVLinkAllocator", "barex": "BarexAllocator"}[kind]
    setup = ""
    if kind == "barex":
        setup = f"BarexAllocator.search_paths = ({request.getfixturevalue('fake_barex')!r},)"
    r = run_python(CURRENT.format(cls=cls, setup=setup), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_raw_ptr_outside_allocation_is_refused(torch: Any, gpu_engine: TransferEngine) -> None:
    lib = ctypes.CDLL(NVLinkAllocator.library())
    lib.mc_nvlink_malloc.restype = ctypes.c_void_p
    lib.mc_nvlink_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    lib.mc_nvlink_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    p = lib.mc_nvlink_malloc(2 * MiB, 0, None)
    assert p, NVLinkAllocator.last_error()
    try:
        # The last byte lies past the allocation: not one kind of memory.
        assert gpu_engine.register_memory(p, 64 * MiB) == -1
        assert gpu_engine.register_memory(p, 2 * MiB) == 0
        assert gpu_engine.unregister_memory(p) == 0
        info = NVLinkAllocator.rdma_info(p)
        assert set(info) == {"rdma_capable", "dmabuf"}
    finally:
        lib.mc_nvlink_free(p, 2 * MiB, 0, None)
