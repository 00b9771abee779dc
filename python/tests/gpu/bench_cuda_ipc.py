"""GPU-to-GPU through CUDA IPC between two processes on one GPU, against the
device-to-device copy bandwidth measured in this process in the same run
(run by hand on an NVIDIA host; not a test).

    python python/tests/gpu/bench_cuda_ipc.py [--block-mib 64] [--blocks 32] [--rounds 5] [--out FILE]

Measured, each as the median of --rounds timed rounds after a warm-up:

- ``d2d_cuMemcpyDtoDAsync``: cuMemcpyDtoDAsync of blocks*block bytes between
  two tensors of this process, timed with CUDA events (the reference), and
  ``d2d_torch_copy``: the same through ``Tensor.copy_``;
- ``h2d_torch_copy``: page-locked host memory to a tensor of this process;
- through pymooncake, to a second process on the same GPU holding
  cudaMalloc memory (legacy IPC) and NVLinkAllocator memory (VMM fd):
  ``batch_transfer_sync_write``/``_read`` of --blocks blocks of --block-mib
  MiB, GPU to GPU, page-locked host to GPU and pageable host to GPU
  (wall time of the call), and ``batch_transfer_write_on_cuda`` timed with
  CUDA events around it on one stream;
- ``ratio_ipc_gpu_to_gpu_vs_d2d``: the best IPC GPU-to-GPU figure of each
  memory kind over the cuMemcpyDtoDAsync reference (goal: at least 0.8).

Prints one JSON document (and writes it to --out).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu import gpulib
from pymooncake.engine import TransferEngine

torch: Any = importlib.import_module("torch")


def gbps(nbytes: int, seconds: list[float]) -> dict[str, float]:
    return {
        "GB_per_s_median": round(nbytes / statistics.median(seconds) / 1e9, 1),
        "GB_per_s_best": round(nbytes / min(seconds) / 1e9, 1),
    }


def device_timed(fn: Callable[[], Any], rounds: int) -> list[float]:
    """Seconds of the work fn queues on the current stream, by CUDA events."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    return out


def wall_timed(fn: Callable[[], int], rounds: int) -> list[float]:
    """Seconds of a synchronous call returning 0."""
    assert fn() == 0  # warm-up: connection, mappings
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        assert fn() == 0
        out.append(time.perf_counter() - t0)
    return out


def in_process(size: int, rounds: int) -> dict[str, Any]:
    cu = ctypes.CDLL("libcuda.so.1")
    cu.cuMemcpyDtoDAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p]
    a = torch.ones(size, dtype=torch.uint8, device="cuda")
    b = torch.empty(size, dtype=torch.uint8, device="cuda")
    pinned = torch.ones(size, dtype=torch.uint8).pin_memory()
    stream = torch.cuda.current_stream().cuda_stream

    def dtod() -> None:
        assert cu.cuMemcpyDtoDAsync_v2(b.data_ptr(), a.data_ptr(), size, stream) == 0

    return {
        "d2d_cuMemcpyDtoDAsync": gbps(size, device_timed(dtod, rounds)),
        "d2d_torch_copy": gbps(size, device_timed(lambda: b.copy_(a), rounds)),
        "h2d_torch_copy": gbps(size, device_timed(lambda: b.copy_(pinned, non_blocking=True), rounds)),
    }


def two_process(kind: str, block: int, blocks: int, rounds: int) -> dict[str, Any]:
    size = block * blocks
    peer = gpulib.GPUPeer(size, vmm=kind == "vmm")
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    local = {
        "gpu": torch.ones(size, dtype=torch.uint8, device="cuda"),
        "pinned": torch.ones(size, dtype=torch.uint8).pin_memory(),
        "pageable": torch.ones(size, dtype=torch.uint8),
    }
    assert e.batch_register_memory([t.data_ptr() for t in local.values()], [size] * len(local)) == 0
    remotes = [peer.gpu + i * block for i in range(blocks)]
    lengths = [block] * blocks
    out: dict[str, Any] = {"block_bytes": block, "blocks": blocks}
    try:
        for src in ("gpu", "pinned", "pageable"):
            locals_ = [local[src].data_ptr() + i * block for i in range(blocks)]

            def write(locals_: list[int] = locals_) -> int:
                return e.batch_transfer_sync_write(peer.segment, locals_, remotes, lengths)

            def read(locals_: list[int] = locals_) -> int:
                return e.batch_transfer_sync_read(peer.segment, locals_, remotes, lengths)

            out[f"{src}->peer_gpu write"] = gbps(size, wall_timed(write, rounds))
            out[f"peer_gpu->{src} read"] = gbps(size, wall_timed(read, rounds))
        s = torch.cuda.current_stream().cuda_stream
        gpu_locals = [local["gpu"].data_ptr() + i * block for i in range(blocks)]
        out["gpu->peer_gpu write_on_cuda"] = gbps(
            size, device_timed(lambda: e.batch_transfer_write_on_cuda(peer.segment, gpu_locals, remotes, lengths, s), rounds)
        )
        torch.cuda.synchronize()
        local["gpu"].fill_(3)
        assert e.batch_transfer_sync_write(peer.segment, gpu_locals, remotes, lengths) == 0
        assert peer.check("gpu", 3), "the bytes arrived"
    finally:
        e.close()
        peer.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-mib", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    block = args.block_mib << 20
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    result["in_process"] = in_process(block * args.blocks, args.rounds)
    torch.cuda.empty_cache()  # its tensors are gone
    ref = result["in_process"]["d2d_cuMemcpyDtoDAsync"]["GB_per_s_median"]
    for kind in ("cudamalloc", "vmm"):
        r = two_process(kind, block, args.blocks, args.rounds)
        best = max(r["gpu->peer_gpu write"]["GB_per_s_median"], r["peer_gpu->gpu read"]["GB_per_s_median"], r["gpu->peer_gpu write_on_cuda"]["GB_per_s_median"])
        r["ratio_ipc_gpu_to_gpu_vs_d2d"] = round(best / ref, 3)
        result[f"cuda_ipc_{kind}"] = r
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
