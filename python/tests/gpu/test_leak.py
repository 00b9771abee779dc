"""No leak: device free memory is back to where it started after 10,000
alloc/free cycles of mixed sizes through each allocator, called as torch
calls them (the C symbols of the extension), and through a torch MemPool."""

from __future__ import annotations

import ctypes
import random
from typing import Any

import pytest

from pymooncake.allocator import NVLinkAllocator, StreamAllocator

SIZES = [4 << 10, 64 << 10, 1 << 20, (3 << 20) + 77, 16 << 20, 64 << 20]


def symbols(lib: ctypes.CDLL, alloc: str, free: str) -> tuple[Any, Any]:
    a, f = getattr(lib, alloc), getattr(lib, free)
    a.restype = ctypes.c_void_p
    a.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    return a, f


@pytest.mark.parametrize("cls", [StreamAllocator, NVLinkAllocator])
def test_10000_cycles_return_all_memory(torch: Any, cls: type[StreamAllocator]) -> None:
    lib = ctypes.CDLL(cls.library())
    alloc, free = symbols(lib, *cls.symbols)
    stream = torch.cuda.current_stream().cuda_stream
    torch.cuda.synchronize()
    StreamAllocator.trim(0)
    before = torch.cuda.mem_get_info(0)[0]
    rng = random.Random(7)
    live: list[tuple[int, int]] = []
    for i in range(10_000):
        n = rng.choice(SIZES)
        p = alloc(n, 0, stream)
        assert p, f"cycle {i}: {cls.last_error()}"
        live.append((p, n))
        if len(live) > 8 or i == 9_999:
            rng.shuffle(live)
            while len(live) > (0 if i == 9_999 else 4):
                q, m = live.pop()
                free(q, m, 0, stream)
    torch.cuda.synchronize()
    StreamAllocator.trim(0)
    after = torch.cuda.mem_get_info(0)[0]
    assert after >= before, f"{cls.__name__} leaked {before - after} bytes"


@pytest.mark.parametrize("cls", [StreamAllocator, NVLinkAllocator])
def test_mempool_cycles_return_all_memory(torch: Any, cls: type[StreamAllocator]) -> None:
    torch.cuda.synchronize()
    StreamAllocator.trim(0)
    torch.cuda.empty_cache()
    before = torch.cuda.mem_get_info(0)[0]
    pool = torch.cuda.MemPool(cls.get_allocator(0).allocator())
    rng = random.Random(8)
    with torch.cuda.use_mem_pool(pool):
        for _ in range(10_000):
            t = torch.empty(rng.choice(SIZES), dtype=torch.uint8, device="cuda")
            t.fill_(1)
            del t
    del pool
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    StreamAllocator.trim(0)
    after = torch.cuda.mem_get_info(0)[0]
    assert after >= before, f"{cls.__name__} in a MemPool leaked {before - after} bytes"
