"""Soak test: N engines x M threads of random, verified transfers for T
minutes while peers are killed, stopped and restarted.

    python python/bench/soak.py [--engines 4] [--threads 4] [--minutes 10]
        [--metadata P2PHANDSHAKE|http|etcd|<connection string>]
        [--restart-every 10] [--kinds kill,quit,stop] [--max-block 262144]
        [--transfer-timeout 5] [--report-every 30] [--json FILE]
        [--floods notify,conns] [--flood-every 30] [--flood-seconds 10]

Each engine runs in its own process (multiprocessing spawn) with one
managed buffer: a static region every engine fills with the same bytes,
one slot per (writer engine, thread) that only that thread writes, and the
thread's local scratch. Every thread loops over random operations against
a random other engine, each checked byte for byte:

  write   transfer_sync_write into its slot, transfer_sync_read it back
  read    transfer_sync_read of a random static range
  batch   batch_transfer_sync_write of 1-8 blocks, batch_transfer_sync_read back
  async   batch_transfer_async_write + get_batch_transfer_status, then
          batch_transfer_async_read + transfer_check_status polling
  notify  transfer_sync with a TransferNotify into its slot (the target
          must accept the notify), transfer_sync_read it back

Every engine drains its notifies with get_notifies(), as an application
would: four times a second, the survivor every 5 s (a slow application,
so that a notify flood meets its limits).

Every --restart-every seconds the coordinator disturbs one engine other
than engine 0, the survivor, cycling through --kinds: "kill" (SIGKILL, then
a new process under the same name in store modes, or at a new P2P name),
"quit" (a clean close and restart), "stop" (SIGSTOP for twice the transfer
timeout, then SIGCONT). Threads are told when a peer goes down and comes
back; a failed or mismatched operation is "expected" when its target was
down, stopped or changed incarnation while it ran, and "unexpected"
otherwise.

Every --flood-every seconds a flooder process (its own process, from the
loopback addresses 127.0.0.2 and up, as other hosts would be) attacks the
survivor for --flood-seconds, cycling through --floods: "notify" (three
source addresses send notifies of almost 1 MiB as fast as they can, until
the survivor's per-peer limit refuses them) and "conns" (thousands of idle
connections to the survivor's data port and RPC port, more than its
connection limits, re-opened as the survivor sheds them). Nothing of the
engines' own traffic may fail because of a flood: such a failure is
unexpected.

The report lists operations by type, failures by cause, the floods, and the
descriptors, goroutines and RSS of every engine over time (the survivor's
are the leak check: it talks to every restarted peer and is never
restarted). The exit status is 1 if any failure or mismatch was
unexpected.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import queue
import random
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Any

STATIC = 16 << 20  # bytes of the static region
STATIC_SEED = 20260611
BATCH_MAX = 8


@dataclass(frozen=True)
class Layout:
    """Where things are in every engine's managed buffer."""

    engines: int
    threads: int
    slot: int  # bytes per (writer, thread) slot; also the scratch halves

    @property
    def size(self) -> int:
        return STATIC + self.engines * self.threads * self.slot + self.threads * 2 * self.slot

    def slot_at(self, base: int, writer: int, thread: int) -> int:
        return base + STATIC + (writer * self.threads + thread) * self.slot

    def scratch(self, base: int, thread: int) -> tuple[int, int]:
        start = base + STATIC + self.engines * self.threads * self.slot + thread * 2 * self.slot
        return start, start + self.slot


def static_bytes() -> bytes:
    return random.Random(STATIC_SEED).randbytes(STATIC)


# ------------------------------------------------------------------ worker


@dataclass
class Peer:
    """What a worker knows of another engine."""

    state: str  # up | down | stopped
    gen: int  # bumped on every change the coordinator announces
    segment: str
    addr: int


