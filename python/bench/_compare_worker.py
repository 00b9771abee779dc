#!/usr/bin/env python3
"""One engine process for compare.py, driven over stdin/stdout.

The same file runs under either interpreter, so it imports nothing but the
standard library and, once, the engine it is told to use:

    --impl mooncake     mooncake.engine   (the Mooncake venv's python, MC_FORCE_TCP=1)
    --impl pymooncake   pymooncake.engine (this repository's python, PYTHONPATH=<repo>)

The two engines never share a process.

Start-up: initialize(127.0.0.1, P2PHANDSHAKE, tcp), map ``--buffer`` bytes
(anonymous mmap, every page touched so that no run measures page faults),
register them, and print the hello line. Every line on stdout is then one
JSON object answering one command line on stdin:

    hello                      {"ok", "impl", "version", "role", "name", "buffer", "size", "pid"}
    {"cmd": "fill", "offset", "length", "seed"}   write pattern(seed) there -> {"ok", "sha256"}
    {"cmd": "digest", "offset", "length"}         -> {"ok", "sha256"}
    {"cmd": "run", ...}                           the timed workload (see run()) -> {"ok", ...}
    {"cmd": "calls", "seconds", "repeat"}         per-call cost of cheap calls -> {"ok", ...}
    {"cmd": "exit"}                               -> {"ok"}, then the process exits 0

A command that fails answers {"ok": false, "error"}. Engine logs (and
anything native code prints on fd 1) go to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib
import json
import mmap
import os
import sys
import threading
import time
from typing import Any, TextIO

CHUNK = 1 << 24  # pattern and digest work on 16 MiB pieces, to bound memory


def pattern_into(addr: int, length: int, seed: str) -> str:
    """Write ``length`` deterministic bytes for ``seed`` at addr; return their SHA-256."""
    h = hashlib.sha256()
    done = 0
    piece = 0
    while done < length:
        n = min(CHUNK, length - done)
        data = hashlib.shake_256(f"{seed}/{piece}".encode()).digest(n)
        ctypes.memmove(addr + done, data, n)
        h.update(data)
        done += n
        piece += 1
    return h.hexdigest()


def digest_at(addr: int, length: int) -> str:
    h = hashlib.sha256()
    done = 0
    while done < length:
        n = min(CHUNK, length - done)
        h.update(ctypes.string_at(addr + done, n))
        done += n
    return h.hexdigest()


def layout(block: int, batch: int, threads: int, t: int) -> list[int]:
    """Offsets of thread t's blocks: block i of thread t sits at
    block * (i * threads + t), as in Mooncake's transfer_engine_bench, so the
    threads' blocks interleave and never overlap."""
    return [block * (i * threads + t) for i in range(batch)]


