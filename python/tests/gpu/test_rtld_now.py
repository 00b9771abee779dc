"""The extension loaded the way torch loads a pluggable allocator: by its
path alone, with RTLD_NOW, in a fresh process that never imported it
(DESIGN rule 2; issue 18 item 2).

``torch.cuda.memory.CUDAPluggableAllocator(path, alloc, free)`` opens the
file with ``ctypes.CDLL`` (RTLD_NOW), so every symbol must be bound at
load: the extension leaves none for NVML (nvmlsym's trampolines) or any
other run-time library. The allocator binds itself to the CUDA driver on
its first call, so no pymooncake call is needed before. The path is the
extension of whichever pymooncake is importable (the installed wheel under
scripts/test_wheel_gpu.sh), found without importing it. Then NVML: the
topology, listed through go-nvml and the trampolines, after such a load.
"""

from __future__ import annotations

from typing import Any

from pmtest import run_python

# torch opens the extension from its path; it is used in a MemPool on two
# streams; the memory comes from mc_stream_alloc's CUDA pool; deleting the
# pool hands every segment back through mc_stream_free.
PATH_ALONE = r"""
import ctypes, importlib.util, os, sys
import torch

path = os.path.realpath(importlib.util.find_spec("pymooncake._gopy._pymooncake_go").origin)
maps = lambda: open("/proc/self/maps").read()
assert path not in maps(), "the extension is loaded before torch opens it"
alloc = torch.cuda.memory.CUDAPluggableAllocator(path, "mc_stream_alloc", "mc_stream_free")
assert path in maps(), "torch did not load the extension"

cu = ctypes.CDLL("libcuda.so.1")
def mempool_of(ptr):
    v = ctypes.c_uint64(0)
    rc = cu.cuPointerGetAttribute(ctypes.byref(v), ctypes.c_int(17), ctypes.c_uint64(ptr))  # MEMPOOL_HANDLE
    assert rc == 0, rc
    return v.value

pool = torch.cuda.MemPool(alloc.allocator())
side = torch.cuda.Stream()
with torch.cuda.use_mem_pool(pool):
    for i in range(16):
        a = torch.full((1 << 20,), float(i), device="cuda")
        big = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            b = a * 2 + 1
            big.fill_(i)
        torch.cuda.current_stream().wait_stream(side)
        a.record_stream(side)
        big.record_stream(side)
        assert mempool_of(a.data_ptr()) != 0 and mempool_of(big.data_ptr()) != 0, "not mc_stream_alloc's pool"
        assert torch.equal(b, torch.full_like(a, 2.0 * i + 1)), i
        assert int(big[-1]) == i, i
        del a, b, big
    m = torch.randn(1024, 1024, device="cuda")
    torch.testing.assert_close((m @ m).cpu(), m.cpu() @ m.cpu(), rtol=1e-3, atol=1e-2)
    del m
torch.cuda.synchronize()
# cuBLAS keeps a workspace per stream, allocated (here, from the pool) at its
# first matmul and held until cleared: not a leak of the pool's.
torch._C._cuda_clearCublasWorkspaces()
assert "pymooncake._gopy._pymooncake_go" not in sys.modules, "Python imported the extension"

# The same file, now imported by Python: one object, one Go runtime. Its
# stream pool serves the MemPool's segments until the pool is deleted,
# then has every byte back.
from pymooncake.allocator import StreamAllocator
assert os.path.realpath(StreamAllocator.library()) == path
held = StreamAllocator.stats(0)["used"]
assert held >= 64 << 20, f"the MemPool's segments are not in mc_stream_alloc's pool: {held}"
del pool
torch.cuda.synchronize()
torch.cuda.empty_cache()
StreamAllocator.trim(0)
assert StreamAllocator.stats(0)["used"] == 0, StreamAllocator.stats(0)
print(f"OK {held} bytes held by the MemPool, all returned")
"""

# A fresh process loads the extension by path with RTLD_NOW first, then
# lists GPUs through NVML.
TOPOLOGY = r"""
import ctypes, importlib.util, json, os
import torch

path = importlib.util.find_spec("pymooncake._gopy._pymooncake_go").origin
ctypes.CDLL(path, mode=os.RTLD_NOW)
from pymooncake.engine import TransferEngine
topo = json.loads(TransferEngine().get_local_topology())
gpus = sorted(k for k in topo if k.startswith("cuda:"))
want = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
assert sorted(gpus) == sorted(want), (gpus, want)
print("OK", gpus)
"""


def test_pluggable_allocator_from_path_alone(torch: Any) -> None:
    r = run_python(PATH_ALONE, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().startswith("OK"), r.stdout + r.stderr


def test_topology_after_rtld_now_load(torch: Any) -> None:
    r = run_python(TOPOLOGY, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().startswith("OK"), r.stdout + r.stderr
