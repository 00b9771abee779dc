"""Per-call cost of pymooncake's cheapest calls.

    python python/bench/bench_calls.py [--calls N] [--repeat R]

Reports, per call, the best and the median of R runs of N calls each:

- get_rpc_port: the public method (the port is cached at initialize), and
  the raw extension call underneath it (one gopy crossing, GIL released and
  re-taken), for reference;
- register_memory + unregister_memory of one 4 KiB region (two crossings,
  and two descriptor rebuilds in the engine);
- transfer_check_status of an unknown batch id (the failure path: a
  crossing plus the error translation, logging disabled);
- get_notifies with nothing queued.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import statistics
import time
from collections.abc import Callable

from pymooncake.engine import TransferEngine


def per_call_ns(fn: Callable[[], object], calls: int, repeat: int) -> tuple[float, float]:
    """(best, median) of repeat runs, in ns per call."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter_ns() - t0) / calls)
    return min(runs), statistics.median(runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()

    e = TransferEngine()
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise SystemExit("initialize failed")
    buf = ctypes.create_string_buffer(4096)
    addr = ctypes.addressof(buf)
    x, h = e._x, e._h  # the raw extension, for the reference row only

    def reg_unreg() -> None:
        e.register_memory(addr, 4096)
        e.unregister_memory(addr)

    logging.getLogger("pymooncake").disabled = True  # measure the path, not the log handler
    rows = [
        ("get_rpc_port()", e.get_rpc_port, args.calls),
        ("  raw extension call (reference)", lambda: x.bindings_Engine_RPCPort(h), args.calls),
        ("register_memory + unregister_memory", reg_unreg, args.calls // 4),
        ("transfer_check_status(unknown id)", lambda: e.transfer_check_status(12345), args.calls // 4),
        ("get_notifies() (empty)", e.get_notifies, args.calls),
    ]
    print(f"{'call':40} {'best ns':>10} {'median ns':>10}   ({args.repeat} runs)")
    for name, fn, n in rows:
        fn()  # warm up
        best, med = per_call_ns(fn, n, args.repeat)
        print(f"{name:40} {best:10.0f} {med:10.0f}")
    e.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
