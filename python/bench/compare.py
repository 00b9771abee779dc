#!/usr/bin/env python3
"""Side-by-side benchmark: Mooncake's TransferEngine against pymooncake's.

    python3 python/bench/compare.py [--clients | --all] [--quick] [--duration S] [--op write|read]
                                    [--blocks 4K,64K,...] [--batches 1,8,...] [--threads 1,4]
                                    [--only NAME,...] [--buffer-mib 256] [--repeat R] [--no-verify]
                                    [--doc docs/benchmarks.md | --no-doc] [--png-dir DIR | --no-png]
                                    [--json FILE]

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
latency goal), and the per-call cost of get_rpc_port(), of
register_memory + unregister_memory of a 4 KiB region, and of
unregister_memory one at a time with 2,048 buffers registered (a KV
connector's shutdown).

--clients runs, instead of that grid, the client-shaped points (--all runs
both): batches as SGLang's and vLLM's Mooncake connectors make them (issue
14). Each process also registers 32-64 regions of its own, apart from each
other, as the per-layer KV tensors are; one batch_transfer_sync_{write,read}
call carries all layers' blocks (or one layer's, for hetero-TP), and the
remote slots are drawn at random (a fixed seed, --layout-seed) from the
target's regions, so that blocks side by side here are not there. Each scattered
point of 32 KiB blocks or more is followed by its contiguous twin (the same
entries, remote slots in order) for the 70% goal; last come one-entry 4 KiB
batch_transfer_sync_write and transfer_sync_write (p50/p99). Data check:
the sender's spans get random bytes and every entry a unique tag, the
receiver's other random bytes; after the run the SHA-256 of the receiver's
entries, in order, must equal the sender's, and the receiver's bytes between
and around them must be unchanged. Mooncake runs with
MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER and MC_TCP_MAX_PENDING_ADMISSIONS_PER_PEER
at 65535 (at the default 1,024 it fails these batches); a point that still
fails is reported as FAIL, with its reason, and the run goes on.

Results go to stdout and, unless --no-doc, into docs/benchmarks.md: the grid
into the "Side-by-side with Mooncake" section (between the compare.py
markers), the client-shaped points into theirs (between the compare.py
--clients markers), each with the command line, a description of the
machine and its goals; with matplotlib installed (an optional dependency:
pip install matplotlib), also as docs/bench-grid.png and
docs/bench-clients.png, linked from the sections (--png-dir elsewhere,
--no-png none; with --no-doc only where --png-dir says).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from _compare_worker import Layout, check

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "_compare_worker.py")
DOC = os.path.join(REPO, "docs", "benchmarks.md")
BEGIN = "<!-- BEGIN compare.py: generated, rerun python/bench/compare.py to replace -->"
END = "<!-- END compare.py -->"
BEGIN_CLIENTS = "<!-- BEGIN compare.py --clients: generated, rerun python/bench/compare.py --clients to replace -->"
END_CLIENTS = "<!-- END compare.py --clients -->"
GRID_PNG, CLIENTS_PNG = "bench-grid.png", "bench-clients.png"
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

# Mooncake's TCP transport refuses a peer more than 1,024 queued transfers by default,
# and SGLang sends 64,448 entries in one call
MOONCAKE_ENV = {"MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER": "65535", "MC_TCP_MAX_PENDING_ADMISSIONS_PER_PEER": "65535"}


@dataclass(frozen=True)
class Pattern:
    """A client-shaped point: the spec of a Layout (see _compare_worker.py)
    and what it stands for."""

    family: str
    shape: str
    op: str
    block: int
    regions: int
    per_region: int
    threads: int = 1
    split: str = "request"
    pool: int = 0
    contiguous: bool = False
    rstride: int = 0
    roffset: int = 0
    quick: bool = True
    twin: str = ""  # the name of the contiguous twin; "": "<name> contig"
    what: str = ""

    @property
    def name(self) -> str:
        return f"{self.family} {self.shape}" + (" read" if self.op == "read" else "")

    def label(self) -> str:
        return self.name

    @property
    def entries(self) -> int:
        """Entries in one call."""
        return self.per_region * (self.regions if self.split == "request" else 1)

    @property
    def calls(self) -> int:
        """Calls in one round of all threads."""
        return self.threads if self.split == "request" else self.regions

    @property
    def scattered(self) -> bool:
        return not self.contiguous

    def spec(self, seed: int) -> dict[str, Any]:
        return {
            "block": self.block,
            "regions": self.regions,
            "per_region": self.per_region,
            "threads": self.threads,
            "split": self.split,
            "pool": self.pool,
            "contiguous": self.contiguous,
            "rstride": self.rstride,
            "roffset": self.roffset,
            "seed": f"{seed}/{self.family} {self.shape}",
        }

    def contiguous_twin(self) -> Pattern:
        """The same entries, with the remote slots in order."""
        family, shape = self.twin.split(" ", 1) if self.twin else (self.family, self.shape + " contig")
        return dataclasses.replace(self, family=family, shape=shape, contiguous=True, twin="", what=f"the contiguous twin of {self.name}")


# The client-shaped points (issue 14). 2 KiB: 8 KV heads x 128 x bf16, one token;
# 32 KiB: 16 of them (SGLang's runs of 16 tokens, vLLM's 16-token block); 72 KiB:
# one 64-token page of DeepSeek's MLA latent (576 x bf16 per token); 256 KiB: a
# 128-token block. 64 regions: 32 layers x K and V tensors.
CLIENT_PATTERNS = [
    Pattern(
        "sglang-mha-p1",
        "64448x2K",
        "write",
        block=2 * KiB,
        regions=64,
        per_region=1007,
        what="SGLang, MHA, page size 1: 1,007 tokens of 32 layers x K,V, one 2 KiB entry per token and tensor, all in one call",
    ),
    Pattern("sglang-mha-p1", "64448x2K", "read", block=2 * KiB, regions=64, per_region=1007, quick=False, what="the same, read"),
    Pattern(
        "sglang-mha-p16",
        "4032x32K",
        "write",
        block=32 * KiB,
        regions=64,
        per_region=63,
        what="SGLang, MHA, runs of 16 tokens: 63 runs of 32 KiB per tensor, 64 tensors, one call",
    ),
    Pattern("sglang-mha-p16", "4032x32K", "read", block=32 * KiB, regions=64, per_region=63, quick=False, what="the same, read"),
    Pattern(
        "sglang-mha-p16",
        "4x4032x32K t4",
        "write",
        block=32 * KiB,
        regions=64,
        per_region=63,
        threads=4,
        what="four such requests at once, from four initiator threads",
    ),
    Pattern(
        "vllm-req",
        "13056x32K",
        "write",
        block=32 * KiB,
        regions=64,
        per_region=204,
        what="vLLM, one request of 3,264 tokens: 204 blocks of 16 tokens (32 KiB) per tensor, 64 tensors, one call",
    ),
    Pattern("vllm-req", "13056x32K", "read", block=32 * KiB, regions=64, per_region=204, what="the same, read, as a decode side that pulls"),
    Pattern(
        "mla-p64",
        "3904x72K",
        "write",
        block=72 * KiB,
        regions=61,
        per_region=64,
        what="DeepSeek MLA, 61 layers, one latent tensor each: 64 pages of 64 tokens (72 KiB) per layer, one call",
    ),
    Pattern(
        "vllm-bs128", "1024x256K", "write", block=256 * KiB, regions=32, per_region=32, what="128-token blocks of 256 KiB: 32 per tensor, 32 tensors, one call"
    ),
    Pattern(
        "sglang-hetero-tp",
        "64x1024x1K t4",
        "write",
        block=1 * KiB,
        regions=64,
        per_region=1024,
        threads=4,
        split="region",
        rstride=2 * KiB,
        roffset=1 * KiB,
        what="SGLang, prefill TP twice decode TP: one call per tensor with 1,024 tokens' 1 KiB head slices, each into the second half "
        "of a 2 KiB token slot on the decode side; 64 calls on 4 threads",
    ),
    Pattern("random", "64x16K", "write", block=16 * KiB, regions=1, per_region=64, pool=512, what="64 slots of 16 KiB drawn from 512 of one region, one call"),
    Pattern(
        "random",
        "128x64K",
        "write",
        block=64 * KiB,
        regions=1,
        per_region=128,
        twin="contiguous 128x64K",
        what="the 128 slots of 64 KiB of one region, shuffled, one call; its twin is the grid's contiguous 64 KiB x 128",
    ),
]
TWIN_MIN_BLOCK = 32 * KiB  # scattered points with blocks this large get a contiguous twin (the 70% goal)


def client_points(quick: bool, only: list[str]) -> list[Pattern | Point]:
    """The client-shaped points in the order they run: each pattern, its
    contiguous twin where it has one, then the two 4 KiB latency points."""
    out: list[Pattern | Point] = []
    for p in CLIENT_PATTERNS:
        if quick and not p.quick:
            continue
        family = [p, p.contiguous_twin()] if p.block >= TWIN_MIN_BLOCK else [p]
        out += [x for x in family if not only or any(o in x.name for o in only)]
    latency = [Point(4 * KiB, 1, 1, api="batch"), Point(4 * KiB, 1, 1, api="single")]
    out += [x for x in latency if not only or any(o in latency_name(x) for o in only)]
    return out


def latency_name(p: Point) -> str:
    return "batch_transfer_sync_write 1x4K" if p.api == "batch" else "transfer_sync_write 4K"


def regions_needed(pats: list[Pattern], seed: int) -> tuple[int, int]:
    """(regions, bytes per region) that every pattern fits in, rounded up to MiB."""
    if not pats:
        return 0, 0
    spans = []
    for p in pats:
        lay = Layout(p.spec(seed))
        spans += [lay.span("local", 1 << 62), lay.span("remote", 1 << 62)]
    return max(p.regions for p in pats), -(-max(spans) // MiB) * MiB


# ----------------------------------------------------------------- processes


class WorkerError(RuntimeError):
    """A worker failed to start, answered an error, died or missed a deadline."""


def mooncake_python() -> str:
    venv = os.environ.get("MOONCAKE_VENV") or os.path.join(REPO, ".venv-mooncake")
    return os.path.join(venv, "bin", "python")


def worker_env(impl: str, source: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """No inherited MC_* or PYMOONCAKE_SAME_HOST settings and no PYTHONPATH,
    then what each engine needs, then extra; pymooncake is imported from the
    checkout at source. Both engines move bytes over TCP: pymooncake's
    same-host transports, which would carry two processes of one host, are
    off unless extra turns them on (samehost.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MC_") and k != "PYMOONCAKE_SAME_HOST"}
    env.pop("PYTHONPATH", None)
    env.pop("PYMOONCAKE_AS_MOONCAKE", None)
    if impl == "mooncake":
        env["MC_FORCE_TCP"] = "1"
        env.update(MOONCAKE_ENV)
    else:
        env["PYTHONPATH"] = source
        env["PYMOONCAKE_SAME_HOST"] = "0"
    env.update(extra or {})
    return env


class Worker:
    """One _compare_worker.py process. close() always reaps it."""

    def __init__(
        self,
        impl: str,
        role: str,
        python: str,
        buffer: int,
        timeout: float,
        source: str = REPO,
        regions: tuple[int, int] = (0, 0),
        env: dict[str, str] | None = None,
    ) -> None:
        self.impl, self.role = impl, role
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        cmd = [python, WORKER, "--impl", impl, "--role", role, "--buffer", str(buffer), "--regions", str(regions[0]), "--region-size", str(regions[1])]
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=worker_env(impl, source, env), text=True, bufsize=1
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
        self.regions: list[int] = self.hello["regions"]
        self.region_size: int = self.hello["region_size"]

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

    def __init__(
        self,
        impl: str,
        python: str,
        buffer: int,
        timeout: float,
        source: str = REPO,
        regions: tuple[int, int] = (0, 0),
        env: dict[str, str] | None = None,
    ) -> None:
        self.impl, self.python, self.buffer_size, self.timeout, self.source = impl, python, buffer, timeout, source
        self.regions, self.env = regions, env
        self.target: Worker | None = None
        self.initiator: Worker | None = None
        self.start()

    def start(self) -> None:
        self.close()
        self.target = Worker(self.impl, "target", self.python, self.buffer_size, self.timeout, self.source, self.regions, self.env)
        self.initiator = Worker(self.impl, "initiator", self.python, self.buffer_size, self.timeout, self.source, self.regions, self.env)

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


def summarize(runs: list[Run]) -> Run | None:
    """The median of the successful runs (each figure separately)."""
    ok = [r for r in runs if r.ok]
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


@dataclass
class Row:
    """A point of the grid and its runs."""

    point: Point
    runs: dict[str, list[Run]] = field(default_factory=lambda: {e: [] for e in ENGINES})

    def summary(self, impl: str) -> Run | None:
        return summarize(self.runs[impl])

    def errors(self, impl: str) -> list[str]:
        return [r.error for r in self.runs[impl] if not r.ok]


@dataclass
class CRow:
    """A client-shaped point (or one of its 4 KiB latency points) and its runs."""

    item: Pattern | Point
    runs: dict[str, list[Run]] = field(default_factory=lambda: {e: [] for e in ENGINES})

    def summary(self, impl: str) -> Run | None:
        return summarize(self.runs[impl])

    def errors(self, impl: str) -> list[str]:
        return [r.error for r in self.runs[impl] if not r.ok]

    @property
    def name(self) -> str:
        return self.item.name if isinstance(self.item, Pattern) else latency_name(self.item)


def size_text(n: int) -> str:
    for unit, k in (("MiB", MiB), ("KiB", KiB)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if mult != 1 else s) * mult


def measure(pair: Pair, p: Point | Pattern, op: str, duration: float, call_timeout: float, verify: bool, seed: str, layout_seed: int = 0) -> Run:
    """One run of p on pair (a Pattern carries its own op); a worker failure
    is returned as a failed Run, and the pair is restarted so the next run
    starts clean."""
    if pair.target is None or pair.initiator is None:
        restart(pair)  # an earlier restart failed: try once more
        if pair.target is None or pair.initiator is None:
            return Run(False, error=f"{pair.impl}: the engine processes could not be restarted")
    op = p.op if isinstance(p, Pattern) else op
    initiator, target = pair.initiator, pair.target
    src, dst = (initiator, target) if op == "write" else (target, initiator)
    limit = duration + call_timeout
    try:
        if isinstance(p, Pattern):
            spec = p.spec(layout_seed)
            sside, dside = ("local", "remote") if op == "write" else ("remote", "local")
            if verify:
                source = src.request({"cmd": "cfill", "spec": spec, "side": sside, "as": "source", "seed": seed}, timeout=120)
                before = dst.request({"cmd": "cfill", "spec": spec, "side": dside, "as": "dest", "seed": seed}, timeout=120)
            req: dict[str, Any] = {
                "cmd": "crun",
                "segment": target.name,
                "remote": target.regions,
                "remote_size": target.region_size,
                "op": op,
                "spec": spec,
                "duration": duration,
                "warmup": 1,
                "max_seconds": limit,
            }
        else:
            if verify:
                want = src.request({"cmd": "fill", "offset": 0, "length": p.span, "seed": seed}, timeout=120)["sha256"]
            req = {
                "cmd": "run",
                "segment": target.name,
                "remote": target.buffer,
                "op": op,
                "api": p.api,
                "block": p.block,
                "batch": p.batch,
                "threads": p.threads,
                "duration": duration,
                "warmup": 2,
                "max_seconds": limit,
            }
        r = initiator.request(req, timeout=limit + 30)
        if r["failures"] or r["calls"] == 0:
            # the engine said why in its log; a dead or wedged peer must not fail the later runs too
            print(f"  {pair.impl} failed at {p.label()}: {r['failures']}; initiator log tail:\n{initiator.log_tail(1500)}", file=sys.stderr)
            restart(pair)
            return Run(False, error=f"{pair.impl}: {'; '.join(r['failures'][:3]) or 'no call completed'}")
        verified, why = None, ""
        if verify:
            if isinstance(p, Pattern):
                after = dst.request({"cmd": "cdigest", "spec": spec, "side": dside}, timeout=120)
                why = check(source, before, after)
                verified = not why
            else:
                verified = dst.request({"cmd": "digest", "offset": 0, "length": p.span}, timeout=120)["sha256"] == want
                why = "" if verified else f"{p.span} bytes differ"
        return Run(
            True,
            gbps=r["bytes"] / r["seconds"] / 1e9,
            ops=r["blocks"] / r["seconds"],
            p50_us=r["p50_us"],
            p99_us=r["p99_us"],
            calls=r["calls"],
            seconds=r["seconds"],
            verified=verified,
            error="" if verified is not False else f"{pair.impl}: data check failed: {why}",
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


# The per-call rows: the worker's key and the table's wording.
CALLS = (
    ("get_rpc_port", "`get_rpc_port()`"),
    ("register_unregister", "`register_memory` + `unregister_memory` (4 KiB)"),
    ("unregister_many", "`unregister_memory`, one at a time, of 2,048 registered 4 KiB buffers"),
)


def calls_table(calls: dict[str, dict[str, Any]]) -> list[str]:
    out = ["| call | MC ns/call | PY ns/call | PY/MC |", "|---|---:|---:|---:|"]
    for key, name in CALLS:
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
    mc, py = calls.get("mooncake", {}).get("unregister_many"), calls.get("pymooncake", {}).get("unregister_many")
    if mc and py:
        r = py["median_ns"] / mc["median_ns"]
        out.append(
            f"- Unregistering 2,048 buffers one at a time, PY ≤ MC (issue 19): **{'met' if r <= 1 else 'NOT met'}** "
            f"({py['median_ns'] * py['calls'] / 1e6:.1f} ms vs {mc['median_ns'] * mc['calls'] / 1e6:.1f} ms, ratio {r:.2f})."
        )
    return out


@dataclass
class Context:
    """What every section of the report says about the run."""

    args: argparse.Namespace
    info: dict[str, str]
    versions: dict[str, str]
    load: tuple[float, ...]
    cpu: tuple[float, float, float]
    started: float
    buffer: int
    regions: tuple[int, int]


def header(ctx: Context, what: str, registered: str, png: str | None, png_alt: str) -> list[str]:
    args, info, versions = ctx.args, ctx.info, ctx.versions
    secs = time.time() - ctx.started
    la0 = ", ".join(f"{x:.2f}" for x in ctx.load)
    others, steal, ours = ctx.cpu
    shared = others > 0.2 or ctx.load[0] > 0.5
    mc_env = ", ".join(f"{k}={v}" for k, v in MOONCAKE_ENV.items())
    out = [
        f"Command: `{args.cmdline}` ({what}; took {secs / 60:.1f} min)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {info['host']}",
        f"- Load average (1, 5, 15 min) at the start: {la0}. During the run other processes used {others:.2f} "
        f"of the {os.cpu_count()} cores on average (this benchmark {ours:.2f}; hypervisor steal {steal:.2f})"
        + (" — **the machine was shared with other jobs (builds, tests): figures are noisy**" if shared else ""),
        f"- Mooncake: `mooncake-transfer-engine-non-cuda` {versions.get('mooncake', '?')} ({args.mooncake_python}), MC_FORCE_TCP=1, "
        f"{mc_env}, other settings default (one TCP I/O thread)",
        f"- pymooncake: {versions.get('pymooncake', '?')} at commit {info['commit']}, {info['go']}, default settings",
        f"- Python {info['python']} for both; P2PHANDSHAKE, TCP over 127.0.0.1; target and initiator of each engine "
        f"in separate processes, {registered} registered on each side",
    ]
    if png:
        out += ["", f"![{png_alt}]({png})"]
    return out


def report(ctx: Context, rows: list[Row], calls: dict[str, dict[str, Any]], skipped: list[Point], png: str | None) -> list[str]:
    """The grid's section."""
    args = ctx.args
    custom = args.blocks or args.batches or args.threads
    grid = "a custom grid" if custom else ("the quick subset" if args.quick else "the full grid")
    out = [
        *header(
            ctx,
            f"{grid}, {args.duration:g} s per run, {args.grid_repeat} run(s) per engine and point, {args.op}s",
            f"{ctx.buffer // MiB} MiB",
            png,
            "GB/s by block size, batch and threads, both engines",
        ),
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


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def duration_text(us: float) -> str:
    """A call's duration with a unit that suits it."""
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.2f} ms"
    return f"{us:.1f} µs"


def data_cell(mc: Run | None, py: Run | None) -> str:
    checks = [r.verified for r in (mc, py) if r is not None]
    return "—" if not checks or all(c is None for c in checks) else ("ok" if all(c is not False for c in checks) else "BAD")


def clients_table(crows: list[CRow]) -> list[str]:
    out = [
        "| pattern | op | entries x size per call | regions | thr | calls per round | MC GB/s | PY GB/s | PY/MC | MC p50 | PY p50 | MC p99 | PY p99 | data |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in crows:
        p = row.item
        if not isinstance(p, Pattern):
            continue
        mc, py = row.summary("mooncake"), row.summary("pymooncake")
        cells = [
            f"`{p.name}`",
            p.op,
            f"{p.entries:,} x {size_text(p.block)}",
            str(p.regions),
            str(p.threads),
            str(p.calls),
            f"{mc.gbps:.3f}" if mc else "FAIL",
            f"{py.gbps:.3f}" if py else "FAIL",
            ratio(py.gbps, mc.gbps) if mc and py else "-",
            duration_text(mc.p50_us) if mc else "FAIL",
            duration_text(py.p50_us) if py else "FAIL",
            duration_text(mc.p99_us) if mc else "FAIL",
            duration_text(py.p99_us) if py else "FAIL",
            data_cell(mc, py),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def latency_table(crows: list[CRow]) -> list[str]:
    out = ["| call (one 4 KiB entry, one thread) | MC p50 µs | PY p50 µs | PY/MC p50 | MC p99 µs | PY p99 µs | data |", "|---|---:|---:|---:|---:|---:|:---:|"]
    for row in crows:
        if isinstance(row.item, Pattern):
            continue
        mc, py = row.summary("mooncake"), row.summary("pymooncake")
        cells = [
            f"`{row.name}`",
            f"{mc.p50_us:,.1f}" if mc else "FAIL",
            f"{py.p50_us:,.1f}" if py else "FAIL",
            ratio(py.p50_us, mc.p50_us) if mc and py else "-",
            f"{mc.p99_us:,.1f}" if mc else "FAIL",
            f"{py.p99_us:,.1f}" if py else "FAIL",
            data_cell(mc, py),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def pattern_notes(crows: list[CRow], seed: int) -> list[str]:
    out = []
    for row in crows:
        p = row.item
        if not isinstance(p, Pattern):
            continue
        used = p.per_region * (p.threads if p.split == "request" else 1)
        slots = "remote slots in order" if p.contiguous else f"remote slots drawn at random from {p.pool or used:,} per region"
        if p.rstride:
            slots += f" of {size_text(p.rstride)}, at {size_text(p.roffset)} into each"
        out.append(f"- `{p.name}`: {p.what} ({plural(p.regions, 'region')}, {used:,} local slots per region in order, {slots}).")
    out.append(f"- Random slots come from `random.Random` seeded with `{seed}/<pattern>` (`--layout-seed`): every run replays them.")
    return out


@dataclass
class Goal:
    text: str
    verdict: str  # PASS, FAIL, INCOMPLETE (some points could not be judged), or n/a (none measured)
    detail: str

    def line(self) -> str:
        return f"- **{self.verdict}** {self.text}: {self.detail}."


def x_text(py: Run, mc: Run | None) -> str:
    return "Mooncake failed" if mc is None else (f"{py.gbps / mc.gbps:.2f}x MC" if mc.gbps > 0 else "MC moved nothing")


def client_goals(crows: list[CRow]) -> list[Goal]:
    """The issue's goals for the client-shaped points, each with its verdict."""
    by_name = {row.name: row for row in crows}
    scattered = [(row, row.item) for row in crows if isinstance(row.item, Pattern) and row.item.scattered]

    def judge(text: str, items: list[tuple[str, bool | None]]) -> Goal:
        """items: (what was seen, True/False, or None if it could not be judged)."""
        if not items:
            return Goal(text, "n/a", "no such point measured")
        judged = [ok for _, ok in items if ok is not None]
        verdict = "FAIL" if False in judged else ("PASS" if len(judged) == len(items) else "INCOMPLETE")
        return Goal(text, verdict, "; ".join(f"{w}{'' if ok else (' (cannot judge)' if ok is None else ' ✗')}" for w, ok in items))

    def ratio_ok(py: Run, mc: Run | None, least: float) -> bool:
        return mc is None or py.gbps >= least * mc.gbps

    out = []
    items: list[tuple[str, bool | None]] = []
    for row, p in scattered:
        if p.block != 2 * KiB:
            continue
        mc, py = row.summary("mooncake"), row.summary("pymooncake")
        if py is None:
            items.append((f"{p.name}: PY failed", False))
        else:
            items.append((f"{p.name}: {py.gbps:.3f} GB/s, {x_text(py, mc)}", py.gbps >= 1.0 and ratio_ok(py, mc, 10)))
    out.append(judge("scattered 2 KiB pages: PY ≥ 1.0 GB/s and ≥ 10x MC", items))

    items = []
    for row, p in scattered:
        if p.block < TWIN_MIN_BLOCK:
            continue
        py = row.summary("pymooncake")
        twin = by_name.get(p.contiguous_twin().name)
        tpy = twin.summary("pymooncake") if twin else None
        if py is None:
            items.append((f"{p.name}: PY failed", False))
        elif tpy is None or tpy.gbps <= 0:
            items.append((f"{p.name}: {py.gbps:.2f} GB/s, contiguous twin not measured", None if py.gbps >= 3.0 else False))
        else:
            share = py.gbps / tpy.gbps
            items.append((f"{p.name}: {py.gbps:.2f} GB/s = {share:.0%} of contiguous", py.gbps >= 3.0 and share >= 0.7))
    out.append(judge("scattered blocks ≥ 32 KiB: PY ≥ 70% of its contiguous twin (same entries and bytes) and ≥ 3 GB/s", items))

    items = []
    for row, p in scattered:
        mc, py = row.summary("mooncake"), row.summary("pymooncake")
        if py is None:
            items.append((f"{p.name}: PY failed", False))
        else:
            items.append((f"{p.name}: {x_text(py, mc)}", ratio_ok(py, mc, 2)))
    goal = judge("every client-shaped point: PY ≥ 2x MC", items)
    if goal.verdict == "PASS":  # at a glance: the lowest ratio is what matters
        ratios = [(r.summary("pymooncake"), r.summary("mooncake"), p) for r, p in scattered]
        finite = [(py.gbps / mc.gbps, p.name) for py, mc, p in ratios if py and mc and mc.gbps > 0]
        lost = sum(1 for _, mc, _ in ratios if mc is None)
        goal.detail = f"all {len(items)} points" + (f" (Mooncake failed {lost})" if lost else "")
        if finite:
            low = min(finite)
            goal.detail += f"; lowest {low[0]:.2f}x at {low[1]}"
    out.append(goal)

    batch = next((r for r in crows if isinstance(r.item, Point) and r.item.api == "batch"), None)
    single = next((r for r in crows if isinstance(r.item, Point) and r.item.api == "single"), None)
    text = "one-entry 4 KiB `batch_transfer_sync_write` p50: PY ≤ 0.4x MC's and ≤ PY's `transfer_sync_write`"
    if batch is None or single is None:
        out.append(Goal(text, "n/a", "not measured"))
    else:
        bmc, bpy, spy = batch.summary("mooncake"), batch.summary("pymooncake"), single.summary("pymooncake")
        if bpy is None or spy is None:
            out.append(Goal(text, "FAIL", "PY failed"))
        elif bmc is None:
            out.append(Goal(text, "INCOMPLETE" if bpy.p50_us <= spy.p50_us else "FAIL", f"Mooncake failed; PY {bpy.p50_us:.1f} µs vs {spy.p50_us:.1f} µs"))
        else:
            ok = bpy.p50_us <= 0.4 * bmc.p50_us and bpy.p50_us <= spy.p50_us
            out.append(
                Goal(
                    text,
                    "PASS" if ok else "FAIL",
                    f"PY {bpy.p50_us:.1f} µs, MC {bmc.p50_us:.1f} µs ({bpy.p50_us / bmc.p50_us:.2f}x), PY `transfer_sync_write` {spy.p50_us:.1f} µs",
                )
            )
    return out


def clients_report(ctx: Context, crows: list[CRow], png: str | None) -> list[str]:
    """The client-shaped points' section."""
    args = ctx.args
    which = "the quick client-shaped points" if args.quick else "the client-shaped points"
    if args.only:
        which += f" matching {args.only!r}"
    regions, size = ctx.regions
    out = [
        *header(
            ctx,
            f"{which}, {args.duration:g} s per run, {args.client_repeat} run(s) per engine and point",
            f"{plural(regions, 'region')} of {size // MiB} MiB, 1 MiB apart (and a {ctx.buffer // MiB} MiB buffer for the 4 KiB calls)",
            png,
            "GB/s of each client-shaped point, both engines, and the 4 KiB p50s",
        ),
        "",
        "MC = Mooncake, PY = pymooncake. GB/s = 10^9 bytes/s moved by calls that returned 0, over the run; p50/p99 of one "
        "`batch_transfer_sync_*` call; entries x size: one call's; calls per round: the calls the threads make in turn. "
        "data: after every run the receiver's entries, in order, matched the sender's (SHA-256; every entry tagged) and the "
        "receiver's bytes around them were unchanged.",
    ]
    if any(isinstance(r.item, Pattern) for r in crows):
        out += ["", *clients_table(crows)]
    if any(not isinstance(r.item, Pattern) for r in crows):
        out += ["", *latency_table(crows)]
    if any(isinstance(r.item, Pattern) for r in crows):
        out += ["", "Patterns:", "", *pattern_notes(crows, args.layout_seed)]
    failed = [(r.name, e) for r in crows for impl in ENGINES for e in (x.error for x in r.runs[impl]) if e]
    if failed:
        out += ["", "Failures:"] + [f"- `{n}`: {e}" for n, e in failed]
    out += ["", "Goals (issue 14, on a 2-core machine; ✗ marks the points that miss):", "", *(g.line() for g in client_goals(crows))]
    return out


def write_doc(path: str, lines: list[str], begin: str = BEGIN, end: str = END) -> None:
    block = "\n".join([begin, *lines, end]) + "\n"
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist; it holds the benchmark sections this script fills in")
    with open(path) as f:
        text = f.read()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block.rstrip("\n") + tail
    else:
        raise SystemExit(f"{path} lacks the markers {begin!r} ... {end!r}")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------- pictures


def plot_grid(rows: list[Row], path: str, title: str) -> bool:
    """GB/s against block size, one line per batch size and engine, one panel
    per thread count; False (with a note) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    batch_rows = [r for r in rows if r.point.api == "batch"]
    threads = sorted({r.point.threads for r in batch_rows})
    if not threads:
        return False
    fig, axes = plt.subplots(1, len(threads), figsize=(6.5 * len(threads), 4.8), squeeze=False, sharey=True)
    colors = plt.get_cmap("tab10")
    for ax, t in zip(axes[0], threads, strict=True):
        mine = [r for r in batch_rows if r.point.threads == t]
        for k, n in enumerate(sorted({r.point.batch for r in mine})):
            line = sorted((r for r in mine if r.point.batch == n), key=lambda r: r.point.block)
            for impl, style in (("pymooncake", "-o"), ("mooncake", "--s")):
                pts = [(r.point.block, s.gbps) for r in line if (s := r.summary(impl)) is not None and s.gbps > 0]
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], style, color=colors(k), label=f"{SHORT[impl]} batch {n}", markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        blocks = sorted({r.point.block for r in mine})
        ax.set_xticks(blocks, [size_text(b).replace(" ", "") for b in blocks])
        ax.set_xlabel("block size")
        ax.set_title(f"{t} initiator thread{'s' if t > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("GB/s (log)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_clients(crows: list[CRow], path: str, title: str) -> bool:
    """Grouped bars of GB/s per client-shaped point (log axis, both engines,
    PY/MC above each group, the goals' 1 and 3 GB/s as lines), and the 4 KiB
    p50s beside them; False (with a note) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    pats = sorted((r for r in crows if isinstance(r.item, Pattern)), key=lambda r: r.item.block)  # stable: twins stay beside theirs
    lats = [r for r in crows if not isinstance(r.item, Pattern)]
    panels = (1 if pats else 0) + (1 if lats else 0)
    if panels == 0:
        return False
    widths = ([max(6.0, 0.55 * len(pats))] if pats else []) + ([2.6] if lats else [])
    fig, axes = plt.subplots(1, panels, figsize=(sum(widths) + 1, 5.6), squeeze=False, gridspec_kw={"width_ratios": widths})
    color = {"mooncake": "#9a9a9a", "pymooncake": "#1f77b4"}
    w = 0.38
    if pats:
        ax = axes[0][0]
        floor = 1e-3
        for i, row in enumerate(pats):
            figs = {impl: row.summary(impl) for impl in ENGINES}
            for j, impl in enumerate(ENGINES):
                x = i + (j - 0.5) * w
                r = figs[impl]
                if r is None:
                    ax.text(x, floor * 1.3, "FAIL", rotation=90, ha="center", va="bottom", fontsize=7, color="red")
                    continue
                hatch = "//" if isinstance(row.item, Pattern) and row.item.contiguous else None
                ax.bar(x, max(r.gbps, floor), w, color=color[impl], hatch=hatch, edgecolor="white", label=SHORT[impl] if i == 0 else None)
            mc, py = figs["mooncake"], figs["pymooncake"]
            if mc and py and mc.gbps > 0:
                ax.text(i, max(mc.gbps, py.gbps) * 1.15, f"{py.gbps / mc.gbps:.1f}x", ha="center", fontsize=7)
        for level, text in ((1.0, "goal 1 GB/s (2 KiB)"), (3.0, "goal 3 GB/s (≥ 32 KiB)")):
            ax.axhline(level, color="green", linestyle=":", linewidth=1)
            ax.text(-0.5, level * 1.04, text, color="green", fontsize=7, ha="left", va="bottom")
        # a band per block size, so the bars read by size and then by pattern
        blocks = [r.item.block for r in pats if isinstance(r.item, Pattern)]
        for group, b in enumerate(sorted(set(blocks))):
            first, last = blocks.index(b), len(blocks) - 1 - blocks[::-1].index(b)
            if group % 2:
                ax.axvspan(first - 0.5, last + 0.5, color="#f0f0f0", zorder=0)
            ax.text((first + last) / 2, 0.98, size_text(b), transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
        top = max((s.gbps for r in pats for impl in ENGINES if (s := r.summary(impl)) is not None), default=1.0)
        ax.set_yscale("log")
        ax.set_ylim(floor, max(top, 3.0) * 4)
        ax.set_xlim(-0.6, len(pats) - 0.4)
        ax.set_xticks(range(len(pats)), [r.name.replace(" ", "\n", 1) for r in pats], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("GB/s (log)")
        ax.set_title("client-shaped batches (hatched: contiguous twin; label: PY/MC)", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        if not lats:  # else the 4 KiB panel's legend says which colour is which
            ax.legend(fontsize=8, loc="lower right")
    if lats:
        ax = axes[0][panels - 1]
        for i, row in enumerate(lats):
            for j, impl in enumerate(ENGINES):
                r = row.summary(impl)
                x = i + (j - 0.5) * w
                if r is None:
                    ax.text(x, 1, "FAIL", rotation=90, ha="center", va="bottom", fontsize=7, color="red")
                    continue
                ax.bar(x, r.p50_us, w, color=color[impl], label=SHORT[impl] if i == 0 else None)
                ax.plot([x], [r.p99_us], marker="_", markersize=12, color="black")
        ax.set_xticks(range(len(lats)), [r.name.replace(" ", "\n", 1) for r in lats], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("µs per call (bar: p50, dash: p99; log)")
        ax.set_title("one 4 KiB entry", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def pyplot() -> Any:
    """matplotlib.pyplot on a file-only backend, or None (with a note) when
    matplotlib, an optional dependency of the benchmarks, is missing."""
    try:  # imported by name: an optional dependency, typed or not
        importlib.import_module("matplotlib").use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("compare: matplotlib is not installed (pip install matplotlib): no PNG drawn", file=sys.stderr)
        return None


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


def show(r: Run | None, attr: str) -> str:
    if r is None:
        return "FAIL"
    return f"{r.gbps:.3f}" if attr == "gbps" else duration_text(getattr(r, attr))


def item_label(item: Pattern | Point, client: bool) -> str:
    if isinstance(item, Pattern):
        return item.name
    return latency_name(item) if client else item.label() + (" single" if item.api == "single" else "")


def sweep(
    pairs: dict[str, Pair], items: list[Point] | list[Pattern | Point], runs: list[dict[str, list[Run]]], repeat: int, args: argparse.Namespace, base: int
) -> None:
    """Run every item repeat times on each engine, the engines taking turns
    (the order flips at every point and run), and print a line per item;
    base numbers the items after the grid's."""
    for k, (item, row) in enumerate(zip(items, runs, strict=True)):
        for rep in range(repeat):
            order = ENGINES if (base + k + rep) % 2 == 0 else ENGINES[::-1]
            for impl in order:
                seed = f"{impl}/{base + k}/{rep}/{time.time_ns()}"
                row[impl].append(measure(pairs[impl], item, args.op, args.duration, args.call_timeout, args.verify, seed, args.layout_seed))
        mc, py = summarize(row["mooncake"]), summarize(row["pymooncake"])
        label = item_label(item, base > 0)
        x = f"{py.gbps / mc.gbps:6.2f}" if mc and py and mc.gbps else "     -"
        data = "ok" if all(v.verified is not False for v in (mc, py) if v) else "BAD"
        print(
            f"{label:34} {show(mc, 'gbps'):>9} {show(py, 'gbps'):>9} {x} {show(mc, 'p50_us'):>10} {show(py, 'p50_us'):>10} "
            f"{show(mc, 'p99_us'):>10} {show(py, 'p99_us'):>10}  {data if args.verify else '-'}",
            flush=True,
        )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--clients", action="store_true", help="only the client-shaped points (issue 14), not the grid")
    which.add_argument("--all", action="store_true", help="the grid, then the client-shaped points")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a 10-point subset of the grid, each point twice per engine (about 2 minutes); "
        "with --clients, the quick client-shaped points, once per engine (about 2.5 minutes)",
    )
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (default 2 with --quick, else 3)")
    ap.add_argument("--op", choices=["write", "read"], default="write", help="the grid's operation (client-shaped points have their own)")
    ap.add_argument("--blocks", help="comma list of block sizes (4K,64K,1M,...); default 4K..64M")
    ap.add_argument("--batches", help="comma list of batch sizes; default 1,8,32,128")
    ap.add_argument("--threads", help="comma list of initiator thread counts; default 1,4")
    ap.add_argument("--only", help="comma list: run only the client-shaped points whose names contain one of these")
    ap.add_argument("--layout-seed", type=int, default=14, help="seed of the client-shaped points' random slots (default 14)")
    ap.add_argument("--buffer-mib", type=int, default=256, help="MiB registered by each process for the grid (default 256)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per engine and point, the median reported (default 1; 2 for the quick grid)",
    )
    ap.add_argument("--no-latency", dest="latency", action="store_false", help="skip the grid's 4 KiB transfer_sync row")
    ap.add_argument("--no-calls", dest="calls", action="store_false", help="skip the per-call costs")
    ap.add_argument("--calls-seconds", type=float, default=0.4, help="seconds per per-call measurement run")
    ap.add_argument("--no-verify", dest="verify", action="store_false", help="skip the SHA-256 data check")
    ap.add_argument("--call-timeout", type=float, default=60.0, help="seconds one transfer call may take past --duration")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    ap.add_argument("--doc", default=DOC, help="markdown file to update (default docs/benchmarks.md)")
    ap.add_argument("--no-doc", dest="doc", action="store_const", const=None, help="only print")
    ap.add_argument("--png-dir", help=f"where {GRID_PNG} and {CLIENTS_PNG} go (default: beside --doc; none with --no-doc)")
    ap.add_argument("--no-png", dest="png", action="store_false", help="draw no PNG")
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
    args.grid_repeat = args.repeat if args.repeat is not None else (2 if args.quick else 1)
    args.client_repeat = args.repeat if args.repeat is not None else 1
    if args.duration <= 0 or args.grid_repeat < 1 or args.buffer_mib < 1:
        ap.error("--duration, --repeat and --buffer-mib must be positive")
    if args.clients and (args.blocks or args.batches or args.threads):
        ap.error("--blocks, --batches and --threads choose grid points: not with --clients")
    if args.only and not (args.clients or args.all):
        ap.error("--only chooses client-shaped points: use it with --clients or --all")
    if not os.path.isdir(os.path.join(args.pymooncake_path, "pymooncake", "_gopy")):
        ap.error(f"no built pymooncake under {args.pymooncake_path}: run make build there")
    if not os.path.exists(args.mooncake_python):
        ap.error(f"no Mooncake interpreter at {args.mooncake_python}: run scripts/install-mooncake.sh (or set MOONCAKE_VENV)")
    run_grid, run_clients = not args.clients, args.clients or args.all
    todo, skipped = points(args) if run_grid else ([], [])
    only = [x for x in (args.only or "").split(",") if x]
    citems = client_points(args.quick, only) if run_clients else []
    if run_grid and not todo:
        ap.error("no point fits in --buffer-mib")
    if run_clients and not citems:
        ap.error(f"no client-shaped point matches --only {args.only!r}")
    pats = [x for x in citems if isinstance(x, Pattern)]
    try:
        regions = regions_needed(pats, args.layout_seed)
    except ValueError as e:
        ap.error(f"a client-shaped pattern is malformed: {e}")
    buffer = args.buffer_mib * MiB if run_grid else 1 * MiB  # without the grid, the 4 KiB calls need little
    png_dir = args.png_dir or (os.path.dirname(os.path.abspath(args.doc)) if args.doc else None)
    if not args.png:
        png_dir = None
    if png_dir and not os.path.isdir(png_dir):
        ap.error(f"--png-dir {png_dir}: no such folder")

    # SIGTERM unwinds like Ctrl-C, so the finally below reaps the workers
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    load0 = os.getloadavg()
    meter = CPUMeter()
    info = machine(args.pymooncake_path)
    pairs: dict[str, Pair] = {}
    rows = [Row(p) for p in todo]
    crows = [CRow(x) for x in citems]
    calls: dict[str, dict[str, Any]] = {}
    try:
        for impl, python in (("mooncake", args.mooncake_python), ("pymooncake", args.pymooncake_python)):
            try:
                pairs[impl] = Pair(impl, python, buffer, args.startup_timeout, args.pymooncake_path, regions)
            except WorkerError as e:
                raise SystemExit(f"compare: cannot start {impl}: {e}" + ("\n(build pymooncake first: make build)" if impl == "pymooncake" else "")) from None
        versions = {impl: pair.version for impl, pair in pairs.items()}
        runs = len(todo) * len(ENGINES) * args.grid_repeat + len(citems) * len(ENGINES) * args.client_repeat
        guess = runs * (args.duration + 0.7) + (20 if args.calls and run_grid else 0)  # 0.7 s: data check and hand-over per run
        parts = [f"{len(todo)} grid points x {args.grid_repeat}"] if run_grid else []
        parts += [f"{len(citems)} client-shaped x {args.client_repeat}"] if run_clients else []
        what = " + ".join(parts)
        print(f"# {what}, x {len(ENGINES)} engines, {args.duration:g} s each; about {guess / 60:.1f} min or more; load {load0[0]:.2f}", flush=True)
        if regions[0]:
            print(f"# {plural(regions[0], 'region')} of {regions[1] // MiB} MiB registered by each of the 4 processes", flush=True)
        print(f"{'point':34} {'MC GB/s':>9} {'PY GB/s':>9} {'x':>6} {'MC p50':>10} {'PY p50':>10} {'MC p99':>10} {'PY p99':>10}  data", flush=True)
        sweep(pairs, todo, [r.runs for r in rows], args.grid_repeat, args, 0)
        if args.calls and run_grid:
            for impl in ENGINES:
                try:
                    calls[impl] = cheap_calls(pairs[impl], args.calls_seconds, 5)
                except WorkerError as e:
                    print(f"  {impl}: per-call measurement failed: {e}", file=sys.stderr)
        sweep(pairs, citems, [r.runs for r in crows], args.client_repeat, args, len(todo) + 1)
    except KeyboardInterrupt:
        print("compare: interrupted; stopping the workers", file=sys.stderr)
        return 130
    finally:
        for pair in pairs.values():
            pair.close()
    cpu = meter.others()  # every worker has been reaped
    ctx = Context(args, info, versions, load0, cpu, started, buffer, regions)
    now = datetime.datetime.now(datetime.timezone.utc)
    title = f"compare.py, {now:%Y-%m-%d %H:%M} UTC, pymooncake {info['commit']}, Mooncake {versions.get('mooncake', '?')}"
    sections = []
    if run_grid:
        png = None
        if png_dir and draw(plot_grid, rows, os.path.join(png_dir, GRID_PNG), title + " — the grid"):
            png = os.path.join(png_dir, GRID_PNG)
        sections.append((report(ctx, rows, calls, skipped, doc_link(png, args.doc)), BEGIN, END, png))
    if run_clients:
        png = None
        if png_dir and draw(plot_clients, crows, os.path.join(png_dir, CLIENTS_PNG), title + " — client-shaped points"):
            png = os.path.join(png_dir, CLIENTS_PNG)
        sections.append((clients_report(ctx, crows, doc_link(png, args.doc)), BEGIN_CLIENTS, END_CLIENTS, png))
    for lines, _, _, png in sections:
        print()
        print("\n".join(lines))
        if png:
            print(f"\ndrew {png}")
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
                    "regions": regions,
                    "rows": [{"point": r.point.__dict__, "runs": {i: [x.__dict__ for x in r.runs[i]] for i in ENGINES}} for r in rows],
                    "clients": [
                        {"name": r.name, "item": dataclasses.asdict(r.item), "runs": {i: [x.__dict__ for x in r.runs[i]] for i in ENGINES}} for r in crows
                    ],
                },
                f,
                indent=1,
            )
    if args.doc:
        for lines, begin, end, _ in sections:
            write_doc(args.doc, lines, begin, end)
        print(f"\nwrote {os.path.relpath(args.doc, REPO)}")
    every = [r for row in rows for i in ENGINES for r in row.runs[i]] + [r for row in crows for i in ENGINES for r in row.runs[i]]
    return 1 if any(r.verified is False or not r.ok for r in every) else 0


def draw(plot: Callable[[Any, str, str], bool], rows: Any, path: str, title: str) -> bool:
    """plot(rows, path, title), where a failure to draw or save costs the
    picture only, never the figures of the run."""
    try:
        return plot(rows, path, title)
    except Exception as e:  # matplotlib's errors have no common base
        print(f"compare: could not draw {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return False


def doc_link(png: str | None, doc: str | None) -> str | None:
    """png as the doc links it (relative to the doc's folder), or None."""
    if png is None:
        return None
    return os.path.relpath(png, os.path.dirname(os.path.abspath(doc))) if doc else png


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