class Worker:
    """One engine process: M threads of verified random operations."""

    def __init__(self, index: int, incarnation: int, cfg: dict[str, Any], ctl: Queue[Any], out: Queue[Any]) -> None:
        import pymooncake
        from pymooncake.engine import TransferEngine

        self.index, self.incarnation, self.cfg, self.ctl, self.out = index, incarnation, cfg, ctl, out
        self.layout = Layout(cfg["engines"], cfg["threads"], cfg["slot"])
        pymooncake.set_strict(True)
        self.engine = TransferEngine()
        self.engine.initialize(cfg["names"][index], cfg["metadata"], "tcp", "")
        self.base = self.engine.allocate_managed_buffer(self.layout.size)
        self.static = static_bytes()
        ctypes.memmove(self.base, self.static, STATIC)
        self.peers: dict[int, Peer] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()  # threads end their loops
        self.closing = threading.Event()  # the engine may close
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def run(self) -> None:
        rpc = self.engine.get_rpc_port()
        data = [p for p in listening_ports() if p != rpc]
        ports = (rpc, data[0] if len(data) == 1 else 0)
        self.out.put(("hello", self.index, self.incarnation, self.engine.get_segment_name(), self.base, os.getpid(), ports))
        listener = threading.Thread(target=self.listen, daemon=True)
        listener.start()
        threading.Thread(target=self.drain, daemon=True).start()
        threads = [threading.Thread(target=self.loop, args=(t,)) for t in range(self.layout.threads)]
        for t in threads:
            t.start()
        next_report = time.monotonic()
        while not self.stop.wait(max(0.0, next_report - time.monotonic())):
            self.report()
            next_report += self.cfg["sample_every"]
        for t in threads:
            t.join(60)
        self.report()
        self.out.put(("stopped", self.index, self.incarnation))
        self.closing.wait(300)
        self.engine.close()
        self.out.put(("bye", self.index, self.incarnation))

    def listen(self) -> None:
        while True:
            msg = self.ctl.get()
            if msg[0] == "stop":
                self.stop.set()
            elif msg[0] == "close":
                self.closing.set()
                return
            if msg[0] == "peer":
                _, i, state, gen, segment, addr = msg
                self.peers[i] = Peer(state, gen, segment, addr)
                self.out.put(("ack", self.index, self.incarnation, i, gen))

    def drain(self) -> None:
        """Take the notifies peers sent, as an application would."""
        while not self.closing.wait(5.0 if self.index == 0 else 0.25):
            n = len(self.engine.get_notifies())
            if n:
                self.count("notifies received", n)

    def report(self) -> None:
        from pymooncake import _loader

        with self.lock:
            counts, self.counts = self.counts, Counter()
            examples, self.examples = self.examples, {}
        rss = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        sample = {
            "ops": sum(v for k, v in counts.items() if k.startswith("ok ")),
            "fds": len(os.listdir("/proc/self/fd")),
            "goroutines": _loader.load().bindings_NumGoroutine(),
            "rss": rss,
        }
        self.out.put(("sample", self.index, self.incarnation, time.time(), dict(counts), examples, sample))

    def loop(self, t: int) -> None:
        rng = random.Random(f"{self.index}/{self.incarnation}/{t}")
        seen: dict[int, int] = {}  # peer -> gen this thread has succeeded against
        ops = [("write", self.op_write), ("read", self.op_read), ("batch", self.op_batch), ("async", self.op_async), ("notify", self.op_notify)]
        # The coordinator sends the whole directory, this engine included,
        # right after start.
        while len(self.peers) < self.layout.engines and not self.stop.is_set():
            time.sleep(0.01)
        others = [i for i in range(self.layout.engines) if i != self.index]
        while not self.stop.is_set():
            target = rng.choice(others)
            before, me = self.peers[target], self.peers[self.index]
            name, fn = rng.choice(ops)
            err: Exception | None = None
            try:
                fn(rng, t, before)
            except Exception as e:  # every failure is counted; none may end the loop
                err = e
            after, me_after = self.peers[target], self.peers[self.index]
            if err is None:
                self.count(f"ok {name}")
                seen[target] = after.gen
                continue
            cause = f"mismatch: {err}" if isinstance(err, Mismatch) else classify(err)
            # Expected: the target, or this engine itself, was down, stopped
            # or replaced while the operation ran.
            if before.state != "up" or after.gen != before.gen or me.state != "up" or me_after.gen != me.gen:
                verdict = "expected"
            elif name == "async" and seen.get(target) != before.gen:
                verdict = "first async after restart"
            else:
                verdict = "unexpected"
            key = f"fail {name} [{verdict}] {cause}"
            self.count(key)
            with self.lock:
                self.examples.setdefault(key, str(getattr(err, "reason", err))[:300])

    # Operations. Each raises on failure (strict mode) or Mismatch.

    def op_write(self, rng: random.Random, t: int, p: Peer) -> None:
        n = rng.randint(1, self.layout.slot)
        src, dst = self.layout.scratch(self.base, t)
        slot = self.layout.slot_at(p.addr, self.index, t)
        data = rng.randbytes(n)
        ctypes.memmove(src, data, n)
        self.engine.transfer_sync_write(p.segment, src, slot, n)
        ctypes.memset(dst, 0, n)
        self.engine.transfer_sync_read(p.segment, dst, slot, n)
        check(ctypes.string_at(dst, n), data, "write read back")

    def op_notify(self, rng: random.Random, t: int, p: Peer) -> None:
        from pymooncake.engine import TransferNotify, TransferOpcode

        n = rng.randint(1, 4096)
        src, dst = self.layout.scratch(self.base, t)
        slot = self.layout.slot_at(p.addr, self.index, t)
        data = rng.randbytes(n)
        ctypes.memmove(src, data, n)
        note = TransferNotify(f"soak-{self.index}", f"{t} {n} " + "n" * rng.randint(0, 1024))
        self.engine.transfer_sync(p.segment, src, slot, n, TransferOpcode.Write, note)
        ctypes.memset(dst, 0, n)
        self.engine.transfer_sync_read(p.segment, dst, slot, n)
        check(ctypes.string_at(dst, n), data, "notify write read back")

    def op_read(self, rng: random.Random, t: int, p: Peer) -> None:
        n = rng.randint(1, self.layout.slot)
        off = rng.randrange(0, STATIC - n)
        _, dst = self.layout.scratch(self.base, t)
        ctypes.memset(dst, 0, n)
        self.engine.transfer_sync_read(p.segment, dst, p.addr + off, n)
        check(ctypes.string_at(dst, n), self.static[off : off + n], "static read")

    def blocks(self, rng: random.Random, t: int, p: Peer) -> tuple[list[int], list[int], list[int], list[int], bytes]:
        k = rng.randint(1, BATCH_MAX)
        span = self.layout.slot // k
        src, dst = self.layout.scratch(self.base, t)
        slot = self.layout.slot_at(p.addr, self.index, t)
        lens = [rng.randint(1, span) for _ in range(k)]
        data = rng.randbytes(self.layout.slot)
        ctypes.memmove(src, data, self.layout.slot)
        ctypes.memset(dst, 0, self.layout.slot)
        offs = [i * span for i in range(k)]
        expect = b"".join(data[o : o + n] for o, n in zip(offs, lens, strict=True))
        return [src + o for o in offs], [slot + o for o in offs], [dst + o for o in offs], lens, expect

    def op_batch(self, rng: random.Random, t: int, p: Peer) -> None:
        srcs, remotes, dsts, lens, expect = self.blocks(rng, t, p)
        self.engine.batch_transfer_sync_write(p.segment, srcs, remotes, lens)
        self.engine.batch_transfer_sync_read(p.segment, dsts, remotes, lens)
        check(b"".join(ctypes.string_at(d, n) for d, n in zip(dsts, lens, strict=True)), expect, "batch read back")

    def op_async(self, rng: random.Random, t: int, p: Peer) -> None:
        srcs, remotes, dsts, lens, expect = self.blocks(rng, t, p)
        bid = self.engine.batch_transfer_async_write(p.segment, srcs, remotes, lens)
        self.engine.get_batch_transfer_status([bid])
        bid = self.engine.batch_transfer_async_read(p.segment, dsts, remotes, lens)
        give_up = time.monotonic() + 4 * self.cfg["transfer_timeout"] + 60
        while self.engine.transfer_check_status(bid) in (0, -2):
            if time.monotonic() > give_up:
                raise TimeoutError("transfer_check_status never ended")
            time.sleep(0.0005)
        check(b"".join(ctypes.string_at(d, n) for d, n in zip(dsts, lens, strict=True)), expect, "async read back")


