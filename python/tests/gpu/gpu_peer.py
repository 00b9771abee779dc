"""A target engine in its own process for the GPU suite.

``python gpu_peer.py SIZE [--vmm]``: initializes an engine on 127.0.0.1
(P2P), allocates SIZE bytes of GPU memory (a torch tensor on device 0; with
``--vmm`` from pymooncake's NVLinkAllocator in a ``torch.cuda.MemPool``:
cuMemCreate memory) and of host memory, registers both, prints
``{"rc", "segment", "gpu", "host", "pid"}`` and answers one JSON command per
line:

  {"op": "fill", "where": "gpu"|"host", "seed": S}     -> {"digest": ...}
  {"op": "digest", "where": ..., "off": O, "n": N}     -> {"digest": ...}
  {"op": "set", "where": ..., "value": V}              -> {"ok": true}
  {"op": "check", "where": ..., "value": V}            -> {"ok": bool}
  {"op": "unregister"|"register", "where": ...}        -> {"rc": rc}
  {"op": "quit"}
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from typing import Any

from pymooncake.engine import TransferEngine

torch = importlib.import_module("torch")


def main() -> int:
    size = int(sys.argv[1])
    vmm = "--vmm" in sys.argv[2:]
    e = TransferEngine()
    rc = e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    pool: Any = None
    if vmm:
        from pymooncake.allocator import NVLinkAllocator

        pool = torch.cuda.MemPool(NVLinkAllocator.get_allocator(0).allocator())
        with torch.cuda.use_mem_pool(pool):
            gpu = torch.zeros(size, dtype=torch.uint8, device="cuda:0")
    else:
        gpu = torch.zeros(size, dtype=torch.uint8, device="cuda:0")
    host = torch.zeros(size, dtype=torch.uint8)
    torch.cuda.synchronize()
    if rc == 0:
        rc = e.batch_register_memory([gpu.data_ptr(), host.data_ptr()], [size, size])
    bufs = {"gpu": gpu, "host": host}
    hello = {"rc": rc, "segment": e.get_segment_name(), "gpu": gpu.data_ptr(), "host": host.data_ptr(), "pid": os.getpid()}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        t = bufs[cmd["where"]]
        out: dict[str, Any]
        if cmd["op"] == "fill":
            g = torch.Generator(device=t.device).manual_seed(cmd["seed"])
            t.copy_(torch.randint(0, 256, (size,), dtype=torch.uint8, device=t.device, generator=g))
            torch.cuda.synchronize()
            out = {"digest": hashlib.sha256(t.cpu().numpy().tobytes()).hexdigest()}
        elif cmd["op"] == "digest":
            torch.cuda.synchronize()
            part = t[cmd["off"] : cmd["off"] + cmd["n"]]
            out = {"digest": hashlib.sha256(part.cpu().numpy().tobytes()).hexdigest()}
        elif cmd["op"] == "set":
            t.fill_(cmd["value"])
            torch.cuda.synchronize()
            out = {"ok": True}
        elif cmd["op"] == "check":
            torch.cuda.synchronize()
            out = {"ok": bool(torch.all(t == cmd["value"]).item())}
        elif cmd["op"] == "unregister":
            out = {"rc": e.unregister_memory(t.data_ptr())}
        elif cmd["op"] == "register":
            out = {"rc": e.register_memory(t.data_ptr(), size)}
        else:
            out = {"error": f"unknown op {cmd['op']!r}"}
        print(json.dumps(out), flush=True)
    e.batch_unregister_memory([gpu.data_ptr(), host.data_ptr()])
    e.close()
    del gpu, pool
    return 0


if __name__ == "__main__":
    sys.exit(main())
