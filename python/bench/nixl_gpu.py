#!/usr/bin/env python3
"""NIXL (UCX backend) between two processes on one GPU, for comparison with
pymooncake's same-host GPU path (docs/gpu.md).

    python3 python/bench/nixl_gpu.py [--sizes 1M,16M,256M,1G] [--iters N]

Needs the ``nixl`` package (the ``nixl-cu13`` wheel; its torch ``nixl_ep``
extensions are not used) and torch with a CUDA device. A target process
registers one VRAM buffer; an initiator registers its own and WRITEs into
the target's, then READs back, about 4 GiB per size and direction after a
warm-up;
UCX picks its same-host path (``cuda_ipc``) by itself. The bytes are
checked once per size. Prints one JSON line per size and direction:
``{"engine": "nixl", "op": "write", "bytes": N, "gbps": ...}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from typing import Any

SIZES = "1M,16M,256M,1G"


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


def nixl_api() -> tuple[Any, Any]:
    """nixl_agent and nixl_agent_config, from the ``nixl`` meta-package or
    the CUDA-13 wheel's own module."""
    try:
        from nixl._api import nixl_agent, nixl_agent_config
    except ImportError:
        from nixl_cu13._api import nixl_agent, nixl_agent_config
    return nixl_agent, nixl_agent_config


def target(conn: Any, size: int) -> None:
    import torch

    nixl_agent, nixl_agent_config = nixl_api()
    agent = nixl_agent("target", nixl_agent_config(backends=["UCX"]))
    buf = torch.zeros(size, dtype=torch.uint8, device="cuda:0")
    reg = agent.register_memory(agent.get_reg_descs([buf]))
    assert reg is not None
    descs = agent.get_xfer_descs([buf])
    conn.send((agent.get_agent_metadata(), agent.get_serialized_descs(descs)))
    # Serve until told to stop; answer checksum requests.
    while True:
        msg = conn.recv()
        if msg == "stop":
            break
        if msg == "sum":
            torch.cuda.synchronize()
            conn.send(int(buf[::4097].sum()))
        if msg == "fill":
            buf.copy_(torch.arange(size, dtype=torch.int64, device="cuda:0").remainder(251).to(torch.uint8))
            torch.cuda.synchronize()
            conn.send("ok")
    agent.deregister_memory(reg)


def initiator(conn: Any, size: int, iters: int, out: Any) -> None:
    import torch

    nixl_agent, nixl_agent_config = nixl_api()
    agent = nixl_agent("initiator", nixl_agent_config(backends=["UCX"]))
    buf = torch.arange(size, dtype=torch.int64, device="cuda:0").remainder(253).to(torch.uint8)
    reg = agent.register_memory(agent.get_reg_descs([buf]))
    assert reg is not None
    meta, remote_descs = conn.recv()
    name = agent.add_remote_agent(meta)
    remote = agent.deserialize_descs(remote_descs)
    local = agent.get_xfer_descs([buf])

    def run(op: str) -> float:
        h = agent.initialize_xfer(op, local, remote, name)
        assert h, "initialize_xfer failed"
        start = time.perf_counter()
        for _ in range(iters):
            state = agent.transfer(h)
            while state != "DONE":
                assert state != "ERR", f"{op} failed"
                state = agent.check_xfer_state(h)
        elapsed = time.perf_counter() - start
        agent.release_xfer_handle(h)
        return elapsed

    run("WRITE")  # warm-up: connections, mappings
    wt = run("WRITE")
    conn.send("sum")
    want = int(buf[::4097].sum())
    assert conn.recv() == want, "the target's bytes differ from what was written"
    conn.send("fill")
    conn.recv()
    run("READ")
    rt = run("READ")
    torch.cuda.synchronize()
    check = torch.arange(size, dtype=torch.int64, device="cuda:0").remainder(251).to(torch.uint8)
    assert torch.equal(buf, check), "the bytes read differ from the target's"
    for op, t in (("write", wt), ("read", rt)):
        out.put({"engine": "nixl", "op": op, "bytes": size, "iters": iters, "gbps": round(size * iters / t / 1e9, 2)})
    agent.remove_remote_agent(name)
    agent.deregister_memory(reg)
    conn.send("stop")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default=SIZES)
    ap.add_argument("--iters", type=int, default=3, help="at least this many transfers per size")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    for s in args.sizes.split(","):
        size = parse_size(s)
        a, b = ctx.Pipe()
        out = ctx.Queue()
        t = ctx.Process(target=target, args=(a, size))
        iters = min(2000, max(args.iters, (4 << 30) // size))  # about 4 GiB a direction
        i = ctx.Process(target=initiator, args=(b, size, iters, out))
        t.start()
        i.start()
        i.join(300)
        t.join(60)
        if i.exitcode != 0 or t.exitcode != 0:
            print(json.dumps({"engine": "nixl", "bytes": size, "error": f"exit codes {i.exitcode}, {t.exitcode}"}))
            continue
        while not out.empty():
            print(json.dumps(out.get()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