class Mismatch(Exception):
    """Bytes read back differ from what was written or published."""


def check(got: bytes, want: bytes, what: str) -> None:
    if got != want:
        i = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        raise Mismatch(f"{what}: first difference at byte {i} of {len(want)}")


# Substrings of failure reasons, in order, naming the cause.
CAUSES = [
    ("connection refused", "connection refused"),
    ("connection reset", "connection reset"),
    ("broken pipe", "broken pipe"),
    ("EOF", "connection closed (EOF)"),
    ("deadline exceeded", "deadline"),
    ("i/o timeout", "i/o timeout"),
    ("not published", "segment not published"),
    ("not found", "not found"),
    ("notify rejected", "notify refused"),
    ("rejected by peer", "range rejected by peer"),
    ("not inside a buffer", "range not in descriptor"),
    ("transport closed", "connections closed"),
    ("batch", "batch"),
]


def classify(e: BaseException) -> str:
    kind = getattr(e, "kind", type(e).__name__)
    reason = str(getattr(e, "reason", e))
    for needle, name in CAUSES:
        if needle in reason:
            return f"{kind}: {name}"
    return f"{kind}: other"


def listening_ports() -> list[int]:
    """The TCP ports this process listens on (from /proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return sorted(ports)


# ----------------------------------------------------------------- flooder

FLOOD_NOTIFY = 1 << 20  # bytes of a flood notify's frame, the default MC_HANDSHAKE_MAX_LENGTH
# Idle connections of a connection flood: above the default limits of the
# data server (4096 in all, 1024 per address) and the RPC server (256 in
# all, 64 per address), from 8 addresses.
FLOOD_DATA_CONNS = 6000
FLOOD_RPC_CONNS = 1000


def notify_frame(name: str, size: int) -> bytes:
    """A Notify request (protocol.md §4.2) whose frame is size bytes."""
    head = json.dumps({"name": name, "notify_msg": ""})[:-2]  # ends with notify_msg's opening quote
    body_len = size - 1  # the length counts the type byte
    msg = "f" * (body_len - len(head) - 3)  # then '"', '}', '\n'
    body = (head + msg + '"}\n').encode()
    assert len(body) == body_len
    return struct.pack("<QB", len(body) + 1, 2) + body


def flood_notifies(port: int, seconds: float) -> dict[str, Any]:
    """Send notifies to 127.0.0.1:port from 3 addresses, 2 senders each, as
    fast as they are answered, for seconds."""
    frame = notify_frame("flood", FLOOD_NOTIFY)
    stats: Counter[str] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def sender(src: str) -> None:
        local: Counter[str] = Counter()
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(src, 0)) as c:
                    c.sendall(frame)
                    reply = b""
                    while chunk := c.recv(65536):
                        reply += chunk
                        if len(reply) >= 9 and len(reply) >= 8 + struct.unpack_from("<Q", reply)[0]:
                            break
                msg = json.loads(reply[9:]) if len(reply) > 9 else None
                local["accepted" if isinstance(msg, dict) and msg.get("notify_msg") else "refused"] += 1
            except (OSError, ValueError):
                local["errors"] += 1
                time.sleep(0.05)
        with lock:
            stats.update(local)

    threads = [threading.Thread(target=sender, args=(f"127.0.0.{2 + i % 3}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"kind": "notify", "seconds": seconds, **stats}


def flood_conns(ports: list[tuple[int, int, str]], seconds: float) -> dict[str, Any]:
    """Hold idle connections (count, port, label) to 127.0.0.1 from 8
    addresses, sending nothing, for seconds; those the target closes are
    opened again, 50 ms later."""
    sel = selectors.DefaultSelector()
    stats: Counter[str] = Counter()
    wanted = [(port, i) for count, port, _ in ports for i in range(count)]
    label = {port: name for _, port, name in ports}
    end = time.monotonic() + seconds

    def dial(port: int, i: int) -> None:
        try:
            c = socket.socket()
            c.setblocking(False)
            c.bind((f"127.0.0.{2 + i % 8}", 0))
            c.connect_ex(("127.0.0.1", port))
        except OSError:
            stats["dial errors"] += 1
            c.close()
            return
        stats[f"{label[port]} opened"] += 1
        sel.register(c, selectors.EVENT_READ, (port, i))

    for port, i in wanted:
        dial(port, i)
    stats["max open"] = len(sel.get_map())
    redial: list[tuple[float, int, int]] = []
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.05):
            port, i = key.data
            sel.unregister(key.fileobj)
            c: socket.socket = key.fileobj  # type: ignore[assignment]
            c.close()  # readable without sending anything: the target closed it
            stats[f"{label[port]} closed by the target"] += 1
            redial.append((time.monotonic() + 0.05, port, i))
        now = time.monotonic()
        due = [r for r in redial if r[0] <= now]
        redial = [r for r in redial if r[0] > now]
        for _, port, i in due:
            dial(port, i)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return {"kind": "conns", "seconds": seconds, **stats}


def flooder_main(ctl: Queue[Any], out: Queue[Any]) -> None:
    """Run the flood phases the coordinator asks for, one at a time."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    while True:
        msg = ctl.get()
        if msg[0] == "quit":
            return
        start = time.time()
        r = flood_notifies(msg[1], msg[2]) if msg[0] == "notify" else flood_conns(msg[1], msg[2])
        out.put(("flood", {**r, "start": start, "end": time.time()}))


