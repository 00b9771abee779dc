"""pymooncake's allocators under a real torch workload: a small transformer's
forward and backward passes, a few hundred steps, every activation and
gradient allocated in a ``torch.cuda.MemPool`` over the allocator, on two
streams at once (two models, each on its own stream, sharing the pool), and
all of the pool's memory back with the driver once the pool is deleted
(``torch.cuda.mem_get_info`` before and after).

Each kind runs in a fresh interpreter, so that torch's own caching of the
first kind cannot hide a leak of the second. The figures (time per step,
bytes the pool held at its peak, bytes not returned) are printed as one
JSON line per kind: ``pytest -s`` shows them; docs/gpu.md records a run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

STEPS = 300

WORKLOAD = """
import json, time, torch
from pymooncake.allocator import {cls}

STEPS = {steps}
torch.manual_seed(0)
dev = torch.device("cuda:0")

class Block(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(), torch.nn.Linear(4 * d, d))
    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))

def model():
    return torch.nn.Sequential(*[Block(256, 4) for _ in range(4)], torch.nn.Linear(256, 256)).to(dev)

# Warm up outside the pool: the kernels, cuBLAS and the allocator's own
# state load once and stay; what the pool holds must all come back.
def warm():
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    xw = torch.randn(16, 128, 256, device=dev)
    for s in (torch.cuda.current_stream(), torch.cuda.Stream()):
        with torch.cuda.stream(s):
            torch.nn.functional.mse_loss(m(xw), xw).backward()
            opt.step()
    torch.cuda.synchronize()
warm()
alloc = {cls}.get_allocator(0)
torch.cuda.empty_cache()
torch.cuda.synchronize()
free_before, _ = torch.cuda.mem_get_info()
pool = torch.cuda.MemPool(alloc.allocator())
streams = [torch.cuda.Stream(), torch.cuda.Stream()]
losses = []
with torch.cuda.use_mem_pool(pool):
    models = [model(), model()]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    x = torch.randn(16, 128, 256, device=dev)
    target = torch.randn(16, 128, 256, device=dev)
    torch.cuda.synchronize()
    peak = 0
    start = time.perf_counter()
    for step in range(STEPS):
        for m, opt, s in zip(models, opts, streams):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.mse_loss(m(x), target)
                loss.backward()
                opt.step()
                if step % 50 == 0 or step == STEPS - 1:
                    losses.append(float(loss))
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        if step % 25 == 0:
            peak = max(peak, free_before - torch.cuda.mem_get_info()[0])
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    x.record_stream(streams[0])
assert all(l == l for l in losses), "NaN loss"
assert losses[-1] < losses[0], f"the models did not learn: {{losses}}"
del models, opts, x, target, loss, m, opt
torch.cuda.synchronize()
held = free_before - torch.cuda.mem_get_info()[0]
# cuBLAS keeps a workspace per stream, allocated (here, from the pool) at
# its first matmul on that stream and held until cleared.
torch._C._cuda_clearCublasWorkspaces()
del pool
torch.cuda.synchronize()
torch.cuda.empty_cache()
{trim}
free_after, _ = torch.cuda.mem_get_info()
print(json.dumps({{"allocator": "{cls}", "steps": STEPS, "streams": 2,
                  "ms_per_step": round(1000 * elapsed / STEPS, 3),
                  "peak_bytes": peak, "held_before_delete": held,
                  "not_returned": free_before - free_after, "losses": losses,
                  "torch_reserved_after": torch.cuda.memory_reserved(),
                  "torch_allocated_after": torch.cuda.memory_allocated(),
                  "pool_after": {cls}.stats(0)}}))
"""

TRIM = {"StreamAllocator": "StreamAllocator.trim(0)", "NVLinkAllocator": ""}


@pytest.mark.parametrize("cls", ["StreamAllocator", "NVLinkAllocator"])
def test_model_in_mempool(cls: str, torch: Any) -> None:
    from pmtest import run_python

    r = run_python(WORKLOAD.format(cls=cls, steps=STEPS, trim=TRIM[cls]), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    line = r.stdout.strip().splitlines()[-1]
    fig = json.loads(line)
    print(line)
    assert fig["held_before_delete"] > 0, "the pool held no memory: the workload did not use it"
    # The allocator's own accounting: nothing it handed torch is still out,
    # and (after trim) nothing is cached.
    pool = fig["pool_after"]
    for key in ("nvlink_allocs", "nvlink_bytes", "used", "reserved"):
        assert pool[key] == 0, f"{cls}: {key} is {pool[key]} after deleting the pool: {pool}"
    # And the driver's: what the device lost is what torch's own caching
    # allocator still reserves (the backward pass's thread does not route
    # to the pool) plus what the CUDA libraries loaded on the way keep.
    lost = fig["not_returned"] - fig["torch_reserved_after"]
    assert lost < 64 << 20, f"{cls}: {fig['not_returned']} bytes not returned after deleting the pool"
