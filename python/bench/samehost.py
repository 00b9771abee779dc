#!/usr/bin/env python3
"""Same-host benchmark: pymooncake to pymooncake over loopback TCP, against
the same-host transport (cross-memory attach, and optionally the
shared-memory ring), side by side in one run.

    python3 python/bench/samehost.py [--quick] [--paths tcp,cma,shm] [--duration S] [--repeat R]
                                     [--only NAME,...] [--no-verify] [--doc docs/benchmarks.md | --no-doc]
                                     [--json FILE]

Each path runs in two processes of its own, a target and an initiator
(python/bench/_compare_worker.py, as compare.py starts them), differing only
in PYMOONCAKE_SAME_HOST: 0 for tcp, 1 for cma (what an unset variable
means too: cross-memory attach), shm for the ring. The paths take turns point by point (the order
rotates), so that drift on a shared machine hits all alike. Points:

- contiguous blocks of 64 KiB and up (batch_transfer_sync_write, one and
  four initiator threads): the goal is at least 1.5x TCP;
- compare.py's client-shaped patterns (--clients there: SGLang's and vLLM's
  batches of 1-256 KiB entries scattered over 32-64 regions, reads and
  writes, and their contiguous twins): the goal is at least 3x TCP for the
  scattered ones;
- a one-entry 4 KiB batch_transfer_sync_write and a transfer_sync_write of
  4 KiB: the goal is a p50 under 10 us.

Data is checked after every run as compare.py checks it (SHA-256 of the
receiving side; the client patterns check every entry's place). Results go
to stdout and, unless --no-doc, into docs/benchmarks.md between the
samehost.py markers, with the command line, the machine and the goals.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import sys
import time

import compare
from compare import MiB, Pair, Pattern, Point, Run, summarize

KiB = 1 << 10
DOC = compare.DOC
BEGIN = "<!-- BEGIN samehost.py: generated, rerun python/bench/samehost.py to replace -->"
END = "<!-- END samehost.py -->"
PATHS = {"tcp": {"PYMOONCAKE_SAME_HOST": "0"}, "cma": {"PYMOONCAKE_SAME_HOST": "1"}, "shm": {"PYMOONCAKE_SAME_HOST": "shm"}}
LABEL = {"tcp": "TCP", "cma": "CMA", "shm": "shm ring"}

GRID = [
    Point(64 * KiB, 1, 1),
    Point(256 * KiB, 1, 1),
    Point(1 * MiB, 1, 1),
    Point(4 * MiB, 1, 1),
    Point(64 * KiB, 128, 1),
    Point(256 * KiB, 32, 1),
    Point(1 * MiB, 32, 1),
    Point(1 * MiB, 32, 4),
    Point(4 * MiB, 8, 1),
    Point(64 * MiB, 1, 1),
]
QUICK_GRID = [Point(64 * KiB, 128, 1), Point(1 * MiB, 32, 1), Point(64 * MiB, 1, 1)]
LATENCY = [Point(4 * KiB, 1, 1, api="batch"), Point(4 * KiB, 1, 1, api="single")]


def item_name(item: Pattern | Point) -> str:
    if isinstance(item, Pattern):
        return item.name
    if item.block == 4 * KiB and item.batch == 1 and item.threads == 1:
        return compare.latency_name(item)
    return f"{compare.size_text(item.block)} x{item.batch} t{item.threads}"


def kind(item: Pattern | Point) -> str:
    """grid, scattered, contiguous (a pattern's twin) or latency."""
    if isinstance(item, Pattern):
        return "scattered" if item.scattered else "contiguous"
    return "latency" if item.block == 4 * KiB else "grid"


def items(args: argparse.Namespace) -> list[Pattern | Point]:
    only = [x for x in (args.only or "").split(",") if x]
    out: list[Pattern | Point] = list(QUICK_GRID if args.quick else GRID)
    out += [x for x in compare.client_points(args.quick, []) if isinstance(x, Pattern)]
    out += LATENCY
    return [x for x in out if not only or any(o in item_name(x) for o in only)]


def ratio(a: Run | None, b: Run | None) -> float | None:
    return a.gbps / b.gbps if a and b and b.gbps > 0 else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(
    args: argparse.Namespace,
    rows: list[tuple[Pattern | Point, dict[str, list[Run]]]],
    info: dict[str, str],
    load: tuple[float, ...],
    cpu: tuple[float, float, float],
    took: float,
) -> list[str]:
    paths = args.paths
    others = [p for p in paths if p != "tcp"]
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"Command: `{args.cmdline}` ({args.duration:g} s per run, {args.repeat} run(s) per path and point, the median reported; took {took / 60:.1f} min)",
        "",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {info['host']}",
        f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.2f}' for x in load)}. During the run other processes used "
        f"{cpu[0]:.2f} of the {os.cpu_count()} cores on average (this benchmark {cpu[2]:.2f}; hypervisor steal {cpu[1]:.2f})"
        + (" — **the machine was shared with other jobs: figures are noisy**" if cpu[0] > 0.25 else ""),
        f"- pymooncake at commit {info['commit']}, {info['go']}, {info['python']}; P2PHANDSHAKE on 127.0.0.1; target and initiator of each "
        "path in their own processes, 256 MiB plus the client patterns' regions registered on each side",
        "- Paths: " + ", ".join(f"{LABEL[p]} (`PYMOONCAKE_SAME_HOST={PATHS[p]['PYMOONCAKE_SAME_HOST']}`)" for p in paths),
        "",
        "GB/s = 10^9 bytes/s; p50 of one call. xTCP: throughput over TCP's at the same point. data: every run's data check passed.",
        "",
    ]
    head = "| point | kind | " + " | ".join(f"{LABEL[p]} GB/s" for p in paths) + " | " + " | ".join(f"{LABEL[p]} xTCP" for p in others)
    head += " | " + " | ".join(f"{LABEL[p]} p50 µs" for p in paths) + " | data |"
    lines += [head, "|" + "---|" * (2 + len(paths) + len(others) + len(paths) + 1)]
    for item, runs in rows:
        s = {p: summarize(runs[p]) for p in paths}
        cells = [item_name(item), kind(item)]
        cells += [f"{r.gbps:.3f}" if (r := s[p]) else "FAIL" for p in paths]
        cells += [fmt(ratio(s[p], s["tcp"])) for p in others]
        cells += [f"{r.p50_us:,.1f}" if (r := s[p]) else "FAIL" for p in paths]
        ok = all(r.verified is not False and r.ok for p in paths for r in runs[p])
        cells.append(("ok" if ok else "BAD") if args.verify else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Goals (issue 15):", ""]
    for p in others:
        lines += goals(rows, p)
    fails = [(item_name(i), e.error) for i, runs in rows for p in paths for e in runs[p] if not e.ok]
    if fails:
        lines += ["", "Failures:", ""] + [f"- {n}: {e}" for n, e in fails]
    return lines


def goals(rows: list[tuple[Pattern | Point, dict[str, list[Run]]]], p: str) -> list[str]:
    def judge(text: str, pairs: list[tuple[str, float | None]], least: float) -> str:
        got = [(n, r) for n, r in pairs if r is not None]
        if not got:
            return f"- {LABEL[p]}: {text}: not measured"
        low = min(got, key=lambda x: x[1])
        met = all(r >= least for _, r in got) and len(got) == len(pairs)
        return f"- {LABEL[p]}: {text}: **{'met' if met else 'NOT met'}** (lowest {low[1]:.2f}x at {low[0]}, over {len(got)} points)"

    big = [(item_name(i), ratio(summarize(r[p]), summarize(r["tcp"]))) for i, r in rows if kind(i) in ("grid", "contiguous")]
    scat = [(item_name(i), ratio(summarize(r[p]), summarize(r["tcp"]))) for i, r in rows if kind(i) == "scattered"]
    out = []
    if big:
        out.append(judge("contiguous blocks of 64 KiB and up at least 1.5x TCP", big, 1.5))
    if scat:
        out.append(judge("scattered client patterns at least 3x TCP", scat, 3.0))
    for i, r in rows:
        if kind(i) == "latency" and isinstance(i, Point) and i.api == "batch":
            s, tcp = summarize(r[p]), summarize(r["tcp"])
            if s:
                out.append(
                    f"- {LABEL[p]}: one-entry 4 KiB batch_transfer_sync_write p50 under 10 µs: **{'met' if s.p50_us < 10 else 'NOT met'}** "
                    f"({s.p50_us:.1f} µs; TCP {fmt(tcp.p50_us if tcp else None, '.1f')} µs)"
                )
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 grid points and the quick client patterns, 2 s per run")
    ap.add_argument("--paths", default="tcp,cma", help="comma list of tcp, cma, shm (default tcp,cma); tcp is always measured")
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (default 2 with --quick, else 3)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per path and point, the median reported (default 1)")
    ap.add_argument("--only", help="comma list: only the points whose names contain one of these")
    ap.add_argument("--layout-seed", type=int, default=14)
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--call-timeout", type=float, default=60.0)
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    ap.add_argument("--doc", default=DOC)
    ap.add_argument("--no-doc", dest="doc", action="store_const", const=None)
    ap.add_argument("--json", help="also write every run's raw figures here")
    ap.add_argument("--python", default=os.environ.get("PYMOONCAKE_PYTHON") or sys.executable)
    args = ap.parse_args(argv)
    args.cmdline = "python3 python/bench/samehost.py" + "".join(" " + shlex.quote(a) for a in argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 3.0
    args.paths = ["tcp"] + [p for p in dict.fromkeys(x.strip() for x in args.paths.split(",")) if p and p != "tcp"]
    if any(p not in PATHS for p in args.paths) or len(args.paths) < 2:
        ap.error(f"--paths: want tcp and one or more of {', '.join(p for p in PATHS if p != 'tcp')}")
    if args.duration <= 0 or args.repeat < 1:
        ap.error("--duration and --repeat must be positive")
    if not os.path.isdir(os.path.join(compare.REPO, "pymooncake", "_gopy")):
        ap.error("no built pymooncake: run make build")
    todo = items(args)
    if not todo:
        ap.error(f"no point matches --only {args.only!r}")
    pats = [x for x in todo if isinstance(x, Pattern)]
    regions = compare.regions_needed(pats, args.layout_seed)
    buffer = 256 * MiB
    signal.signal(signal.SIGTERM, compare._interrupt)
    started, load0, meter = time.time(), os.getloadavg(), compare.CPUMeter()
    info = compare.machine(compare.REPO)
    pairs: dict[str, Pair] = {}
    rows: list[tuple[Pattern | Point, dict[str, list[Run]]]] = [(x, {p: [] for p in args.paths}) for x in todo]
    try:
        for p in args.paths:
            try:
                pairs[p] = Pair("pymooncake", args.python, buffer, args.startup_timeout, compare.REPO, regions, PATHS[p])
            except compare.WorkerError as e:
                raise SystemExit(f"samehost: cannot start the {p} pair: {e}") from None
        print(f"# {len(todo)} points x {len(args.paths)} paths x {args.repeat}, {args.duration:g} s each; load {load0[0]:.2f}", flush=True)
        print(f"{'point':34} " + " ".join(f"{p + ' GB/s':>10}" for p in args.paths) + " " + " ".join(f"{p + ' p50':>10}" for p in args.paths), flush=True)
        for k, (item, runs) in enumerate(rows):
            for rep in range(args.repeat):
                shift = (k + rep) % len(args.paths)
                for p in args.paths[shift:] + args.paths[:shift]:
                    seed = f"{p}/{k}/{rep}/{time.time_ns()}"
                    runs[p].append(compare.measure(pairs[p], item, "write", args.duration, args.call_timeout, args.verify, seed, args.layout_seed))
            s = {p: summarize(runs[p]) for p in args.paths}
            print(
                f"{item_name(item):34} "
                + " ".join(f"{compare.show(s[p], 'gbps'):>10}" for p in args.paths)
                + " "
                + " ".join(f"{compare.show(s[p], 'p50_us'):>10}" for p in args.paths),
                flush=True,
            )
    except KeyboardInterrupt:
        print("samehost: interrupted; stopping the workers", file=sys.stderr)
        return 130
    finally:
        for pair in pairs.values():
            pair.close()
    lines = report(args, rows, info, load0, meter.others(), time.time() - started)
    print()
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": dict(vars(args)),
                    "machine": info,
                    "rows": [{"name": item_name(i), "runs": {p: [x.__dict__ for x in r[p]] for p in args.paths}} for i, r in rows],
                },
                f,
                indent=1,
            )
    if args.doc:
        compare.write_doc(args.doc, lines, BEGIN, END)
        print(f"\nwrote {os.path.relpath(args.doc, compare.REPO)}")
    bad = any(not r.ok or r.verified is False for _, runs in rows for p in args.paths for r in runs[p])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
