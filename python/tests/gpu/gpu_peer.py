"""A target engine in its own process for the GPU suite.

``python gpu_peer.py SIZE``: initializes an engine on 127.0.0.1 (P2P),
allocates SIZE bytes of GPU memory (a torch tensor on device 0) and of host
memory, registers both, prints ``{"rc", "segment", "gpu", "host"}`` and
answers one JSON command per line:

  {"op": "fill", "where": "gpu"|"host", "seed": S}    -> {"digest": ...}
  {"op": "digest", "where": ..., "off": O, "n": N}    -> {"digest": ...}
  {"op": "quit"}
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys

from pymooncake.engine import TransferEngine

torch = importlib.import_module("torch")


def main() -> int:
    size = int(sys.argv[1])
    e = TransferEngine()
    rc = e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    gpu = torch.zeros(size, dtype=torch.uint8, device="cuda:0")
    host = torch.zeros(size, dtype=torch.uint8)
    if rc == 0:
        rc = e.batch_register_memory([gpu.data_ptr(), host.data_ptr()], [size, size])
    bufs = {"gpu": gpu, "host": host}
    print(json.dumps({"rc": rc, "segment": e.get_segment_name(), "gpu": gpu.data_ptr(), "host": host.data_ptr()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        t = bufs[cmd["where"]]
        if cmd["op"] == "fill":
            g = torch.Generator(device=t.device).manual_seed(cmd["seed"])
            t.copy_(torch.randint(0, 256, (size,), dtype=torch.uint8, device=t.device, generator=g))
            torch.cuda.synchronize()
            out = {"digest": hashlib.sha256(t.cpu().numpy().tobytes()).hexdigest()}
        else:
            torch.cuda.synchronize()
            part = t[cmd["off"] : cmd["off"] + cmd["n"]]
            out = {"digest": hashlib.sha256(part.cpu().numpy().tobytes()).hexdigest()}
        print(json.dumps(out), flush=True)
    e.batch_unregister_memory([gpu.data_ptr(), host.data_ptr()])
    e.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
