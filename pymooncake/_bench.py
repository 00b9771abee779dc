"""``pymooncake bench``: Mooncake's transfer_engine_bench for this engine.

A target registers one buffer and serves it; an initiator opens the target's
segment and, from ``--threads`` threads, moves batches of ``--batch_size``
blocks of ``--block_size`` bytes for ``--duration`` seconds, each thread on
its own slice of both buffers (block ``i`` of thread ``t`` is at offset
``block_size * (i * threads + t)``, as in Mooncake's bench). ``loopback``
runs both in this process, over TCP on 127.0.0.1. With ``--protocol tcp``
(the default) the engines run without the same-host transports, so that
target and initiator on one host still measure TCP; set
``PYMOONCAKE_SAME_HOST`` (``1``, ``cma``, ``shm``) to measure those instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from .engine import TransferEngine

__all__ = ["Config", "Result", "run", "format_result"]

#: The variable that turns the same-host transports off ("0") or chooses
#: their paths.
SAME_HOST = "PYMOONCAKE_SAME_HOST"


@dataclass
class Config:
    """What to run; field names are the command-line flags."""

    mode: str = "loopback"  # target | initiator | loopback
    metadata_server: str = "P2PHANDSHAKE"
    local_server_name: str = "127.0.0.1"
    segment_id: str = ""
    protocol: str = "tcp"
    device_name: str = ""
    operation: str = "write"  # read | write
    block_size: int = 65536
    batch_size: int = 128
    threads: int = 4
    duration: float = 10.0
    buffer_size: int = 1 << 30


@dataclass
class Result:
    """What an initiator measured."""

    config: Config
    seconds: float = 0.0
    batches: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    #: The initiator engine's get_metrics() at the end of the run.
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.batches * self.config.batch_size * self.config.block_size

    @property
    def gbps(self) -> float:
        """Throughput in GB/s (10**9 bytes per second), as Mooncake reports."""
        return self.bytes / self.seconds / 1e9 if self.seconds else 0.0

    @property
    def ops_per_s(self) -> float:
        """Blocks moved per second."""
        return self.batches * self.config.batch_size / self.seconds if self.seconds else 0.0

    def percentile_us(self, p: float) -> float:
        """Latency percentile of one batch call, in microseconds."""
        if not self.latencies_ns:
            return 0.0
        s = sorted(self.latencies_ns)
        i = min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))
        return s[i] / 1e3


class BenchError(RuntimeError):
    """The benchmark could not run (the message says why)."""


class _Buffer:
    """Page-aligned anonymous memory with its address. The first ``touch``
    bytes (the part the benchmark uses) are faulted in up front, so that the
    first batches do not measure page faults."""

    def __init__(self, size: int, touch: int) -> None:
        self.size = size
        self._mm = mmap.mmap(-1, size)
        self._view = (ctypes.c_char * size).from_buffer(self._mm)
        self.addr = ctypes.addressof(self._view)
        ctypes.memset(self.addr, 0, min(size, touch))

    def close(self) -> None:
        del self._view
        self._mm.close()


def _engine(cfg: Config, name: str) -> TransferEngine:
    e = TransferEngine()
    with _same_host_off(cfg):
        rc = e.initialize(name, cfg.metadata_server, cfg.protocol, cfg.device_name)
    if rc != 0:
        raise BenchError(f"initialize({name!r}, {cfg.metadata_server!r}) failed (see the log above)")
    return e


@contextlib.contextmanager
def _same_host_off(cfg: Config) -> Iterator[None]:
    """With ``--protocol tcp`` (the default), measure TCP, as Mooncake's
    bench does: the engines started here leave out the same-host transports
    (which would otherwise carry a loopback run) unless
    ``PYMOONCAKE_SAME_HOST`` is set, which then chooses."""
    if cfg.protocol.lower() != "tcp" or SAME_HOST in os.environ:
        yield
        return
    os.environ[SAME_HOST] = "0"
    try:
        yield
    finally:
        os.environ.pop(SAME_HOST, None)


def _span(cfg: Config) -> int:
    """Bytes of each buffer the initiator's threads use."""
    return cfg.block_size * cfg.batch_size * cfg.threads