def worker_main(index: int, incarnation: int, cfg: dict[str, Any], ctl: Queue[Any], out: Queue[Any]) -> None:
    for k, v in cfg["env"].items():
        os.environ[k] = v
    try:
        Worker(index, incarnation, cfg, ctl, out).run()
    except Exception as e:  # reported to the coordinator, which fails the run
        out.put(("crash", index, incarnation, repr(e)))
        raise


# ------------------------------------------------------------- coordinator


@dataclass
class Slot:
    """The coordinator's view of engine i."""

    index: int
    proc: BaseProcess | None = None
    ctl: Queue[Any] | None = None
    incarnation: int = 0
    segment: str = ""
    addr: int = 0
    pid: int = 0
    ports: tuple[int, int] = (0, 0)  # rpc, data
    state: str = "down"
    gen: int = 0


@dataclass
class Totals:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    disturbances: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    floods: list[dict[str, Any]] = field(default_factory=list)


class Coordinator:
    def __init__(self, args: argparse.Namespace, metadata: str) -> None:
        self.args = args
        self.ctx = multiprocessing.get_context("spawn")
        self.out: Queue[Any] = self.ctx.Queue()
        p2p = metadata == "P2PHANDSHAKE"
        self.cfg: dict[str, Any] = {
            "engines": args.engines,
            "threads": args.threads,
            "slot": args.max_block,
            "metadata": metadata,
            "names": ["127.0.0.1" if p2p else f"soak-{i}" for i in range(args.engines)],
            "transfer_timeout": args.transfer_timeout,
            "sample_every": 2.0,
            "env": {"MC_TRANSFER_TIMEOUT": str(args.transfer_timeout), "MC_TCP_BIND_ADDRESS": "127.0.0.1", "MC_LOG_LEVEL": "ERROR"},
        }
        self.slots = [Slot(i) for i in range(args.engines)]
        self.totals = Totals()
        self.hello: dict[tuple[int, int], threading.Event] = {}
        self.stopped: dict[tuple[int, int], threading.Event] = {}
        self.lock = threading.Lock()
        # acks[(peer, gen)]: the (engine, incarnation) pairs that applied
        # that announcement.
        self.acks: dict[tuple[int, int], set[tuple[int, int]]] = {}
        self.acked = threading.Condition()
        self.t0 = time.time()

    def start(self, s: Slot) -> None:
        s.incarnation += 1
        s.ctl = self.ctx.Queue()
        ev = self.hello[(s.index, s.incarnation)] = threading.Event()
        self.stopped[(s.index, s.incarnation)] = threading.Event()
        s.proc = self.ctx.Process(target=worker_main, args=(s.index, s.incarnation, self.cfg, s.ctl, self.out), daemon=True)
        s.proc.start()
        if not ev.wait(60):
            raise SystemExit(f"engine {s.index} did not start")

    def announce(self, s: Slot, state: str) -> None:
        """Tell every engine that s changed, and wait until all have heard,
        so that failures the change causes are counted as expected."""
        s.state = state
        s.gen += 1
        waiting = set()
        for other in self.slots:
            if other.ctl is not None and other.proc is not None and other.proc.is_alive():
                other.ctl.put(("peer", s.index, s.state, s.gen, s.segment, s.addr))
                waiting.add((other.index, other.incarnation))
        with self.acked:
            self.acked.wait_for(lambda: waiting <= self.acks.get((s.index, s.gen), set()), timeout=10)

    def tell_all(self, to: Slot) -> None:
        assert to.ctl is not None
        for s in self.slots:
            to.ctl.put(("peer", s.index, s.state, s.gen, s.segment, s.addr))

    def collect(self) -> None:
        while True:
            msg = self.out.get()
            kind = msg[0]
            if kind == "hello":
                _, i, inc, segment, addr, pid, ports = msg
                s = self.slots[i]
                s.segment, s.addr, s.pid, s.ports = segment, addr, pid, ports
                self.hello[(i, inc)].set()
            elif kind == "sample":
                _, i, inc, when, counts, examples, sample = msg
                with self.lock:
                    self.totals.counts.update(counts)
                    for k, v in examples.items():
                        self.totals.examples.setdefault(k, v)
                    self.totals.samples.append({"t": when - self.t0, "abs": when, "engine": i, "incarnation": inc, **sample})
            elif kind == "stopped":
                self.stopped[(msg[1], msg[2])].set()
            elif kind == "ack":
                _, i, inc, peer, gen = msg
                with self.acked:
                    self.acks.setdefault((peer, gen), set()).add((i, inc))
                    self.acked.notify_all()
            elif kind == "flood":
                with self.lock:
                    self.totals.floods.append(msg[1])
            elif kind == "crash":
                with self.lock:
                    self.totals.crashes.append(f"engine {msg[1]}.{msg[2]}: {msg[3]}")
            elif kind == "done":
                return

    def disturb(self, s: Slot, kind: str) -> None:
        assert s.proc is not None
        if kind == "stop":
            self.announce(s, "stopped")
            os.kill(s.pid, signal.SIGSTOP)
            time.sleep(2 * self.args.transfer_timeout)
            os.kill(s.pid, signal.SIGCONT)
            time.sleep(0.2)
            self.announce(s, "up")
            return
        self.announce(s, "down")
        if kind == "kill":
            os.kill(s.pid, signal.SIGKILL)
        else:
            assert s.ctl is not None
            s.ctl.put(("stop",))
            s.ctl.put(("close",))
        s.proc.join(60)
        if s.proc.is_alive():
            s.proc.kill()
            s.proc.join()
        self.start(s)
        self.tell_all(s)
        self.announce(s, "up")

    def run(self) -> Totals:
        collector = threading.Thread(target=self.collect, daemon=True)
        collector.start()
        for s in self.slots:
            self.start(s)
        for s in self.slots:
            s.state = "up"
            s.gen = 1
        for s in self.slots:
            self.tell_all(s)
        floods = [k for k in self.args.floods.split(",") if k]
        flood_ctl: Queue[Any] = self.ctx.Queue()
        flooder = self.ctx.Process(target=flooder_main, args=(flood_ctl, self.out), daemon=True) if floods else None
        if flooder is not None:
            flooder.start()
        next_flood = time.monotonic() + self.args.flood_every
        n_flood = 0
        end = time.monotonic() + self.args.minutes * 60
        kinds = self.args.kinds.split(",")
        victims = list(range(1, len(self.slots)))
        n = 0
        next_report = time.monotonic() + self.args.report_every
        next_disturb = time.monotonic() + self.args.restart_every
        while time.monotonic() < end:
            now = time.monotonic()
            if victims and now >= next_disturb:
                s = self.slots[victims[n % len(victims)]]
                kind = kinds[n % len(kinds)]
                self.disturb(s, kind)
                self.totals.disturbances[kind] += 1
                n += 1
                next_disturb = time.monotonic() + self.args.restart_every
            if flooder is not None and now >= next_flood and now + self.args.flood_seconds < end:
                rpc, data = self.slots[0].ports
                kind = floods[n_flood % len(floods)]
                if kind == "notify":
                    flood_ctl.put(("notify", rpc, self.args.flood_seconds))
                else:
                    flood_ctl.put(("conns", [(FLOOD_DATA_CONNS, data, "data"), (FLOOD_RPC_CONNS, rpc, "rpc")], self.args.flood_seconds))
                n_flood += 1
                next_flood = now + self.args.flood_seconds + self.args.flood_every
            if now >= next_report:
                self.progress()
                next_report += self.args.report_every
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
        if flooder is not None:
            flood_ctl.put(("quit",))
            flooder.join(self.args.flood_seconds + 60)
        # Stop every engine's traffic before any engine closes, so that the
        # end of the run causes no failure.
        for s in self.slots:
            if s.ctl is not None:
                s.ctl.put(("stop",))
        for s in self.slots:
            self.stopped[(s.index, s.incarnation)].wait(120)
        for s in self.slots:
            if s.ctl is not None:
                s.ctl.put(("close",))
        for s in self.slots:
            if s.proc is not None:
                s.proc.join(120)
        time.sleep(0.5)
        self.out.put(("done",))
        collector.join(30)
        return self.totals

    def progress(self) -> None:
        with self.lock:
            ops = sum(v for k, v in self.totals.counts.items() if k.startswith("ok "))
            fails = sum(v for k, v in self.totals.counts.items() if k.startswith("fail "))
            bad = sum(v for k, v in self.totals.counts.items() if "[unexpected]" in k)
            surv = [x for x in self.totals.samples if x["engine"] == 0]
        last = surv[-1] if surv else {"fds": 0, "goroutines": 0, "rss": 0}
        print(
            f"[{time.time() - self.t0:7.0f} s] ok {ops} failed {fails} (unexpected {bad}) "
            f"disturbances {sum(self.totals.disturbances.values())} | survivor fds {last['fds']} "
            f"goroutines {last['goroutines']} rss {last['rss'] / 2**20:.1f} MiB",
            flush=True,
        )


