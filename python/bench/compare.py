#!/usr/bin/env python3
"""Side-by-side benchmark: Mooncake's TransferEngine against pymooncake's.

    python3 python/bench/compare.py [--quick] [--duration S] [--op write|read]
                                    [--blocks 4K,64K,...] [--batches 1,8,...] [--threads 1,4]
                                    [--buffer-mib 256] [--repeat R] [--no-verify]
                                    [--doc docs/benchmarks.md | --no-doc] [--json FILE]

Each engine runs in two processes of its own, a target and an initiator, both
started from python/bench/_compare_worker.py: Mooncake's under the Mooncake
venv's python (scripts/install-mooncake.sh; $MOONCAKE_VENV or
<repo>/.venv-mooncake) with MC_FORCE_TCP=1, pymooncake's under this python
with PYTHONPATH=<repo> (build it first: make build). The two engines never
share a process. Both use P2PHANDSHAKE and TCP on 127.0.0.1, and each target
registers one buffer of --buffer-mib MiB, as does each initiator.

For every point (block size, batch size, initiator threads) the initiator's
threads call batch_transfer_sync_{op} in a loop for --duration seconds, each
on its own interleaved blocks (Mooncake's transfer_engine_bench layout);
the engines take turns run by run (the order flips at every point, so drift
on a shared machine hits both alike). Reported: GB/s (10^9 bytes per second)
and blocks per second over the run, p50/p99 of one call. Points whose
block x batch x threads exceed the buffer are skipped. Before each run the
side that sends fills its span with a fresh pseudo-random pattern; after it
the receiving side's SHA-256 must match (--no-verify skips this).

Then one row for transfer_sync_write of 4 KiB (batch 1, one thread: the
latency goal), and the per-call cost of get_rpc_port() and of
register_memory + unregister_memory of a 4 KiB region.

Results go to stdout and, unless --no-doc, into the "Side-by-side with
Mooncake" section of docs/benchmarks.md (between the compare.py markers),
with the command line and a description of the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "_compare_worker.py")
DOC = os.path.join(REPO, "docs", "benchmarks.md")
BEGIN = "<!-- BEGIN compare.py: generated, rerun python/bench/compare.py to replace -->"
END = "<!-- END compare.py -->"
ENGINES = ("mooncake", "pymooncake")
SHORT = {"mooncake": "MC", "pymooncake": "PY"}

KiB, MiB = 1 << 10, 1 << 20
FULL_BLOCKS = [4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB]
FULL_BATCHES = [1, 8, 32, 128]
FULL_THREADS = [1, 4]
# --quick: a subset of the same grid, about two minutes on 2 cores
QUICK_POINTS = [
    (4 * KiB, 1, 1),
    (4 * KiB, 128, 1),
    (64 * KiB, 1, 1),
    (64 * KiB, 128, 1),
    (64 * KiB, 128, 4),
    (1 * MiB, 32, 1),
    (1 * MiB, 32, 4),
    (4 * MiB, 8, 4),
    (64 * MiB, 1, 1),
    (64 * MiB, 1, 4),
]

# ----------------------------------------------------------------- processes


class WorkerError(RuntimeError):
    """A worker failed to start, answered an error, died or missed a deadline."""


def mooncake_python() -> str:
    venv = os.environ.get("MOONCAKE_VENV") or os.path.join(REPO, ".venv-mooncake")
    return os.path.join(venv, "bin", "python")


def worker_env(impl: str, source: str) -> dict[str, str]:
    """No inherited MC_* settings and no PYTHONPATH, then what each engine
    needs; pymooncake is imported from the checkout at source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_")}
    env.pop("PYTHONPATH", None)
    env.pop("PYMOONCAKE_AS_MOONCAKE", None)
    if impl == "mooncake":
        env["MC_FORCE_TCP"] = "1"
    else:
        env["PYTHONPATH"] = source
    return env