def _check(cfg: Config) -> None:
    if cfg.operation not in ("read", "write"):
        raise BenchError(f"--operation must be read or write, not {cfg.operation!r}")
    for flag in ("block_size", "batch_size", "threads", "buffer_size"):
        if getattr(cfg, flag) <= 0:
            raise BenchError(f"--{flag} must be positive")
    if cfg.duration <= 0:
        raise BenchError("--duration must be positive")
    need = _span(cfg)
    if cfg.mode != "target" and need > cfg.buffer_size:
        raise BenchError(f"--buffer_size {cfg.buffer_size} is smaller than block_size x batch_size x threads = {need}")


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_target(cfg: Config, out: TextIO = sys.stdout) -> None:
    """Serve one registered buffer until SIGINT or SIGTERM."""
    _check(cfg)
    buf = _Buffer(cfg.buffer_size, cfg.buffer_size)
    engine = _engine(cfg, cfg.local_server_name)
    try:
        if engine.register_memory(buf.addr, buf.size, "cpu:0") != 0:
            raise BenchError("register_memory of the target buffer failed")
        print(f"target ready: --segment_id {engine.get_segment_name()} (Ctrl-C to stop)", file=out, flush=True)
        _wait_for_signal()
        engine.unregister_memory(buf.addr)
    finally:
        engine.close()
        buf.close()


def run_initiator(
    cfg: Config,
    engine: TransferEngine | None = None,
    progress: Callable[[float, int, int], None] | None = None,
) -> Result:
    """Run the initiator side against cfg.segment_id and return what it
    measured. progress(elapsed_s, batches, errors) is called about once a
    second."""
    _check(cfg)
    if not cfg.segment_id:
        raise BenchError("--segment_id is required (the target prints it)")
    own = engine is None
    eng = _engine(cfg, cfg.local_server_name) if engine is None else engine
    buf = _Buffer(cfg.buffer_size, _span(cfg))
    try:
        if eng.register_memory(buf.addr, buf.size, "cpu:0") != 0:
            raise BenchError("register_memory of the initiator buffer failed")
        remote = eng.get_first_buffer_address(cfg.segment_id)
        if remote == 0:
            raise BenchError(f"cannot find a buffer in segment {cfg.segment_id!r} (is the target running?)")
        try:
            res = _drive(cfg, eng, buf.addr, remote, progress)
            res.metrics = eng.get_metrics()
            return res
        finally:
            eng.unregister_memory(buf.addr)
    finally:
        if own:
            eng.close()
        buf.close()


