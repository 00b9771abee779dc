#!/usr/bin/env python3
"""One engine process for compare.py, driven over stdin/stdout.

The same file runs under either interpreter, so it imports nothing but the
standard library and, once, the engine it is told to use:

    --impl mooncake     mooncake.engine   (the Mooncake venv's python, MC_FORCE_TCP=1)
    --impl pymooncake   pymooncake.engine (this repository's python, PYTHONPATH=<repo>)

The two engines never share a process.

Start-up: initialize(127.0.0.1, P2PHANDSHAKE, tcp), map ``--buffer`` bytes
(anonymous mmap, every page touched so that no run measures page faults),
register them; with ``--regions N --region-size S`` also map N regions of S
bytes, apart from each other (a gap between them, as separate tensors are),
touch them and register each on its own (the per-layer KV tensors of a
vLLM or SGLang worker); then print the hello line. Every line on stdout is
then one JSON object answering one command line on stdin:

    hello                      {"ok", "impl", "version", "role", "name", "buffer", "size", "pid",
                                "regions", "region_size"}
    {"cmd": "fill", "offset", "length", "seed"}   write pattern(seed) there -> {"ok", "sha256"}
    {"cmd": "digest", "offset", "length"}         -> {"ok", "sha256"}
    {"cmd": "run", ...}                           the timed workload (see run()) -> {"ok", ...}
    {"cmd": "cfill", "spec", "side", "as", "seed"}   prepare the regions for a client-shaped run
                                                  (see fill_source, fill_dest) -> {"ok", "entries", "rest", "layout"}
    {"cmd": "cdigest", "spec", "side"}            -> {"ok", "entries", "rest", "layout"}
    {"cmd": "crun", ...}                          the client-shaped workload (see crun()) -> {"ok", ...}
    {"cmd": "calls", "seconds", "repeat"}         per-call cost of cheap calls -> {"ok", ...}
    {"cmd": "exit"}                               -> {"ok"}, then the process exits 0

``python3 _compare_worker.py --self-test`` needs no engine: it checks that the
client-shaped data check accepts a correct transfer and catches a wrong one
(entries swapped, one missing, shifted, cut short, or writing past its range).

A command that fails answers {"ok": false, "error"}. Engine logs (and
anything native code prints on fd 1) go to stderr.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import hashlib
import importlib
import json
import mmap
import os
import random
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

CHUNK = 1 << 24  # pattern and digest work on 16 MiB pieces, to bound memory
GAP = 1 << 20  # bytes between two registered regions, so that no two are adjacent
PIECE = 1 << 20  # the client-shaped fill copies a random piece of this size, shifted, over the regions
SHIFTS = 1 << 16  # ... at one of this many offsets into a slightly longer random string
TAG = 16  # bytes of the tag that makes every source entry unique


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


# ----------------------------------------------------------- client-shaped layouts

Entry = tuple[int, int, int]  # (region, offset in the local region, offset in the remote region)


class Layout:
    """Which bytes a client-shaped workload moves: built alike, from the spec
    alone, in the target and in the initiator (``id`` lets the driver check).

    Spec keys: ``block`` (bytes per entry), ``regions``, ``per_region``
    (entries per region and call), ``threads``, ``split``, ``pool`` (remote
    slots per region; 0: as many as the entries use), ``contiguous`` (remote
    slots in order instead of random), ``lstride`` and ``rstride`` (slot
    sizes; 0: the block), ``roffset`` (where in its remote slot an entry
    goes), ``seed`` (of the random slots).

    ``split == "request"``: every thread makes one call holding ``per_region``
    entries in each region, region after region (all layers' blocks of one
    request, as SGLang and vLLM call ``batch_transfer_sync_write``); local
    slots in order (thread t's from ``t * per_region``), remote slots drawn
    at random from the pool without repetition, none shared between threads.
    ``split == "region"``: one call per region with its ``per_region``
    entries (a per-layer batch), the calls dealt to the threads in turn.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        def num(key: str, least: int) -> int:
            v = spec.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"layout: {key} must be an integer >= {least}, not {v!r}")
            return v

        self.block = num("block", TAG)
        self.regions = num("regions", 1)
        self.per_region = num("per_region", 1)
        self.threads = num("threads", 1)
        self.split = spec.get("split", "request")
        if self.split not in ("request", "region"):
            raise ValueError(f"layout: split must be 'request' or 'region', not {self.split!r}")
        self.lstride = num("lstride", 0) or self.block
        self.rstride = num("rstride", 0) or self.block
        self.roffset = num("roffset", 0)
        if self.lstride < self.block or self.rstride < self.roffset + self.block:
            raise ValueError("layout: a slot must hold its entry (lstride >= block, rstride >= roffset + block)")
        if self.split == "region" and self.threads > self.regions:
            raise ValueError(f"layout: {self.threads} threads share {self.regions} per-region calls")
        users = self.threads if self.split == "request" else 1
        used = users * self.per_region
        pool = num("pool", 0) or used
        if pool < used:
            raise ValueError(f"layout: a pool of {pool} slots per region cannot hold {used} entries")
        contiguous = bool(spec.get("contiguous", False))
        rng = random.Random(f"layout/{spec.get('seed', 0)}")
        slots = [list(range(used)) if contiguous else rng.sample(range(pool), used) for _ in range(self.regions)]

        def entry(r: int, i: int) -> Entry:
            return (r, i * self.lstride, slots[r][i] * self.rstride + self.roffset)

        n = self.per_region
        self.calls: list[list[list[Entry]]]  # per thread, its calls, each a list of entries
        if self.split == "request":
            self.calls = [[[entry(r, t * n + i) for r in range(self.regions) for i in range(n)]] for t in range(self.threads)]
        else:
            self.calls = [[] for _ in range(self.threads)]
            for r in range(self.regions):
                self.calls[r % self.threads].append([entry(r, i) for i in range(n)])
        # the bytes of a region each side's slots span
        self.extent = {"local": used * self.lstride, "remote": pool * self.rstride}
        flat = array.array("q", (x for e in self.entries() for x in e))
        self.id = hashlib.sha256(flat.tobytes()).hexdigest()[:16]

    def entries(self) -> Iterator[Entry]:
        """Every entry once, in one fixed order (thread, call, entry)."""
        for mine in self.calls:
            for call in mine:
                yield from call

    @property
    def count(self) -> int:
        return sum(len(call) for mine in self.calls for call in mine)

    def span(self, side: str, region_size: int) -> int:
        """The bytes of each region that the fill and the checks cover: the
        slots of ``side`` and one block past them (to see a write overrun the
        last slot), within the region."""
        if self.extent[side] > region_size:
            raise ValueError(f"layout: the {side} slots need {self.extent[side]} bytes per region, the regions hold {region_size}")
        return min(region_size, self.extent[side] + self.block)


