#!/usr/bin/env python3
"""One transfer-engine peer, driven over stdin/stdout, for interop tests.

The same script runs either implementation:

    --impl mooncake     imports mooncake.engine   (run it with the Mooncake venv's python)
    --impl pymooncake   imports pymooncake.engine (run it with our python)

The two engines never share a process: each peer is its own subprocess.

Roles
-----
target     initialize, map ``--size`` bytes plus a guard area, register only the
           first ``--size`` bytes (or use allocate_managed_buffer with
           ``--buffer managed``), print the hello line, then serve commands.
initiator  initialize, allocate a local managed buffer of ``--size`` bytes, print
           the hello line, then serve commands.

Protocol
--------
Every line on stdout is one JSON object. The first is the hello:

    {"ok": true, "role", "impl", "version", "name", "rpc_port", "buffer", "size",
     "guard", "pid"}

``name`` is the segment name peers must use: ``<host>:<rpc_port>`` in P2P
mode (host from ``--hostname``, default 127.0.0.1), the ``--hostname``
otherwise. Then each line on stdin is one command, answered by exactly one
line:

    {"cmd": "fill", "addr": A, "length": N, "seed": S}  -> {"ok", "sha256"}
        write pattern(S, N) at A with ctypes (not through the engine)
    {"cmd": "digest", "addr": A, "length": N}           -> {"ok", "sha256"}
    {"cmd": "peek", "addr": A, "length": N}             -> {"ok", "hex"}
    {"cmd": "zero", "addr": A, "length": N}             -> {"ok"}
    {"cmd": "call", "method": M, "args": [...], "kwargs": {...}} -> {"ok", "result"}
        call engine.M; an argument {"opcode": "Read"|"Write"} becomes a
        TransferOpcode and {"notify": [name, msg]} a TransferNotify; notify lists
        in results become [{"name", "msg"}]
    {"cmd": "exit"}                                      -> {"ok"} and exit 0

A command that raises answers {"ok": false, "error": "..."}. Memory is read and
written with ctypes so that data checks never depend on the engine under test.
Engine logs go to stderr; the real stdout is kept for the protocol only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import mmap
import os
import sys
from typing import Any, TextIO

from pattern import digest, pattern

GUARD = 64 * 1024  # bytes mapped after a target's registered region, never registered


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", required=True, choices=["mooncake", "pymooncake"])
    p.add_argument("--role", required=True, choices=["target", "initiator"])
    p.add_argument("--size", type=int, default=1 << 20, help="buffer size in bytes (0: none)")
    p.add_argument("--buffer", choices=["mmap", "managed"], default=None,
                   help="target: mmap+register_memory (default); initiator: managed (default)")
    p.add_argument("--metadata", default="P2PHANDSHAKE", help="metadata conn string")
    p.add_argument("--hostname", default="127.0.0.1", help="local_hostname for initialize")
    p.add_argument("--protocol", default="tcp")
    return p.parse_args(argv)


def protocol_stdout() -> TextIO:
    """Keep the real stdout for JSON lines; send fd 1 to stderr for native logs."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def load(impl: str) -> tuple[Any, str]:
    module = importlib.import_module(f"{impl}.engine")
    dist = {"mooncake": "mooncake-transfer-engine-non-cuda", "pymooncake": "pymooncake"}[impl]
    try:
        from importlib.metadata import version

        ver = version(dist)
    except Exception:  # our package may run from a source tree without metadata
        ver = getattr(importlib.import_module(impl), "__version__", "unknown")
    return module, ver


class Peer:
    def __init__(self, args: argparse.Namespace, engine_mod: Any, version: str) -> None:
        self.args = args
        self.mod = engine_mod
        self.version = version
        self.te = engine_mod.TransferEngine()
        self.map: mmap.mmap | None = None
        self.buffer = 0
        self.managed = False

    def start(self) -> dict[str, Any]:
        a = self.args
        rc = self.te.initialize(a.hostname, a.metadata, a.protocol, "")
        if rc != 0:
            raise RuntimeError(f"initialize({a.hostname!r}, {a.metadata!r}) returned {rc}")
        port = self.te.get_rpc_port()
        # P2P: Mooncake keeps the host of local_hostname, drops any port, appends the RPC port.
        host = a.hostname.rsplit(":", 1)[0] if a.hostname.count(":") == 1 else a.hostname
        name = f"{host}:{port}" if a.metadata == "P2PHANDSHAKE" else a.hostname
        mode = a.buffer or ("mmap" if a.role == "target" else "managed")
        if a.size == 0:
            mode = "none"  # no buffer: lets a harness see an engine with nothing registered
        elif mode == "mmap":
            self.map = mmap.mmap(-1, a.size + GUARD)
            self.buffer = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
            rc = self.te.register_memory(self.buffer, a.size)
            if rc != 0:
                raise RuntimeError(f"register_memory({self.buffer:#x}, {a.size}) returned {rc}")
        else:
            self.buffer = self.te.allocate_managed_buffer(a.size)
            if self.buffer == 0:
                raise RuntimeError(f"allocate_managed_buffer({a.size}) returned 0")
            self.managed = True
        return {
            "ok": True, "role": a.role, "impl": a.impl, "version": self.version,
            "name": name, "rpc_port": port, "buffer": self.buffer, "size": a.size,
            "guard": GUARD if mode == "mmap" else 0, "pid": os.getpid(),
        }

    def stop(self) -> None:
        if self.map is not None:
            self.te.unregister_memory(self.buffer)
        elif self.managed:
            self.te.free_managed_buffer(self.buffer, self.args.size)
        close = getattr(self.te, "close", None)  # pymooncake has one; Mooncake relies on GC
        if close is not None:
            close()
        del self.te
        gc.collect()

    def convert_arg(self, v: Any) -> Any:
        if isinstance(v, dict) and set(v) == {"opcode"}:
            return getattr(self.mod.TransferOpcode, v["opcode"])
        if isinstance(v, dict) and set(v) == {"notify"}:
            name, msg = v["notify"]
            return self.mod.TransferNotify(name, msg)
        return v

    def convert_result(self, v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return {"hex": bytes(v).hex()}
        if isinstance(v, list):
            return [self.convert_result(x) for x in v]
        if hasattr(v, "name") and hasattr(v, "msg"):
            return {"name": v.name, "msg": v.msg}
        return v

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "fill":
            data = pattern(req["seed"], req["length"])
            ctypes.memmove(req["addr"], data, len(data))
            return {"ok": True, "sha256": digest(data)}
        if cmd == "digest":
            return {"ok": True, "sha256": digest(ctypes.string_at(req["addr"], req["length"]))}
        if cmd == "peek":
            return {"ok": True, "hex": ctypes.string_at(req["addr"], req["length"]).hex()}
        if cmd == "zero":
            ctypes.memset(req["addr"], 0, req["length"])
            return {"ok": True}
        if cmd == "call":
            args = [self.convert_arg(x) for x in req.get("args", [])]
            kwargs = {k: self.convert_arg(x) for k, x in req.get("kwargs", {}).items()}
            result = getattr(self.te, req["method"])(*args, **kwargs)
            return {"ok": True, "result": self.convert_result(result)}
        raise ValueError(f"unknown command {cmd!r}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = protocol_stdout()
    try:
        mod, ver = load(args.impl)
        peer = Peer(args, mod, ver)
        hello = peer.start()
    except Exception as e:  # report startup failures on the protocol channel too
        out.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}) + "\n")
        return 2
    out.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "exit":
            break
        try:
            reply = peer.handle(req)
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
    peer.stop()
    out.write(json.dumps({"ok": True}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
