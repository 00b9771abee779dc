"""The same-host transport for host memory, through the Python API, with the
target in another process (pmtest.Peer): cross-memory attach (the default),
the shared-memory ring (PYMOONCAKE_SAME_HOST=shm) and TCP
(PYMOONCAKE_SAME_HOST=0), each moving data both ways with every byte
checked, the log naming the transport and path chosen for the peer, and
faults: a stopped target (cross-memory attach writes to it; the ring times
out) and a killed one.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time

import pytest
from pmtest import Mem, Peer, stop_process

from pymooncake.engine import TransferEngine

MiB = 1 << 20
TIMEOUT = 5  # MC_TRANSFER_TIMEOUT in these tests

# PYMOONCAKE_SAME_HOST -> (transport, path) the initiator's log names
PATHS = {"": ("hostmem", "cma"), "shm": ("hostmem", "shm"), "0": ("tcp", None)}


@pytest.fixture(params=sorted(PATHS))
def same_host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """PYMOONCAKE_SAME_HOST for the engines of the test ("": unset)."""
    value: str = request.param
    if value:
        monkeypatch.setenv("PYMOONCAKE_SAME_HOST", value)
    else:
        monkeypatch.delenv("PYMOONCAKE_SAME_HOST", raising=False)
    monkeypatch.setenv("MC_TRANSFER_TIMEOUT", str(TIMEOUT))
    monkeypatch.setenv("MC_LOG_LEVEL", "INFO")
    return value


def initiator() -> TransferEngine:
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    return e


def logged_choice(log: str, segment: str) -> tuple[str | None, str | None]:
    """The transport the engine logged for segment, and the path the
    same-host transport logged (None where none was)."""
    peer = re.escape(f'"peer": "{segment}"')
    t = re.search(r"transport chosen for peer\s+\{" + peer + r', "transport": "(\w+)"', log)
    p = re.search(r"same-host path chosen\s+\{" + peer + r'.*?"path": "(\w+)"', log)
    return (t.group(1) if t else None), (p.group(1) if p else None)


def test_two_processes(same_host: str, capfd: pytest.CaptureFixture[str]) -> None:
    """Writes and reads, single and batched (scattered 4 KiB pages), between
    this process and a peer process, every byte checked on both sides; the
    log names the transport and the path."""
    size = 8 * MiB
    e = initiator()
    m = Mem(size)
    peer = Peer(size)
    try:
        assert e.register_memory(m.addr, m.size) == 0
        data = os.urandom(MiB)
        m.write(0, data)
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr, len(data)) == 0
        assert bytes.fromhex(str(peer.ask(op="read", off=0, n=len(data))["hex"])) == data
        assert e.transfer_sync_read(peer.segment, m.addr + MiB, peer.addr, len(data)) == 0
        assert m.read(MiB, len(data)) == data

        rng = random.Random(same_host)
        page = 4096
        slots = rng.sample(range(2 * MiB // page, size // page), 300)
        pages = os.urandom(len(slots) * page)
        m.write(2 * MiB, pages)
        locs = [m.addr + 2 * MiB + i * page for i in range(len(slots))]
        remotes = [peer.addr + s * page for s in slots]
        assert e.batch_transfer_sync_write(peer.segment, locs, remotes, [page] * len(slots)) == 0
        for i in (0, 1, len(slots) - 1):
            got = bytes.fromhex(str(peer.ask(op="read", off=slots[i] * page, n=page)["hex"]))
            assert got == pages[i * page : (i + 1) * page], f"page {i}"
        back = [m.addr + 4 * MiB + i * page for i in range(len(slots))]
        bid = e.batch_transfer_async_read(peer.segment, back, remotes, [page] * len(slots))
        assert bid > 0
        assert e.get_batch_transfer_status([bid]) == 0
        assert m.read(4 * MiB, len(pages)) == pages

        # The peer's own push comes back through its transports too.
        m.write(6 * MiB, b"\x00" * page)
        assert peer.ask(op="push", segment=e.get_segment_name(), remote=m.addr + 6 * MiB, off=slots[0] * page, n=page)["rc"] == 0
        assert m.read(6 * MiB, page) == pages[:page]
    finally:
        assert peer.close() == 0
        e.close()
    log = capfd.readouterr().err
    assert logged_choice(log, peer.segment) == PATHS[same_host], log[-3000:]


def test_stopped_peer(same_host: str) -> None:
    """A stopped peer (SIGSTOP): cross-memory attach needs none of its
    threads, so writes land and calls return 0 at once; the ring and TCP
    need its server, so a call fails after MC_TRANSFER_TIMEOUT. After
    SIGCONT every call succeeds again."""
    size = 4 * MiB
    e = initiator()
    m = Mem(size)
    peer = Peer(size)
    try:
        assert e.register_memory(m.addr, m.size) == 0
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr, 4096) == 0
        data = os.urandom(MiB)
        m.write(0, data)
        stop_process(peer.pid)
        try:
            t0 = time.monotonic()
            rc = e.transfer_sync_write(peer.segment, m.addr, peer.addr + MiB, len(data))
            took = time.monotonic() - t0
            if PATHS[same_host][1] == "cma":
                assert rc == 0
                assert took < 1
            else:
                assert rc == -1
                assert TIMEOUT - 0.5 < took < TIMEOUT + 3
        finally:
            os.kill(peer.pid, signal.SIGCONT)
        if PATHS[same_host][1] == "cma":
            assert bytes.fromhex(str(peer.ask(op="read", off=MiB, n=len(data))["hex"])) == data
        data = os.urandom(4096)
        m.write(0, data)
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr + 3 * MiB, len(data)) == 0
        assert bytes.fromhex(str(peer.ask(op="read", off=3 * MiB, n=len(data))["hex"])) == data
    finally:
        peer.close()
        e.close()


def test_killed_peer(same_host: str) -> None:
    """The peer dies in the middle of a large batch: the call fails at once,
    a later call to it fails fast, and another peer is served."""
    size = 64 * MiB
    e = initiator()
    m = Mem(size)
    peer = Peer(size)
    try:
        assert e.register_memory(m.addr, m.size) == 0
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr, 4096) == 0
        n = 64
        out: list[int] = []
        worker = threading.Thread(target=lambda: out.append(e.batch_transfer_sync_write(peer.segment, [m.addr] * n, [peer.addr] * n, [size] * n)))
        worker.start()
        time.sleep(0.05)
        assert not out, "the batch finished before the kill; make it larger"
        os.kill(peer.pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.join(TIMEOUT + 10)
        assert out == [-1]
        assert time.monotonic() - killed < 3, "a dead peer fails the call at once"
        peer.proc.wait(10)
        t1 = time.monotonic()
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr, 4096) == -1
        assert time.monotonic() - t1 < 3
        other = Peer()
        try:
            data = os.urandom(5000)
            m.write(0, data)
            assert e.transfer_sync_write(other.segment, m.addr, other.addr, len(data)) == 0
            assert bytes.fromhex(str(other.ask(op="read", off=0, n=len(data))["hex"])) == data
        finally:
            assert other.close() == 0
    finally:
        peer.close()
        e.close()