def _column(side: str) -> int:
    if side not in ("local", "remote"):
        raise ValueError(f"side must be 'local' or 'remote', not {side!r}")
    return 1 if side == "local" else 2


def _random_fill(mv: memoryview, bases: list[int], span: int, seed: str) -> None:
    """Cover [base, base + span) of every region with random bytes: one random
    string, copied piece by piece at varying shifts (memory speed; the tags
    of fill_source make the entries unique)."""
    src = hashlib.shake_256(seed.encode()).digest(PIECE + SHIFTS)
    for r, base in enumerate(bases):
        for k, off in enumerate(range(0, span, PIECE)):
            n = min(PIECE, span - off)
            shift = (hash_int(f"{seed}/{r}/{k}")) % SHIFTS
            mv[base + off : base + off + n] = src[shift : shift + n]


def hash_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def entries_digest(mv: memoryview, bases: list[int], lay: Layout, side: str) -> str:
    """SHA-256 of the entries' bytes on ``side``, in the layout's order: the
    sender's before a run must equal the receiver's after it."""
    col = _column(side)
    h = hashlib.sha256()
    for e in lay.entries():
        a = bases[e[0]] + e[col]
        h.update(mv[a : a + lay.block])
    return h.hexdigest()


def rest_digest(mv: memoryview, bases: list[int], lay: Layout, side: str, span: int) -> str:
    """SHA-256 of the bytes of the regions' spans that no entry covers, region
    by region: a run must leave them as they were."""
    col = _column(side)
    starts: list[list[int]] = [[] for _ in bases]
    for e in lay.entries():
        starts[e[0]].append(e[col])
    h = hashlib.sha256()
    for base, offs in zip(bases, starts, strict=True):
        at = 0
        for off in sorted(offs):
            if off < at:
                raise ValueError("layout: two entries overlap")
            h.update(mv[base + at : base + off])
            at = off + lay.block
        h.update(mv[base + at : base + max(at, span)])
    return h.hexdigest()


