"""A pymooncake engine in its own process, for the multi-process tests.

Started as ``python peer_proc.py [SIZE [NAME METADATA]]``: it initializes
an engine on 127.0.0.1 in P2P mode (or as NAME with the metadata connection
string METADATA), allocates one managed buffer of SIZE bytes, prints one
JSON line ``{"rc", "segment", "addr", "size", "pid"}`` and then answers one
JSON command per stdin line with one JSON line:

  {"op": "read", "off": O, "n": N}          -> {"hex": ...}
  {"op": "write", "off": O, "hex": H}       -> {"rc": ...}
  {"op": "push", "segment": S, "remote": R, "off": O, "n": N}
                                            -> {"rc": ...}   (transfer_sync_write)
  {"op": "notifies"}                        -> {"notifies": [[name, msg], ...]}
  {"op": "quit"}                            -> exits after closing the engine
"""

from __future__ import annotations

import json
import os
import sys

from pymooncake.engine import TransferEngine


def main() -> int:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 20
    name, metadata = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("127.0.0.1", "P2PHANDSHAKE")
    e = TransferEngine()
    rc = e.initialize(name, metadata, "tcp", "")
    addr = e.allocate_managed_buffer(size) if rc == 0 else 0
    print(json.dumps({"rc": rc, "segment": e.get_segment_name(), "addr": addr, "size": size, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        out: dict[str, object]
        if op == "read":
            out = {"hex": e.read_bytes_from_buffer(addr + cmd["off"], cmd["n"]).hex()}
        elif op == "write":
            data = bytes.fromhex(cmd["hex"])
            out = {"rc": e.write_bytes_to_buffer(addr + cmd["off"], data, len(data))}
        elif op == "push":
            out = {"rc": e.transfer_sync_write(cmd["segment"], addr + cmd["off"], cmd["remote"], cmd["n"])}
        elif op == "notifies":
            out = {"notifies": [[n.name, n.msg] for n in e.get_notifies()]}
        elif op == "quit":
            break
        else:
            out = {"error": f"unknown op {op!r}"}
        print(json.dumps(out), flush=True)
    e.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
