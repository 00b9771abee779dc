"""Latency of transfer_sync_write over loopback TCP (goal: p50 < 100 us
for 4 KiB).

    python python/bench/bench_loopback.py [--size 4096] [--iters 20000] [--op write|read]
                                          [--target-process]

Two engines on 127.0.0.1 in P2P mode, by default in this process (the
target's goroutines share the Go runtime); with --target-process the
target runs in a separate process started with multiprocessing's spawn.
Each call is timed with perf_counter_ns; the first --warmup calls are
dropped.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import os
import statistics
import time
from multiprocessing.connection import Connection

from pymooncake.engine import TransferEngine


def serve(size: int, conn: Connection) -> None:
    """The target of --target-process: register a buffer and wait."""
    e = TransferEngine()
    buf = ctypes.create_string_buffer(size)
    ok = e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0 and e.register_memory(ctypes.addressof(buf), size) == 0
    conn.send((ok, e.get_segment_name(), ctypes.addressof(buf)))
    conn.recv()  # until told to stop
    e.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--iters", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--op", choices=["write", "read"], default="write")
    p.add_argument("--target-process", action="store_true")
    args = p.parse_args()
    # TCP, as the name says: the same-host transports would carry these
    # engines otherwise (set PYMOONCAKE_SAME_HOST to measure them instead;
    # a spawned target inherits the environment).
    os.environ.setdefault("PYMOONCAKE_SAME_HOST", "0")

    initiator = TransferEngine()
    if initiator.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("initialize failed")
    local = ctypes.create_string_buffer(args.size)
    assert initiator.register_memory(ctypes.addressof(local), args.size) == 0

    child = None
    target = None
    if args.target_process:
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=serve, args=(args.size, child_end))
        child.start()
        ok, segment, remote = parent_end.recv()
        if not ok:
            raise SystemExit("target failed to start")
    else:
        target = TransferEngine()
        assert target.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
        remote_buf = ctypes.create_string_buffer(args.size)
        remote = ctypes.addressof(remote_buf)
        assert target.register_memory(remote, args.size) == 0
        segment = target.get_segment_name()

    move = initiator.transfer_sync_write if args.op == "write" else initiator.transfer_sync_read
    laddr = ctypes.addressof(local)
    clock = time.perf_counter_ns
    lat = []
    for i in range(args.warmup + args.iters):
        t0 = clock()
        rc = move(segment, laddr, remote, args.size)
        t1 = clock()
        if rc != 0:
            raise SystemExit(f"transfer {i} failed")
        if i >= args.warmup:
            lat.append(t1 - t0)

    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] / 1e3

    where = "target in another process" if args.target_process else "target in this process"
    over = ", ".join(initiator.get_metrics().get("peers", {}).get(segment, {}).get("open", {})) or "?"
    print(f"transfer_sync_{args.op} {args.size} B over {over} on loopback, {args.iters} calls ({where})")
    print(f"  p50 {pct(50):8.1f} us   p90 {pct(90):8.1f} us   p99 {pct(99):8.1f} us   mean {statistics.fmean(lat) / 1e3:8.1f} us   min {lat[0] / 1e3:8.1f} us")
    print(f"  goal p50 < 100 us: {'met' if pct(50) < 100 else 'NOT met'}")

    initiator.close()
    if target is not None:
        target.close()
    if child is not None:
        parent_end.send("stop")
        child.join(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