class Worker:
    """One _compare_worker.py process. close() always reaps it."""

    def __init__(self, impl: str, role: str, python: str, buffer: int, timeout: float, source: str = REPO) -> None:
        self.impl, self.role = impl, role
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        cmd = [python, WORKER, "--impl", impl, "--role", role, "--buffer", str(buffer)]
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=worker_env(impl, source), text=True, bufsize=1
            )
        except OSError as e:
            raise WorkerError(f"{impl} {role}: cannot start {python}: {e}") from None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.hello = self._reply(timeout, "start-up")
        except BaseException:
            self.close(timeout=5)
            raise
        self.name: str = self.hello["name"]
        self.buffer: int = self.hello["buffer"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def log_tail(self, n: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-n:]

    def _reply(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.impl} {self.role}: no answer to {what} in {timeout:.0f} s; log tail:\n{self.log_tail()}") from None
        if line is None:
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                rc = None
            raise WorkerError(f"{self.impl} {self.role}: exited ({rc}) during {what}; log tail:\n{self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"{self.impl} {self.role}: {what}: {reply.get('error')}")
        return reply

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"{self.impl} {self.role}: gone; log tail:\n{self.log_tail()}") from None
        return self._reply(timeout, req["cmd"])

    def close(self, timeout: float = 15.0) -> None:
        """Ask the worker to exit; terminate, then kill it if it does not."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            for stop in (None, self.proc.terminate, self.proc.kill):
                if stop is not None:
                    stop()
                try:
                    self.proc.wait(timeout=timeout if stop is None else 5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.reader.join(timeout=5)
        self.log.close()


class Pair:
    """The target and initiator processes of one engine."""

    def __init__(self, impl: str, python: str, buffer: int, timeout: float, source: str = REPO) -> None:
        self.impl, self.python, self.buffer_size, self.timeout, self.source = impl, python, buffer, timeout, source
        self.target: Worker | None = None
        self.initiator: Worker | None = None
        self.start()

    def start(self) -> None:
        self.close()
        self.target = Worker(self.impl, "target", self.python, self.buffer_size, self.timeout, self.source)
        self.initiator = Worker(self.impl, "initiator", self.python, self.buffer_size, self.timeout, self.source)

    def close(self) -> None:
        for w in (self.initiator, self.target):
            if w is not None:
                w.close()
        self.target = self.initiator = None

    @property
    def version(self) -> str:
        assert self.target is not None
        return str(self.target.hello["version"])


# ----------------------------------------------------------------- measuring


@dataclass
class Point:
    block: int
    batch: int
    threads: int
    api: str = "batch"  # batch: batch_transfer_sync_*; single: transfer_sync_*

    @property
    def span(self) -> int:
        return self.block * self.batch * self.threads

    def label(self) -> str:
        return f"{size_text(self.block)} x{self.batch} t{self.threads}"


@dataclass
class Run:
    ok: bool
    gbps: float = 0.0
    ops: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    calls: int = 0
    seconds: float = 0.0
    verified: bool | None = None  # None: not checked
    error: str = ""


@dataclass
class Row:
    point: Point
    runs: dict[str, list[Run]] = field(default_factory=lambda: {e: [] for e in ENGINES})

    def summary(self, impl: str) -> Run | None:
        """The median of the successful runs of impl (each figure separately)."""
        ok = [r for r in self.runs[impl] if r.ok]
        if not ok:
            return None
        med = statistics.median
        return Run(
            True,
            gbps=med(r.gbps for r in ok),
            ops=med(r.ops for r in ok),
            p50_us=med(r.p50_us for r in ok),
            p99_us=med(r.p99_us for r in ok),
            calls=sum(r.calls for r in ok),
            seconds=sum(r.seconds for r in ok),
            verified=None if all(r.verified is None for r in ok) else all(r.verified is not False for r in ok),
        )

    def errors(self, impl: str) -> list[str]:
        return [r.error for r in self.runs[impl] if not r.ok]


def size_text(n: int) -> str:
    for unit, k in (("MiB", MiB), ("KiB", KiB)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if mult != 1 else s) * mult


def measure(pair: Pair, p: Point, op: str, duration: float, call_timeout: float, verify: bool, seed: str) -> Run:
    """One run of point p on pair; a worker failure is returned as a failed
    Run, and the pair is restarted so the next run starts clean."""
    if pair.target is None or pair.initiator is None:
        restart(pair)  # an earlier restart failed: try once more
        if pair.target is None or pair.initiator is None:
            return Run(False, error=f"{pair.impl}: the engine processes could not be restarted")
    src, dst = (pair.initiator, pair.target) if op == "write" else (pair.target, pair.initiator)
    try:
        want = ""
        if verify:
            want = src.request({"cmd": "fill", "offset": 0, "length": p.span, "seed": seed}, timeout=120)["sha256"]
        r = pair.initiator.request(
            {
                "cmd": "run",
                "segment": pair.target.name,
                "remote": pair.target.buffer,
                "op": op,
                "api": p.api,
                "block": p.block,
                "batch": p.batch,
                "threads": p.threads,
                "duration": duration,
                "warmup": 2,
                "max_seconds": duration + call_timeout,
            },
            timeout=duration + call_timeout + 30,
        )
        if r["failures"] or r["calls"] == 0:
            # the engine said why in its log; a dead or wedged peer must not fail the later runs too
            print(f"  {pair.impl} failed at {p.label()}: {r['failures']}; initiator log tail:\n{pair.initiator.log_tail(1500)}", file=sys.stderr)
            restart(pair)
            return Run(False, error=f"{pair.impl}: {'; '.join(r['failures']) or 'no call completed'}")
        verified = None
        if verify:
            got = dst.request({"cmd": "digest", "offset": 0, "length": p.span}, timeout=120)["sha256"]
            verified = got == want
        return Run(
            True,
            gbps=r["bytes"] / r["seconds"] / 1e9,
            ops=r["blocks"] / r["seconds"],
            p50_us=r["p50_us"],
            p99_us=r["p99_us"],
            calls=r["calls"],
            seconds=r["seconds"],
            verified=verified,
            error="" if verified is not False else f"{pair.impl}: data check failed ({p.span} bytes)",
        )
    except WorkerError as e:
        print(f"  {pair.impl} failed at {p.label()}: {e}", file=sys.stderr)
        restart(pair)
        return Run(False, error=str(e).splitlines()[0])


def restart(pair: Pair) -> None:
    """Start both processes of pair afresh; a failure to do so is reported,
    and the next run on the pair fails fast."""
    try:
        pair.start()
    except WorkerError as e:
        print(f"  {pair.impl}: restart failed: {e}", file=sys.stderr)


def cheap_calls(pair: Pair, seconds: float, repeat: int) -> dict[str, Any]:
    assert pair.initiator is not None
    return pair.initiator.request({"cmd": "calls", "seconds": seconds, "repeat": repeat}, timeout=60 + 4 * seconds * (repeat + 2))


# ----------------------------------------------------------------- reporting


def machine(source: str) -> dict[str, str]:
    """The host, the interpreters and the commit of the pymooncake checkout at source."""

    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10, cwd=source).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal")))
            mem = f"{kb / (1 << 20):.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    vm, box = sh("systemd-detect-virt", "--vm"), sh("systemd-detect-virt", "--container")
    virt = ", ".join(x for x in (f"VM {vm}" if vm not in ("", "none", "?") else "", f"container {box}" if box not in ("", "none", "?") else "") if x)
    virt = virt or "no virtualization detected"
    dirty = " (with uncommitted changes)" if sh("git", "status", "--porcelain", "--untracked-files=no") else ""
    return {
        "host": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} vCPU {cpu}, {mem} RAM, {virt}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "go": sh("go", "version"),
        "commit": (sh("git", "rev-parse", "--short", "HEAD") or "unknown") + dirty + ("" if os.path.samefile(source, REPO) else f" (a checkout at {source})"),
    }


class CPUMeter:
    """CPU time the rest of the machine used while this script ran: all
    busy time from /proc/stat minus this process's and its reaped children's
    (the workers), so it is only right once every worker has exited."""

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy, self.steal = self._stat()
        self.ours = self._ours()

    @staticmethod
    def _stat() -> tuple[float, float]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return 0.0, 0.0
        hz = os.sysconf("SC_CLK_TCK")
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        steal = v[7] if len(v) > 7 else 0
        return (sum(v[:8]) - idle) / hz, steal / hz

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others(self) -> tuple[float, float, float]:
        """(cores used by other processes on average, cores stolen by the
        hypervisor on average, cores this script used on average)."""
        wall = max(time.monotonic() - self.wall, 1e-9)
        busy, steal = self._stat()
        ours = self._ours() - self.ours
        return max(0.0, busy - self.busy - ours) / wall, (steal - self.steal) / wall, ours / wall


def cell(x: float, fmt: str) -> str:
    return format(x, fmt)


def ratio(py: float, mc: float) -> str:
    return f"{py / mc:.2f}" if mc > 0 else "-"


def table(rows: list[Row], op: str) -> list[str]:
    head = "| block | batch | thr | MC GB/s | PY GB/s | PY/MC GB/s | MC kops/s | PY kops/s | MC p50 µs | PY p50 µs | PY/MC p50 | MC p99 µs | PY p99 µs | data |"
    out = [head, "|" + "|".join(["---:"] * 13 + [":---:"]) + "|"]
    for row in rows:
        p = row.point
        mc, py = row.summary("mooncake"), row.summary("pymooncake")
        name = size_text(p.block) if p.api == "batch" else f"{size_text(p.block)} `transfer_sync_{op}`"
        cells = [name, str(p.batch), str(p.threads)]

        def f(r: Run | None, attr: str, fmt: str) -> str:
            return cell(getattr(r, attr), fmt) if r is not None else "FAIL"

        cells += [
            f(mc, "gbps", ".3f"),
            f(py, "gbps", ".3f"),
            ratio(py.gbps, mc.gbps) if mc and py else "-",
            f(mc, "ops", ",.0f") if mc is None else f"{mc.ops / 1e3:,.1f}",
            f(py, "ops", ",.0f") if py is None else f"{py.ops / 1e3:,.1f}",
            f(mc, "p50_us", ",.1f"),
            f(py, "p50_us", ",.1f"),
            ratio(py.p50_us, mc.p50_us) if mc and py else "-",
            f(mc, "p99_us", ",.1f"),
            f(py, "p99_us", ",.1f"),
        ]
        checks = [r.verified for r in (mc, py) if r is not None]
        cells.append("—" if not checks or all(c is None for c in checks) else ("ok" if all(c is not False for c in checks) else "BAD"))
        out.append("| " + " | ".join(cells) + " |")
    return out


def calls_table(calls: dict[str, dict[str, Any]]) -> list[str]:
    out = ["| call | MC ns/call | PY ns/call | PY/MC |", "|---|---:|---:|---:|"]
    for key, name in (("get_rpc_port", "`get_rpc_port()`"), ("register_unregister", "`register_memory` + `unregister_memory` (4 KiB)")):
        mc, py = calls.get("mooncake", {}).get(key), calls.get("pymooncake", {}).get(key)
        m = f"{mc['median_ns']:,.0f}" if mc else "FAIL"
        q = f"{py['median_ns']:,.0f}" if py else "FAIL"
        out.append(f"| {name} | {m} | {q} | {ratio(py['median_ns'], mc['median_ns']) if mc and py else '-'} |")
    return out


def goals(rows: list[Row], calls: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's three goals, each with its verdict."""
    out = []
    big = [(r.point, r.summary("mooncake"), r.summary("pymooncake")) for r in rows if r.point.api == "batch" and r.point.block >= 64 * KiB]
    pairs = [(p, mc.gbps, py.gbps) for p, mc, py in big if mc and py and mc.gbps > 0]
    if pairs:
        met = [x for x in pairs if x[2] >= 2 * x[1]]
        worst = min(pairs, key=lambda x: x[2] / x[1])
        out.append(
            f"- Throughput, blocks ≥ 64 KiB, PY ≥ 2x MC: **{'met' if len(met) == len(pairs) else 'NOT met'}** "
            f"({len(met)} of {len(pairs)} points reach 2x; lowest ratio {worst[2] / worst[1]:.2f} at {worst[0].label()})."
        )
    lat = next((r for r in rows if r.point.api == "single"), None)
    if lat is not None:
        mc, py = lat.summary("mooncake"), lat.summary("pymooncake")
        if mc and py:
            out.append(
                f"- 4 KiB `transfer_sync_write` p50, PY ≤ ½ MC: **{'met' if py.p50_us <= mc.p50_us / 2 else 'NOT met'}** "
                f"({py.p50_us:.1f} µs vs {mc.p50_us:.1f} µs, ratio {py.p50_us / mc.p50_us:.2f})."
            )
    for key, name in (("get_rpc_port", "get_rpc_port"), ("register_unregister", "register+unregister")):
        mc, py = calls.get("mooncake", {}).get(key), calls.get("pymooncake", {}).get(key)
        if mc and py:
            r = py["median_ns"] / mc["median_ns"]
            out.append(f"- Per-call cost of {name}, PY ≤ 2x MC: **{'met' if r <= 2 else 'NOT met'}** (ratio {r:.2f}).")
    return out


def report(
    args: argparse.Namespace,
    rows: list[Row],
    calls: dict[str, dict[str, Any]],
    info: dict[str, str],
    versions: dict[str, str],
    load: tuple[float, ...],
    cpu: tuple[float, float, float],
    started: float,
    skipped: list[Point],
) -> list[str]:
    secs = time.time() - started
    custom = args.blocks or args.batches or args.threads
    grid = "a custom grid" if custom else ("the quick subset" if args.quick else "the full grid")
    la0 = ", ".join(f"{x:.2f}" for x in load)
    others, steal, ours = cpu
    shared = others > 0.2 or load[0] > 0.5
    out = [
        f"Command: `{args.cmdline}` ({grid}, {args.duration:g} s per run, {args.repeat} run(s) per engine and point, {args.op}s; took {secs / 60:.1f} min)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {info['host']}",
        f"- Load average (1, 5, 15 min) at the start: {la0}. During the run other processes used {others:.2f} "
        f"of the {os.cpu_count()} cores on average (this benchmark {ours:.2f}; hypervisor steal {steal:.2f})"
        + (" — **the machine was shared with other jobs (builds, tests): figures are noisy**" if shared else ""),
        f"- Mooncake: `mooncake-transfer-engine-non-cuda` {versions.get('mooncake', '?')} ({mooncake_python()}), MC_FORCE_TCP=1, "
        "other settings default (one TCP I/O thread)",
        f"- pymooncake: {versions.get('pymooncake', '?')} at commit {info['commit']}, {info['go']}, default settings",
        f"- Python {info['python']} for both; P2PHANDSHAKE, TCP over 127.0.0.1; target and initiator of each engine "
        f"in separate processes, {args.buffer_mib} MiB registered on each side",
        "",
        f"MC = Mooncake, PY = pymooncake. GB/s = 10^9 bytes/s; kops/s = thousand blocks/s; p50/p99 of one "
        f"`batch_transfer_sync_{args.op}` call (of one `transfer_sync_{args.op}` call in the `transfer_sync_{args.op}` row). "
        f"data: the receiver's SHA-256 of the moved span matched the sender's pattern after every run.",
        "",
        *table(rows, args.op),
    ]
    if skipped:
        out += ["", f"Skipped (block x batch x threads > {args.buffer_mib} MiB): " + ", ".join(p.label() for p in skipped) + "."]
    failed = [(r.point, e) for r in rows for impl in ENGINES for e in r.errors(impl)]
    if failed:
        out += ["", "Failures:"] + [f"- {p.label()}: {e}" for p, e in failed]
    if calls:
        out += ["", "Per-call cost (median of 5 runs, in the initiator process; no transfer running):", "", *calls_table(calls)]
    out += ["", "Goals (issue 5, on a 2-core machine):", "", *goals(rows, calls)]
    return out


def write_doc(path: str, lines: list[str]) -> None:
    block = "\n".join([BEGIN, *lines, END]) + "\n"
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist; it holds the benchmark sections this script fills in")
    with open(path) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block.rstrip("\n") + tail
    else:
        raise SystemExit(f"{path} lacks the markers {BEGIN!r} ... {END!r} in its side-by-side section")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------- main


def points(args: argparse.Namespace) -> tuple[list[Point], list[Point]]:
    if args.quick and not (args.blocks or args.batches or args.threads):
        grid = [Point(*x) for x in QUICK_POINTS]
    else:
        blocks = [parse_size(x) for x in args.blocks.split(",")] if args.blocks else FULL_BLOCKS
        batches = [int(x) for x in args.batches.split(",")] if args.batches else FULL_BATCHES
        threads = [int(x) for x in args.threads.split(",")] if args.threads else FULL_THREADS
        grid = [Point(b, n, t) for b in blocks for t in threads for n in batches]
    cap = args.buffer_mib * MiB
    keep = [p for p in grid if p.span <= cap]
    skipped = [p for p in grid if p.span > cap]
    if args.latency:
        keep.append(Point(4 * KiB, 1, 1, api="single"))
    return keep, skipped


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 10-point subset of the grid, each point twice per engine (about 2 minutes)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (default 2 with --quick, else 3)")
    ap.add_argument("--op", choices=["write", "read"], default="write")
    ap.add_argument("--blocks", help="comma list of block sizes (4K,64K,1M,...); default 4K..64M")
    ap.add_argument("--batches", help="comma list of batch sizes; default 1,8,32,128")
    ap.add_argument("--threads", help="comma list of initiator thread counts; default 1,4")
    ap.add_argument("--buffer-mib", type=int, default=256, help="MiB registered by each process (default 256)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per engine and point, the median reported (default 2 with --quick, else 1)")
    ap.add_argument("--no-latency", dest="latency", action="store_false", help="skip the 4 KiB transfer_sync row")
    ap.add_argument("--no-calls", dest="calls", action="store_false", help="skip the per-call costs")
    ap.add_argument("--calls-seconds", type=float, default=0.4, help="seconds per per-call measurement run")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the SHA-256 data check")
    ap.add_argument("--call-timeout", type=float, default=60.0, help="seconds one transfer call may take past --duration")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    ap.add_argument("--doc", default=DOC, help="markdown file to update (default docs/benchmarks.md)")
    ap.add_argument("--no-doc", dest="doc", action="store_const", const=None, help="only print")
    ap.add_argument("--json", help="also write every run's raw figures here")
    ap.add_argument("--mooncake-python", default=mooncake_python())
    ap.add_argument("--pymooncake-python", default=os.environ.get("PYMOONCAKE_PYTHON") or sys.executable)
    ap.add_argument(
        "--pymooncake-path",
        default=REPO,
        help="checkout whose pymooncake (with its built extension) is measured; default this one. "
        "A clean clone of a commit keeps other people's uncommitted work out of the figures",
    )
    args = ap.parse_args(argv)
    args.cmdline = "python3 python/bench/compare.py" + "".join(" " + shlex.quote(a) for a in argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 3.0
    if args.repeat is None:
        args.repeat = 2 if args.quick else 1
    if args.duration <= 0 or args.repeat < 1 or args.buffer_mib < 1:
        ap.error("--duration, --repeat and --buffer-mib must be positive")
    if not os.path.isdir(os.path.join(args.pymooncake_path, "pymooncake", "_gopy")):
        ap.error(f"no built pymooncake under {args.pymooncake_path}: run make build there")
    if not os.path.exists(args.mooncake_python):
        ap.error(f"no Mooncake interpreter at {args.mooncake_python}: run scripts/install-mooncake.sh (or set MOONCAKE_VENV)")
    todo, skipped = points(args)
    if not todo:
        ap.error("no point fits in --buffer-mib")

    # SIGTERM unwinds like Ctrl-C, so the finally below reaps the workers
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    load0 = os.getloadavg()
    meter = CPUMeter()
    info = machine(args.pymooncake_path)
    pairs: dict[str, Pair] = {}
    rows = [Row(p) for p in todo]
    calls: dict[str, dict[str, Any]] = {}
    buffer = args.buffer_mib * MiB
    try:
        for impl, python in (("mooncake", args.mooncake_python), ("pymooncake", args.pymooncake_python)):
            try:
                pairs[impl] = Pair(impl, python, buffer, args.startup_timeout, args.pymooncake_path)
            except WorkerError as e:
                raise SystemExit(f"compare: cannot start {impl}: {e}" + ("\n(build pymooncake first: make build)" if impl == "pymooncake" else "")) from None
        versions = {impl: pair.version for impl, pair in pairs.items()}
        runs = len(todo) * len(ENGINES) * args.repeat
        guess = runs * (args.duration + 0.7) + (20 if args.calls else 0)  # 0.7 s: data check and hand-over per run
        print(
            f"# {len(todo)} points x {len(ENGINES)} engines x {args.repeat}, {args.duration:g} s each, {args.op}; "
            f"about {guess / 60:.1f} min; load {load0[0]:.2f}",
            flush=True,
        )
        print(f"{'point':26} {'MC GB/s':>9} {'PY GB/s':>9} {'x':>6} {'MC p50 us':>10} {'PY p50 us':>10} {'MC p99':>9} {'PY p99':>9}  data", flush=True)
        for k, row in enumerate(rows):
            for rep in range(args.repeat):
                order = ENGINES if (k + rep) % 2 == 0 else ENGINES[::-1]
                for impl in order:
                    seed = f"{impl}/{k}/{rep}/{time.time_ns()}"
                    row.runs[impl].append(measure(pairs[impl], row.point, args.op, args.duration, args.call_timeout, args.verify, seed))
            mc, py = row.summary("mooncake"), row.summary("pymooncake")
            label = row.point.label() + (" single" if row.point.api == "single" else "")

            def show(r: Run | None, a: str) -> str:
                return f"{getattr(r, a):9.3f}" if r and a == "gbps" else (f"{getattr(r, a):9.1f}" if r else "     FAIL")

            x = f"{py.gbps / mc.gbps:6.2f}" if mc and py and mc.gbps else "     -"
            data = "ok" if all(v.verified is not False for v in (mc, py) if v) else "BAD"
            print(
                f"{label:26} {show(mc, 'gbps')} {show(py, 'gbps')} {x} {show(mc, 'p50_us'):>10} {show(py, 'p50_us'):>10} "
                f"{show(mc, 'p99_us')} {show(py, 'p99_us')}  {data if args.verify else '-'}",
                flush=True,
            )
        if args.calls:
            for impl in ENGINES:
                try:
                    calls[impl] = cheap_calls(pairs[impl], args.calls_seconds, 5)
                except WorkerError as e:
                    print(f"  {impl}: per-call measurement failed: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("compare: interrupted; stopping the workers", file=sys.stderr)
        return 130
    finally:
        for pair in pairs.values():
            pair.close()
    cpu = meter.others()  # every worker has been reaped
    lines = report(args, rows, calls, info, versions, load0, cpu, started, skipped)
    print()
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": dict(vars(args)),
                    "machine": info,
                    "versions": versions,
                    "load": load0,
                    "cpu_others_self_steal": cpu,
                    "calls": calls,
                    "rows": [{"point": r.point.__dict__, "runs": {i: [x.__dict__ for x in r.runs[i]] for i in ENGINES}} for r in rows],
                },
                f,
                indent=1,
            )
    if args.doc:
        write_doc(args.doc, lines)
        print(f"\nwrote {os.path.relpath(args.doc, REPO)}")
    bad = any(r.verified is False for row in rows for i in ENGINES for r in row.runs[i])
    failed = any(not r.ok for row in rows for i in ENGINES for r in row.runs[i])
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