# ------------------------------------------------------------------ setup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_etcd(tmp: str) -> tuple[str, subprocess.Popen[bytes]]:
    binary = shutil.which("etcd")
    if binary is None:
        raise SystemExit("--metadata etcd needs the etcd binary on PATH (Debian: apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        [
            binary, "--name", "soak", "--data-dir", os.path.join(tmp, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"soak=http://127.0.0.1:{peer}", "--log-level", "error",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as r:
                if b"true" in r.read():
                    return f"etcd://127.0.0.1:{client}", proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("etcd did not start")


def summarize(args: argparse.Namespace, metadata: str, totals: Totals, seconds: float, t0: float) -> dict[str, Any]:
    ok = Counter({k[3:]: v for k, v in totals.counts.items() if k.startswith("ok ")})
    fails = Counter({k[5:]: v for k, v in totals.counts.items() if k.startswith("fail ")})
    by_engine: dict[int, list[dict[str, Any]]] = {}
    for x in totals.samples:
        by_engine.setdefault(x["engine"], []).append(x)
    surv = sorted(by_engine.get(0, []), key=lambda x: x["t"])
    return {
        "args": vars(args),
        "metadata": metadata,
        "seconds": round(seconds, 1),
        "t0": t0,
        "operations": dict(ok),
        "operations_total": sum(ok.values()),
        "failures": dict(fails.most_common()),
        "failures_expected": sum(v for k, v in fails.items() if "[expected]" in k),
        "failures_first_async_after_restart": sum(v for k, v in fails.items() if "[first async after restart]" in k),
        "failures_unexpected": sum(v for k, v in fails.items() if "[unexpected]" in k),
        "examples": totals.examples,
        "disturbances": dict(totals.disturbances),
        "crashes": totals.crashes,
        "notifies_received": totals.counts.get("notifies received", 0),
        "floods": totals.floods,
        "survivor_during_floods": flood_extremes(surv, totals.floods),
        "survivor": surv,
        "samples": totals.samples,
    }


def flood_extremes(surv: list[dict[str, Any]], floods: list[dict[str, Any]]) -> dict[str, Any]:
    """The survivor's largest fds, goroutines and RSS inside and outside
    the floods (after the first 30 s of warm-up)."""

    def during(x: dict[str, Any]) -> bool:
        return any(f["start"] <= x["abs"] <= f["end"] + 2 for f in floods)

    out: dict[str, Any] = {}
    for name, pick in (("during", True), ("outside", False)):
        xs = [x for x in surv if x["t"] >= 30 and during(x) == pick]
        if xs:
            out[name] = {k: max(x[k] for x in xs) for k in ("fds", "goroutines", "rss")}
    return out


def print_report(r: dict[str, Any]) -> None:
    print()
    print(f"soak: {r['args']['engines']} engines x {r['args']['threads']} threads, {r['seconds']:.0f} s, metadata {r['metadata']}")
    print(f"disturbances: {r['disturbances']}")
    print(f"operations: {r['operations_total']} ({', '.join(f'{k} {v}' for k, v in sorted(r['operations'].items()))})")
    print(
        f"failures: {sum(r['failures'].values())} (expected {r['failures_expected']}, "
        f"first async after restart {r['failures_first_async_after_restart']}, unexpected {r['failures_unexpected']})"
    )
    for k, v in r["failures"].items():
        print(f"  {v:8d}  {k}")
        if "[expected]" not in k:
            print(f"            e.g. {r['examples'].get('fail ' + k, '?')}")
    if r["crashes"]:
        print("crashes:", *r["crashes"], sep="\n  ")
    print(f"notifies received (all engines): {r['notifies_received']}")
    for f in r["floods"]:
        detail = ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("kind", "seconds", "start", "end"))
        print(f"flood {f['kind']} at {f['start'] - r['t0']:.0f} s for {f['seconds']:.0f} s: {detail}")
    for name, x in r["survivor_during_floods"].items():
        print(f"survivor, max {name} floods: fds {x['fds']}, goroutines {x['goroutines']}, rss {x['rss'] / 2**20:.1f} MiB")
    surv = r["survivor"]
    if surv:
        print("survivor (engine 0) over time:")
        print(f"  {'t (s)':>7} {'fds':>5} {'goroutines':>10} {'rss MiB':>8}")
        rows = surv[:: max(1, len(surv) // 12)]
        if rows[-1] is not surv[-1]:
            rows.append(surv[-1])
        for x in rows:
            print(f"  {x['t']:7.0f} {x['fds']:5d} {x['goroutines']:10d} {x['rss'] / 2**20:8.1f}")
    per_engine = Counter[int]()
    for x in r["samples"]:
        per_engine[x["engine"]] += x["ops"]
    print("operations by engine (all its incarnations):", ", ".join(f"{i}: {n}" for i, n in sorted(per_engine.items())))
    others = [x for x in r["samples"] if x["engine"] != 0]
    if others:
        print(
            "other engines, max over the run: "
            f"fds {max(x['fds'] for x in others)}, goroutines {max(x['goroutines'] for x in others)}, "
            f"rss {max(x['rss'] for x in others) / 2**20:.1f} MiB"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--metadata", default="P2PHANDSHAKE", help="P2PHANDSHAKE, http (a server in this process), etcd (a local etcd), or a connection string")
    p.add_argument("--restart-every", type=float, default=10, help="seconds between disturbances of one engine (0: none)")
    p.add_argument("--kinds", default="kill,quit,stop", help="disturbances to cycle through: kill, quit, stop")
    p.add_argument("--max-block", type=int, default=256 << 10, help="largest block of one operation (bytes)")
    p.add_argument("--transfer-timeout", type=int, default=5, help="MC_TRANSFER_TIMEOUT of the engines (seconds, >= 5)")
    p.add_argument("--report-every", type=float, default=30)
    p.add_argument("--json", help="write the full result (every sample) here")
    p.add_argument("--floods", default="notify,conns", help="floods of the survivor to cycle through: notify, conns ('' for none)")
    p.add_argument("--flood-every", type=float, default=30, help="seconds between floods")
    p.add_argument("--flood-seconds", type=float, default=10, help="seconds a flood lasts")
    args = p.parse_args()
    if args.engines < 2 or args.threads < 1 or args.max_block < BATCH_MAX:
        p.error("need at least 2 engines, 1 thread and blocks of 8 bytes")
    if args.restart_every <= 0:
        args.restart_every = float("inf")
    for k in args.kinds.split(","):
        if k not in ("kill", "quit", "stop"):
            p.error(f"unknown disturbance {k!r}")
    for k in filter(None, args.floods.split(",")):
        if k not in ("notify", "conns"):
            p.error(f"unknown flood {k!r}")

    tmp = tempfile.mkdtemp(prefix="pymooncake-soak-")
    etcd: subprocess.Popen[bytes] | None = None
    server = None
    metadata = args.metadata
    try:
        if metadata == "etcd":
            metadata, etcd = start_etcd(tmp)
        elif metadata == "http":
            from pymooncake import _loader

            x = _loader.load()
            server = x.bindings_NewMetadataServer("127.0.0.1:0", "", json.dumps({"MC_LOG_LEVEL": "ERROR"}))
            metadata = f"http://{x.bindings_MetadataServer_Addr(server)}/metadata"
        start = time.monotonic()
        try:
            coord = Coordinator(args, metadata)
            totals = coord.run()
        except queue.Empty:
            raise SystemExit("soak: no answer from the engines") from None
        report = summarize(args, metadata, totals, time.monotonic() - start, coord.t0)
    finally:
        if server is not None:
            from pymooncake import _loader

            _loader.load().bindings_MetadataServer_Stop(server)
        if etcd is not None:
            etcd.terminate()
            etcd.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    bad = report["failures_unexpected"] > 0 or bool(report["crashes"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