def percentile(sorted_ns: list[int], q: float) -> float:
    """The q-th percentile (nearest rank) of sorted values, in microseconds."""
    if not sorted_ns:
        return 0.0
    i = min(len(sorted_ns) - 1, max(0, round(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[i] / 1e3


class Worker:
    def __init__(self, impl: str, role: str, size: int) -> None:
        self.impl = impl
        self.role = role
        self.size = size
        self.mod = importlib.import_module(f"{impl}.engine")
        self.te = self.mod.TransferEngine()
        self.map = mmap.mmap(-1, size)
        self.buf = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        ctypes.memset(self.buf, 0, size)  # fault every page in now
        self.name = ""

    def start(self) -> dict[str, Any]:
        rc = self.te.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
        if rc != 0:
            raise RuntimeError(f"initialize returned {rc}")
        self.name = f"127.0.0.1:{self.te.get_rpc_port()}"
        rc = self.te.register_memory(self.buf, self.size)
        if rc != 0:
            raise RuntimeError(f"register_memory({self.buf:#x}, {self.size}) returned {rc}")
        return {
            "ok": True,
            "impl": self.impl,
            "version": version(self.impl),
            "role": self.role,
            "name": self.name,
            "buffer": self.buf,
            "size": self.size,
            "pid": os.getpid(),
        }

    def stop(self) -> None:
        self.te.unregister_memory(self.buf)
        close = getattr(self.te, "close", None)  # pymooncake has one; Mooncake relies on GC
        if close is not None:
            close()
        del self.te

    def span(self, offset: int, length: int) -> int:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"[{offset}, {offset + length}) is outside the {self.size}-byte buffer")
        return self.buf + offset

    def run(
        self, segment: str, remote: int, op: str, api: str, block: int, batch: int, threads: int, duration: float, warmup: int, max_seconds: float
    ) -> dict[str, Any]:
        """Move data to/from segment for ``duration`` seconds from ``threads``
        threads, each calling the batch API (``api == "batch"``:
        batch_transfer_sync_{op} with ``batch`` blocks) or the single-block API
        (``api == "single"``: transfer_sync_{op}, batch must be 1) in a loop on
        its own blocks (see layout). Each thread first makes ``warmup`` calls,
        untimed. A thread stops at the first failure or at ``max_seconds``;
        only calls that returned 0 count towards bytes."""
        if block * batch * threads > self.size:
            raise ValueError(f"block {block} x batch {batch} x threads {threads} exceeds the {self.size}-byte buffer")
        if api == "single" and batch != 1:
            raise ValueError("the single-block API moves one block per call")
        te = self.te
        if api == "batch":
            move = te.batch_transfer_sync_write if op == "write" else te.batch_transfer_sync_read
        else:
            move = te.transfer_sync_write if op == "write" else te.transfer_sync_read
        stop = threading.Event()
        gate = threading.Barrier(threads + 1)
        lat: list[list[int]] = [[] for _ in range(threads)]
        failures: list[str] = []
        clock = time.perf_counter_ns

        def worker(t: int) -> None:
            offs = layout(block, batch, threads, t)
            locs = [self.buf + o for o in offs]
            rems = [remote + o for o in offs]
            lens = [block] * batch
            if api == "batch":
                args: tuple[Any, ...] = (segment, locs, rems, lens)
            else:
                args = (segment, locs[0], rems[0], block)
            mine = lat[t]
            try:
                for i in range(warmup):
                    rc = move(*args)
                    if rc != 0:
                        failures.append(f"thread {t}: warm-up call {i} returned {rc}")
                        break
            finally:
                try:
                    gate.wait(timeout=max_seconds)
                except threading.BrokenBarrierError:
                    return
            if failures:
                return
            while not stop.is_set():
                t0 = clock()
                rc = move(*args)
                t1 = clock()
                if rc != 0:
                    failures.append(f"thread {t}: call {len(mine)} returned {rc}")
                    stop.set()
                    return
                mine.append(t1 - t0)

        pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
        for w in pool:
            w.start()
        try:
            gate.wait(timeout=max_seconds)
        except threading.BrokenBarrierError:
            stop.set()
            raise RuntimeError(f"warm-up did not finish in {max_seconds} s: {failures}") from None
        if failures:
            stop.set()
        start = time.perf_counter()
        stop.wait(duration)
        stop.set()
        for w in pool:
            w.join(max(0.0, start + max_seconds - time.perf_counter()))
        if any(w.is_alive() for w in pool):
            raise RuntimeError(f"a call was still running {max_seconds} s after the start")
        seconds = time.perf_counter() - start
        every = sorted(x for one in lat for x in one)
        calls = len(every)
        return {
            "ok": True,
            "seconds": seconds,
            "calls": calls,
            "blocks": calls * batch,
            "bytes": calls * batch * block,
            "failures": failures,
            "p50_us": percentile(every, 50),
            "p99_us": percentile(every, 99),
            "mean_us": (sum(every) / calls / 1e3) if calls else 0.0,
        }

    def calls(self, seconds: float, repeat: int) -> dict[str, Any]:
        """Per-call cost, in ns, of get_rpc_port() and of register_memory +
        unregister_memory of a 4 KiB region outside the big buffer: the best
        and the median of ``repeat`` runs of about ``seconds`` each."""
        te = self.te
        small = ctypes.create_string_buffer(4096)
        addr = ctypes.addressof(small)

        def reg_unreg() -> None:
            if te.register_memory(addr, 4096) != 0:
                raise RuntimeError("register_memory of 4 KiB returned non-zero")
            if te.unregister_memory(addr) != 0:
                raise RuntimeError("unregister_memory of 4 KiB returned non-zero")

        def rpc_port() -> None:
            te.get_rpc_port()

        out: dict[str, Any] = {"ok": True}
        for key, fn in (("get_rpc_port", rpc_port), ("register_unregister", reg_unreg)):
            fn()
            # calibrate: how many calls fill `seconds`
            n, t0 = 1, time.perf_counter()
            while True:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                dt = time.perf_counter() - t0
                if dt >= seconds / 10 or n >= 1 << 24:
                    break
                n *= 4
            n = max(1, int(n * seconds / max(dt, 1e-9)))
            runs = []
            for _ in range(repeat):
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    fn()
                runs.append((time.perf_counter_ns() - t0) / n)
            runs.sort()
            out[key] = {"best_ns": runs[0], "median_ns": runs[len(runs) // 2], "calls": n, "repeat": repeat}
        return out

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "fill":
            return {"ok": True, "sha256": pattern_into(self.span(req["offset"], req["length"]), req["length"], req["seed"])}
        if cmd == "digest":
            return {"ok": True, "sha256": digest_at(self.span(req["offset"], req["length"]), req["length"])}
        if cmd == "run":
            return self.run(
                req["segment"],
                req["remote"],
                req["op"],
                req["api"],
                req["block"],
                req["batch"],
                req["threads"],
                req["duration"],
                req["warmup"],
                req["max_seconds"],
            )
        if cmd == "calls":
            return self.calls(req["seconds"], req["repeat"])
        raise ValueError(f"unknown command {cmd!r}")


def version(impl: str) -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version({"mooncake": "mooncake-transfer-engine-non-cuda", "pymooncake": "pymooncake"}[impl])
    except Exception:  # pymooncake runs from the source tree, without metadata
        return str(getattr(importlib.import_module(impl), "__version__", "unknown"))


def protocol_stdout() -> TextIO:
    """Keep the real stdout for JSON lines; send fd 1 to stderr for native logs."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", required=True, choices=["mooncake", "pymooncake"])
    p.add_argument("--role", required=True, choices=["target", "initiator"])
    p.add_argument("--buffer", type=int, required=True, help="bytes to map and register")
    args = p.parse_args(argv)
    out = protocol_stdout()
    try:
        w = Worker(args.impl, args.role, args.buffer)
        hello = w.start()
    except Exception as e:
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
            reply = w.handle(req)
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
    w.stop()
    out.write(json.dumps({"ok": True}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