def fill_source(mv: memoryview, bases: list[int], lay: Layout, side: str, region_size: int, seed: str) -> str:
    """Fill the sender's spans with random bytes, then stamp each entry's
    first bytes with its index and the seed, so that no two entries (of this
    run or an earlier one) are alike and any entry in the wrong place shows;
    returns entries_digest."""
    span = lay.span(side, region_size)
    _random_fill(mv, bases, span, f"source/{seed}")
    col = _column(side)
    run = hash_int(seed)
    for i, e in enumerate(lay.entries()):
        a = bases[e[0]] + e[col]
        mv[a : a + TAG] = struct.pack("<QQ", run, i)
    return entries_digest(mv, bases, lay, side)


def fill_dest(mv: memoryview, bases: list[int], lay: Layout, side: str, region_size: int, seed: str) -> tuple[str, str]:
    """Fill the receiver's spans with other random bytes (an entry that
    never arrives leaves them); returns (entries_digest, rest_digest)."""
    span = lay.span(side, region_size)
    _random_fill(mv, bases, span, f"dest/{seed}")
    return entries_digest(mv, bases, lay, side), rest_digest(mv, bases, lay, side, span)


def check(source: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
    """The data check of a client-shaped run, from the sender's fill
    (``source``) and the receiver's fill (``before``) and digest after the
    run (``after``): "" when every entry arrived whole in its own place and
    nothing else in the receiver's spans changed, else what is wrong."""
    ids = {source["layout"], before["layout"], after["layout"]}
    if len(ids) != 1:
        return f"the two processes built different layouts ({', '.join(sorted(ids))})"
    if before["entries"] == source["entries"]:
        return "the receiver already held the sender's bytes: the check could not tell"
    if after["entries"] != source["entries"]:
        return "the receiver's entries differ from the sender's"
    if after["rest"] != before["rest"]:
        return "bytes outside the entries changed on the receiver"
    return ""


def self_test() -> int:
    """Check the client-shaped data check without an engine: a simulated
    transfer that follows the layout passes, and each way of getting it
    wrong fails. Returns the exit status."""
    block = 1024
    specs: dict[str, dict[str, Any]] = {
        "scattered, strided remote slots": {
            "block": block,
            "regions": 4,
            "per_region": 32,
            "threads": 2,
            "split": "region",
            "rstride": 2 * block,
            "roffset": block,
            "pool": 48,
            "seed": 7,
        },
        "one request per thread, random slots": {"block": block, "regions": 3, "per_region": 16, "threads": 2, "seed": 8},
        "contiguous": {"block": block, "regions": 2, "per_region": 8, "threads": 1, "contiguous": True, "seed": 9},
    }
    size = 256 * block
    src_map, dst_map = mmap.mmap(-1, 4 * (size + GAP)), mmap.mmap(-1, 4 * (size + GAP))
    src, dst = memoryview(src_map), memoryview(dst_map)
    bases = [i * (size + GAP) for i in range(4)]

    def copy(lay: Layout, skip: int = -1, swap: bool = False, shift: int = 0, short: int = 0, over: int = 0) -> None:
        """A write as an engine would make it (local: src, remote: dst), or wrong in one way."""
        es = list(lay.entries())
        dests = [e[2] for e in es]
        if swap:
            dests[0], dests[1] = dests[1], dests[0]
        for i, e in enumerate(es):
            if i == skip:
                continue
            a, b = bases[e[0]] + e[1], bases[e[0]] + dests[i] + shift
            n = lay.block - (short if i == 0 else 0) + (over if i == 0 else 0)
            dst[b : b + n] = src[a : a + n]

    def state(lay: Layout) -> dict[str, Any]:
        span = lay.span("remote", size)
        return {"entries": entries_digest(dst, bases, lay, "remote"), "rest": rest_digest(dst, bases, lay, "remote", span), "layout": lay.id}

    # (what the simulated engine does, whether it is right, whether it needs room after an entry to show)
    cases: list[tuple[str, Callable[[Layout], None], bool, bool]] = [
        ("right", copy, True, False),
        ("one entry missing", lambda lay: copy(lay, skip=5), False, False),
        ("two entries swapped", lambda lay: copy(lay, swap=True), False, False),
        ("every entry shifted by 8 bytes", lambda lay: copy(lay, shift=8), False, False),
        ("one entry a byte short", lambda lay: copy(lay, short=1), False, False),
        ("one entry a byte too long", lambda lay: copy(lay, over=1), False, True),
    ]
    failed = 0
    for name, spec in specs.items():
        lay = Layout(spec)
        for what, engine, right, needs_room in cases:
            if needs_room and lay.rstride == lay.block and not spec.get("pool"):
                continue  # every byte after an entry belongs to another entry, which overwrites it
            source = {"entries": fill_source(src, bases, lay, "local", size, what), "layout": lay.id}
            d_entries, d_rest = fill_dest(dst, bases, lay, "remote", size, what)
            before = {"entries": d_entries, "rest": d_rest, "layout": lay.id}
            engine(lay)
            why = check(source, before, state(lay))
            ok = (why == "") == right
            failed += not ok
            print(f"{'ok ' if ok else 'BAD'} {name}: {what}: {why or 'passes'}", file=sys.stderr)
        # an entry left over from an earlier run (the same layout, another seed) must not pass
        fill_source(src, bases, lay, "local", size, "earlier")
        fill_dest(dst, bases, lay, "remote", size, "earlier")
        copy(lay)
        source = {"entries": fill_source(src, bases, lay, "local", size, "later"), "layout": lay.id}
        before = state(lay)  # the receiver is not filled again: its entries are the earlier run's
        copy(lay, skip=3)
        why = check(source, before, state(lay))
        failed += why == ""
        print(f"{'BAD' if why == '' else 'ok '} {name}: one entry stale from an earlier run: {why or 'passes'}", file=sys.stderr)
    for v in (src, dst):
        v.release()
    src_map.close()
    dst_map.close()
    print(f"self-test: {'FAILED' if failed else 'passed'}", file=sys.stderr)
    return 1 if failed else 0


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


Job = tuple[tuple[Any, ...], int, int]  # (arguments of one call, its bytes, its blocks)


def drive(move: Callable[..., int], jobs: list[list[Job]], duration: float, warmup: int, max_seconds: float) -> dict[str, Any]:
    """Run ``len(jobs)`` threads, thread t calling ``move(*args)`` for each of
    its jobs in turn, round after round: first ``warmup`` calls, untimed, then
    whole rounds for ``duration`` seconds (the round under way at the end is
    finished and counted, so every job has run at least once and a data check
    sees all of them). The threads stop at the first failure of any, and a
    call still running at ``max_seconds`` fails the run; only calls that
    returned 0 count."""
    threads = len(jobs)
    stop = threading.Event()
    gate = threading.Barrier(threads + 1)
    lat: list[list[int]] = [[] for _ in range(threads)]
    moved = [[0, 0] for _ in range(threads)]  # bytes, blocks
    failures: list[str] = []
    clock = time.perf_counter_ns

    def worker(t: int) -> None:
        mine, count = lat[t], moved[t]
        cycle = jobs[t]
        try:
            for i in range(warmup):
                rc = move(*cycle[i % len(cycle)][0])
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
        k = 0
        while not (failures or (stop.is_set() and k % len(cycle) == 0)):
            args, nbytes, nblocks = cycle[k % len(cycle)]
            t0 = clock()
            rc = move(*args)
            t1 = clock()
            if rc != 0:
                failures.append(f"thread {t}: call {len(mine)} returned {rc}")
                stop.set()
                return
            mine.append(t1 - t0)
            count[0] += nbytes
            count[1] += nblocks
            k += 1

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
        "blocks": sum(c[1] for c in moved),
        "bytes": sum(c[0] for c in moved),
        "failures": failures,
        "p50_us": percentile(every, 50),
        "p99_us": percentile(every, 99),
        "mean_us": (sum(every) / calls / 1e3) if calls else 0.0,
    }