def _drive(
    cfg: Config,
    eng: TransferEngine,
    local: int,
    remote: int,
    progress: Callable[[float, int, int], None] | None,
) -> Result:
    move = eng.batch_transfer_sync_write if cfg.operation == "write" else eng.batch_transfer_sync_read
    stop = threading.Event()
    counts = [0] * cfg.threads
    errors = [0] * cfg.threads
    lat: list[list[int]] = [[] for _ in range(cfg.threads)]

    def worker(t: int) -> None:
        offsets = [cfg.block_size * (i * cfg.threads + t) for i in range(cfg.batch_size)]
        locals_ = [local + o for o in offsets]
        remotes = [remote + o for o in offsets]
        lengths = [cfg.block_size] * cfg.batch_size
        mine = lat[t]
        clock = time.perf_counter_ns
        while not stop.is_set():
            t0 = clock()
            rc = move(cfg.segment_id, locals_, remotes, lengths)
            mine.append(clock() - t0)
            if rc != 0:
                errors[t] += 1
                stop.set()  # Mooncake's bench exits on the first failure
                return
            counts[t] += 1

    workers = [threading.Thread(target=worker, args=(t,), name=f"bench-{t}", daemon=True) for t in range(cfg.threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    deadline = start + cfg.duration
    while not stop.is_set():
        now = time.perf_counter()
        if now >= deadline:
            break
        stop.wait(min(1.0, deadline - now))
        if progress is not None:
            progress(time.perf_counter() - start, sum(counts), sum(errors))
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    res = Result(cfg, seconds=elapsed, batches=sum(counts), errors=sum(errors))
    for one in lat:
        res.latencies_ns.extend(one)
    return res


def run_loopback(cfg: Config, progress: Callable[[float, int, int], None] | None = None) -> Result:
    """Run a target and an initiator in this process and return the result."""
    _check(cfg)
    buf = _Buffer(cfg.buffer_size, _span(cfg))
    target = _engine(cfg, cfg.local_server_name)
    try:
        if target.register_memory(buf.addr, buf.size, "cpu:0") != 0:
            raise BenchError("register_memory of the target buffer failed")
        sub = Config(**{**cfg.__dict__, "segment_id": target.get_segment_name()})
        return run_initiator(sub, progress=progress)
    finally:
        target.close()
        buf.close()


def format_result(res: Result) -> str:
    """The final table."""
    c = res.config
    rows = [
        ("mode", c.mode),
        ("operation", c.operation),
        ("metadata", c.metadata_server),
        ("segment", c.segment_id),
        ("block size", f"{c.block_size} B"),
        ("batch size", str(c.batch_size)),
        ("threads", str(c.threads)),
        ("duration", f"{res.seconds:.2f} s"),
        ("batches", str(res.batches)),
        ("errors", str(res.errors)),
        ("throughput", f"{res.gbps:.3f} GB/s"),
        ("ops", f"{res.ops_per_s:,.0f} ops/s (one op = one block)"),
        ("latency p50", f"{res.percentile_us(50):,.1f} us (one batch call)"),
        ("latency p99", f"{res.percentile_us(99):,.1f} us"),
        *_transport_rows(res.metrics),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _hist_quantile(h: dict[str, Any], q: float) -> str:
    """The bucket bound below which a fraction q of a get_metrics()
    histogram's observations lie, as text ("<= 100", "> 10000000")."""
    total: int = h["count"]
    if total == 0:
        return "-"
    need, seen = q * total, 0
    for bound, n in zip(h["bounds"], h["counts"], strict=False):
        seen += n
        if seen >= need:
            return f"<= {bound:,}"
    return f"> {h['bounds'][-1]:,}"


def _transport_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The engine's own figures, per transport and direction: bytes,
    requests, failures by cause, per-request latency, and connections."""
    rows: list[tuple[str, str]] = []
    conns: dict[str, int] = {}
    for peer in metrics.get("peers", {}).values():
        for name, n in peer.get("connections", {}).items():
            conns[name] = conns.get(name, 0) + n
    for name, dirs in sorted(metrics.get("transports", {}).items()):
        for direction in ("read", "write"):
            d = dirs[direction]
            if d["requests"] == 0:
                continue
            failed = {c: n for c, n in d["failures"].items() if n}
            lat = d["latency_us"]
            rows.append(
                (
                    f"{name} {direction}",
                    f"{d['bytes'] / 1e9:.3f} GB in {d['requests']:,} requests, "
                    + (", ".join(f"{n} {c}" for c, n in sorted(failed.items())) + " failed" if failed else "none failed")
                    + f"; latency p50 {_hist_quantile(lat, 0.5)} us, p99 {_hist_quantile(lat, 0.99)} us (one request)",
                )
            )
        if name in conns:
            rows.append((f"{name} connections", f"{conns[name]} open"))
    return rows


def progress_printer(cfg: Config, out: TextIO = sys.stderr) -> Callable[[float, int, int], None]:
    """A progress callback printing one live line (rewritten in place on a
    terminal, one line per second otherwise)."""
    tty = out.isatty()
    last = [0.0, 0]
    per_batch = cfg.batch_size * cfg.block_size

    def show(elapsed: float, batches: int, errors: int) -> None:
        dt = elapsed - last[0]
        rate = (batches - last[1]) * per_batch / dt / 1e9 if dt > 0 else 0.0
        ops = (batches - last[1]) * cfg.batch_size / dt if dt > 0 else 0.0
        last[0], last[1] = elapsed, batches
        line = f"[{elapsed:5.1f}s] {rate:7.3f} GB/s  {ops:10,.0f} ops/s  {batches} batches  {errors} errors"
        if tty:
            out.write("\r" + line)
        else:
            out.write(line + "\n")
        out.flush()

    return show


def run(cfg: Config, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the benchmark as the CLI does; return the exit status."""
    try:
        if cfg.mode == "target":
            run_target(cfg, out)
            return 0
        show = progress_printer(cfg, err)
        if cfg.mode == "initiator":
            res = run_initiator(cfg, progress=show)
        elif cfg.mode == "loopback":
            res = run_loopback(cfg, progress=show)
        else:
            raise BenchError(f"--mode must be target, initiator or loopback, not {cfg.mode!r}")
    except BenchError as e:
        print(f"pymooncake bench: {e}", file=err)
        return 2
    if err.isatty():
        err.write("\n")
    print(format_result(res), file=out)
    return 1 if res.errors else 0
