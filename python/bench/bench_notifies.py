"""Cost of draining many large notifies with get_notifies().

    python python/bench/bench_notifies.py [--count 1000] [--size 1048576]

This process is the target. A sender process (multiprocessing spawn) makes
--count one-byte batch_transfer_sync writes into it, each carrying a
TransferNotify of --size bytes; then this process times one
get_notifies() call that drains them all, checks every notify, and reports
the resident set before the call and its peak during the call (VmHWM,
reset just before through /proc/self/clear_refs). The target's notify
limits and handshake frame limit are raised so that every notify is
queued.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import time
from multiprocessing.queues import Queue
from typing import Any

from pymooncake.engine import TransferEngine, TransferNotify, TransferOpcode


def status_kib(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def sender(target: str, peer_addr: int, count: int, size: int, out: Queue[Any]) -> None:
    """Send count notifies of size bytes to target, one per 1-byte write."""
    e = TransferEngine()
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        out.put({"error": "sender initialize failed"})
        return
    buf = ctypes.create_string_buffer(16)
    e.register_memory(ctypes.addressof(buf), 16)
    msg = "x" * size
    failed = 0
    t0 = time.perf_counter()
    for i in range(count):
        rc = e.batch_transfer_sync(target, [ctypes.addressof(buf)], [peer_addr], [1], TransferOpcode.Write, TransferNotify(f"n{i}", msg))
        failed += rc != 0
    out.put({"failed": failed, "send_s": time.perf_counter() - t0})
    e.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=1 << 20, help="bytes of each notify's message")
    args = p.parse_args()

    total = args.count * (args.size + 16)
    os.environ.setdefault("MC_HANDSHAKE_MAX_LENGTH", str(min(128 << 20, args.size + (1 << 20))))
    for key in ("PYMOONCAKE_NOTIFY_MAX_BYTES", "PYMOONCAKE_NOTIFY_MAX_BYTES_PER_PEER"):
        os.environ.setdefault(key, str(total))
    for key in ("PYMOONCAKE_NOTIFY_MAX_COUNT", "PYMOONCAKE_NOTIFY_MAX_COUNT_PER_PEER"):
        os.environ.setdefault(key, str(max(args.count, 1)))

    e = TransferEngine()
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("initialize failed")
    target = ctypes.create_string_buffer(16)
    e.register_memory(ctypes.addressof(target), 16)

    ctx = multiprocessing.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    proc = ctx.Process(target=sender, args=(e.get_segment_name(), ctypes.addressof(target), args.count, args.size, out))
    proc.start()
    sent = out.get()
    proc.join()
    if "error" in sent:
        raise SystemExit(sent["error"])

    rss_before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    t0 = time.perf_counter()
    got = e.get_notifies()
    drain_s = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    ok = len(got) == args.count - sent["failed"] and all(n.name == f"n{i}" and len(n.msg) == args.size for i, n in enumerate(got))
    print(
        json.dumps(
            {
                "count": args.count,
                "size": args.size,
                "refused_or_failed": sent["failed"],
                "send_s": round(sent["send_s"], 2),
                "drained": len(got),
                "checked": ok,
                "drain_s": round(drain_s, 3),
                "rss_before_mib": rss_before // 1024,
                "peak_during_drain_mib": peak // 1024,
            }
        )
    )
    del got
    e.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