class Worker:
    def __init__(self, impl: str, role: str, size: int, regions: int = 0, region_size: int = 0) -> None:
        if regions < 0 or (regions > 0 and region_size < 1):
            raise ValueError(f"{regions} regions of {region_size} bytes")
        self.impl = impl
        self.role = role
        self.size = size
        self.mod = importlib.import_module(f"{impl}.engine")
        self.te = self.mod.TransferEngine()
        self.map = mmap.mmap(-1, size)
        self.buf = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        ctypes.memset(self.buf, 0, size)  # fault every page in now
        # the regions: one mapping, region i at i * (region_size + GAP)
        self.region_size = region_size
        self.rmap = mmap.mmap(-1, max(1, regions * (region_size + GAP)))
        self.rview = memoryview(self.rmap)
        self.rbases = [i * (region_size + GAP) for i in range(regions)]  # offsets in rmap
        raddr = ctypes.addressof(ctypes.c_char.from_buffer(self.rmap))
        self.raddrs = [raddr + b for b in self.rbases]
        for a in self.raddrs:
            ctypes.memset(a, 0, region_size)
        self.registered: list[int] = []
        self.name = ""

    def start(self) -> dict[str, Any]:
        rc = self.te.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
        if rc != 0:
            raise RuntimeError(f"initialize returned {rc}")
        self.name = f"127.0.0.1:{self.te.get_rpc_port()}"
        for addr, size in [(self.buf, self.size)] + [(a, self.region_size) for a in self.raddrs]:
            rc = self.te.register_memory(addr, size)
            if rc != 0:
                raise RuntimeError(f"register_memory({addr:#x}, {size}) returned {rc}")
            self.registered.append(addr)
        return {
            "ok": True,
            "impl": self.impl,
            "version": version(self.impl),
            "role": self.role,
            "name": self.name,
            "buffer": self.buf,
            "size": self.size,
            "pid": os.getpid(),
            "regions": self.raddrs,
            "region_size": self.region_size,
        }

    def stop(self) -> None:
        for addr in self.registered:
            self.te.unregister_memory(addr)
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
        jobs: list[list[Job]] = []
        for t in range(threads):
            offs = layout(block, batch, threads, t)
            locs = [self.buf + o for o in offs]
            rems = [remote + o for o in offs]
            if api == "batch":
                args: tuple[Any, ...] = (segment, locs, rems, [block] * batch)
            else:
                args = (segment, locs[0], rems[0], block)
            jobs.append([(args, batch * block, batch)])
        return drive(move, jobs, duration, warmup, max_seconds)

    def crun(
        self,
        segment: str,
        remote: list[int],
        remote_size: int,
        op: str,
        spec: dict[str, Any],
        duration: float,
        warmup: int,
        max_seconds: float,
    ) -> dict[str, Any]:
        """The client-shaped workload: the layout's threads each call
        batch_transfer_sync_{op} on their calls in turn (see Layout), from
        this process's regions to the remote regions at the addresses
        ``remote`` (of ``remote_size`` bytes each), for ``duration`` seconds
        after ``warmup`` untimed calls each; as run() otherwise."""
        lay = Layout(spec)
        if lay.regions > len(self.raddrs) or lay.regions > len(remote):
            raise ValueError(f"the layout uses {lay.regions} regions; here {len(self.raddrs)}, there {len(remote)}")
        lay.span("local", self.region_size)
        lay.span("remote", remote_size)
        move = self.te.batch_transfer_sync_write if op == "write" else self.te.batch_transfer_sync_read
        jobs = [
            [
                (
                    (segment, [self.raddrs[r] + lo for r, lo, _ in call], [remote[r] + ro for r, _, ro in call], [lay.block] * len(call)),
                    len(call) * lay.block,
                    len(call),
                )
                for call in mine
            ]
            for mine in lay.calls
        ]
        out = drive(move, jobs, duration, warmup, max_seconds)
        out["layout"] = lay.id
        return out

    def cprepare(self, spec: dict[str, Any], side: str, role: str, seed: str) -> dict[str, Any]:
        """Fill this process's regions for a run of spec: as the sender
        (``role == "source"``) or the receiver (``"dest"``) of ``side``'s
        slots (``"local"``: the initiator's, ``"remote"``: the target's)."""
        lay = Layout(spec)
        bases = self._bases(lay)
        if role == "source":
            entries, rest = fill_source(self.rview, bases, lay, side, self.region_size, seed), ""
        elif role == "dest":
            entries, rest = fill_dest(self.rview, bases, lay, side, self.region_size, seed)
        else:
            raise ValueError(f"role must be 'source' or 'dest', not {role!r}")
        return {"ok": True, "entries": entries, "rest": rest, "layout": lay.id}

    def cdigest(self, spec: dict[str, Any], side: str) -> dict[str, Any]:
        lay = Layout(spec)
        bases = self._bases(lay)
        span = lay.span(side, self.region_size)
        return {
            "ok": True,
            "entries": entries_digest(self.rview, bases, lay, side),
            "rest": rest_digest(self.rview, bases, lay, side, span),
            "layout": lay.id,
        }

    def _bases(self, lay: Layout) -> list[int]:
        if lay.regions > len(self.rbases):
            raise ValueError(f"the layout uses {lay.regions} regions, this process has {len(self.rbases)}")
        return self.rbases[: lay.regions]

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
        out["unregister_many"] = self._unregister_many(repeat)
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

    def _unregister_many(self, repeat: int, count: int = 2048) -> dict[str, Any]:
        """Per-call cost, in ns, of unregister_memory when ``count`` 4 KiB
        buffers are registered and a KV connector's shutdown unregisters
        them one at a time (issue 19): each run registers them all, then
        times the unregistering; the best and the median of ``repeat``."""
        te = self.te
        pool = ctypes.create_string_buffer(count * 4096)
        base = ctypes.addressof(pool)
        runs = []
        for _ in range(repeat + 1):  # the first run warms the tables up
            for i in range(count):
                if te.register_memory(base + i * 4096, 4096) != 0:
                    raise RuntimeError(f"register_memory of buffer {i} of {count} returned non-zero")
            t0 = time.perf_counter_ns()
            for i in range(count):
                if te.unregister_memory(base + i * 4096) != 0:
                    raise RuntimeError(f"unregister_memory of buffer {i} of {count} returned non-zero")
            runs.append((time.perf_counter_ns() - t0) / count)
        runs = sorted(runs[1:])
        return {"best_ns": runs[0], "median_ns": runs[len(runs) // 2], "calls": count, "repeat": repeat}

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
        if cmd == "crun":
            return self.crun(req["segment"], req["remote"], req["remote_size"], req["op"], req["spec"], req["duration"], req["warmup"], req["max_seconds"])
        if cmd == "cfill":
            return self.cprepare(req["spec"], req["side"], req["as"], req["seed"])
        if cmd == "cdigest":
            return self.cdigest(req["spec"], req["side"])
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
    p.add_argument("--impl", choices=["mooncake", "pymooncake"])
    p.add_argument("--role", choices=["target", "initiator"])
    p.add_argument("--buffer", type=int, help="bytes to map and register")
    p.add_argument("--regions", type=int, default=0, help="regions to map and register, each on its own")
    p.add_argument("--region-size", type=int, default=0, help="bytes per region")
    p.add_argument("--self-test", action="store_true", help="check the client-shaped data check, without an engine")
    args = p.parse_args(argv)
    if args.self_test:
        return self_test()
    if args.impl is None or args.role is None or args.buffer is None:
        p.error("--impl, --role and --buffer are required")
    out = protocol_stdout()
    try:
        w = Worker(args.impl, args.role, args.buffer, args.regions, args.region_size)
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
