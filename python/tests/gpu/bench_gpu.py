"""GPU benchmarks of pymooncake (run by hand on an NVIDIA host; not a test).

    python python/tests/gpu/bench_gpu.py [--alloc] [--tcp] [--out FILE]

--alloc: latency of one allocation plus its free, by size (4 KiB to 256 MiB),
    each called from Python the way torch's allocator hooks are reached:
    torch's caching allocator (torch.cuda.caching_allocator_alloc/delete),
    pymooncake's stream allocator (mc_stream_alloc/free through ctypes),
    cuMemCreate per call (mc_nvlink_malloc/free through ctypes) and plain
    cuMemAlloc/cuMemFree (ctypes), with the cost of an empty ctypes call as
    the floor.
--tcp: throughput of two engines in two processes on this machine over TCP
    (loopback, PYMOONCAKE_SAME_HOST=0: no CUDA IPC, no cross-memory attach):
    GPU to GPU through the staging
    pipeline, against host to host, writes and reads of 16 blocks of 64 MiB.
Prints one JSON document (and writes it to --out).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu import gpulib
from pymooncake.allocator import NVLinkAllocator, StreamAllocator
from pymooncake.engine import TransferEngine

torch: Any = importlib.import_module("torch")

SIZES = [4 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20]


def timed(fn: Any, budget: float = 0.3, least: int = 20, most: int = 20000) -> dict[str, float]:
    """Per-call latency of fn() in microseconds: median, p99, mean."""
    for _ in range(3):
        fn()
    samples: list[float] = []
    end = time.perf_counter() + budget
    while len(samples) < most and (len(samples) < least or time.perf_counter() < end):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return {
        "median_us": round(statistics.median(samples), 2),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
        "mean_us": round(statistics.fmean(samples), 2),
        "n": len(samples),
    }


def bench_alloc() -> dict[str, Any]:
    lib = ctypes.CDLL(StreamAllocator.library())
    NVLinkAllocator.library()
    for a, f in (("mc_stream_alloc", "mc_stream_free"), ("mc_nvlink_malloc", "mc_nvlink_free")):
        getattr(lib, a).restype = ctypes.c_void_p
        getattr(lib, a).argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    cu = ctypes.CDLL("libcuda.so.1")
    cu.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    cu.cuMemFree_v2.argtypes = [ctypes.c_uint64]
    stream = torch.cuda.current_stream().cuda_stream
    torch.cuda.synchronize()

    def torch_caching(n: int) -> None:
        p = torch.cuda.caching_allocator_alloc(n, 0, stream)
        torch.cuda.caching_allocator_delete(p)

    def mc_stream(n: int) -> None:
        p = lib.mc_stream_alloc(n, 0, stream)
        assert p
        lib.mc_stream_free(p, n, 0, stream)

    def mc_nvlink(n: int) -> None:
        p = lib.mc_nvlink_malloc(n, 0, stream)
        assert p
        lib.mc_nvlink_free(p, n, 0, stream)

    def cu_mem_alloc(n: int) -> None:
        p = ctypes.c_uint64(0)
        assert cu.cuMemAlloc_v2(ctypes.byref(p), n) == 0
        assert cu.cuMemFree_v2(p.value) == 0

    out: dict[str, Any] = {"ctypes_call_floor": timed(lambda: lib.mc_nvlink_fabric(0), least=1000)}
    for name, fn in (
        ("torch_caching_allocator", torch_caching),
        ("mc_stream_alloc", mc_stream),
        ("cuMemCreate_per_call", mc_nvlink),
        ("cuMemAlloc", cu_mem_alloc),
    ):
        out[name] = {f"{n >> 10}KiB" if n < 1 << 20 else f"{n >> 20}MiB": timed(lambda n=n, fn=fn: fn(n)) for n in SIZES}
    torch.cuda.synchronize()
    StreamAllocator.trim(0)
    torch.cuda.empty_cache()
    return out


def bench_tcp(block: int = 64 << 20, blocks: int = 16, rounds: int = 5) -> dict[str, Any]:
    size = block * blocks
    # TCP, not CUDA IPC (see bench_cuda_ipc.py) nor cross-memory attach
    # for the host rows: both engines read it at initialize; the peer
    # inherits it.
    os.environ["PYMOONCAKE_SAME_HOST"] = "0"
    peer = gpulib.GPUPeer(size)
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    del os.environ["PYMOONCAKE_SAME_HOST"]
    local = {"gpu": torch.ones(size, dtype=torch.uint8, device="cuda:0"), "host": torch.ones(size, dtype=torch.uint8)}
    assert e.batch_register_memory([t.data_ptr() for t in local.values()], [size, size]) == 0
    remote = {"gpu": peer.gpu, "host": peer.host}
    out: dict[str, Any] = {"block_bytes": block, "blocks": blocks, "rounds": rounds}
    try:
        for src, dst in (("gpu", "gpu"), ("host", "host"), ("host", "gpu"), ("gpu", "host")):
            for op in ("write", "read"):
                fn = e.batch_transfer_sync_write if op == "write" else e.batch_transfer_sync_read
                locals_ = [local[src].data_ptr() + i * block for i in range(blocks)]
                remotes = [remote[dst] + i * block for i in range(blocks)]
                lengths = [block] * blocks
                assert fn(peer.segment, locals_, remotes, lengths) == 0  # warm-up: connections, stages
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    assert fn(peer.segment, locals_, remotes, lengths) == 0
                    times.append(time.perf_counter() - t0)
                out[f"{src}->{dst} {op}"] = {
                    "GB_per_s_median": round(size / statistics.median(times) / 1e9, 2),
                    "GB_per_s_best": round(size / min(times) / 1e9, 2),
                }
    finally:
        e.close()
        peer.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alloc", action="store_true")
    ap.add_argument("--tcp", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    both = not (args.alloc or args.tcp)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    if args.alloc or both:
        result["alloc_free_latency"] = bench_alloc()
    if args.tcp or both:
        result["tcp_throughput"] = bench_tcp()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
