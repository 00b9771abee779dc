"""Engines in different processes over loopback TCP; spawn works, fork
after first use is refused; a stalled peer hits the deadlines."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest
from pmtest import Mem, Peer, spawn_child_push, stop_process

from pymooncake.engine import TransferEngine, TransferNotify


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    assert p.close() == 0


def test_two_processes(engine: TransferEngine, peer: Peer) -> None:
    m = Mem(1 << 16)
    assert engine.register_memory(m.addr, m.size) == 0
    data = os.urandom(40_000)
    m.write(0, data)
    # write into the peer and read it there
    assert engine.transfer_sync_write(peer.segment, m.addr, peer.addr + 123, len(data)) == 0
    assert bytes.fromhex(str(peer.ask(op="read", off=123, n=len(data))["hex"])) == data
    # the peer writes its buffer; read it from here
    other = os.urandom(5000)
    assert peer.ask(op="write", off=0, hex=other.hex())["rc"] == 0
    assert engine.batch_transfer_sync_read(peer.segment, [m.addr + 50_000], [peer.addr], [5000]) == 0
    assert m.read(50_000, 5000) == other
    # a notify crosses too
    assert engine.transfer_sync(peer.segment, m.addr, peer.addr, 8, 1, TransferNotify("from", "parent")) == 0
    assert peer.ask(op="notifies")["notifies"] == [["from", "parent"]]
    # and the peer can push into us
    theirs = bytes.fromhex(str(peer.ask(op="read", off=123, n=1000)["hex"]))
    assert peer.ask(op="push", segment=engine.get_segment_name(), remote=m.addr + 60_000, off=123, n=1000)["rc"] == 0
    assert m.read(60_000, 1000) == theirs
    assert engine.get_first_buffer_address(peer.segment) == peer.addr
    assert engine.send_probe(peer.segment) == 0
    assert engine.unregister_memory(m.addr) == 0


def test_spawned_process_uses_its_own_engine(engine: TransferEngine) -> None:
    m = Mem(4096)
    assert engine.register_memory(m.addr, m.size) == 0
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=spawn_child_push, args=(engine.get_segment_name(), m.addr + 100, b"from a spawned child", q))
    child.start()
    try:
        assert q.get(timeout=60) == 0
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert m.read(100, 20) == b"from a spawned child"
    assert engine.unregister_memory(m.addr) == 0


def _forked_child(e: TransferEngine, addr: int, conn: Connection) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logging.getLogger("pymooncake").addHandler(Keep())
    out = [
        e.get_rpc_port(),
        e.register_memory(addr, 16),
        e.transfer_sync_write("127.0.0.1:1", addr, 0, 1),
        e.allocate_managed_buffer(4096),
        e.send_probe("127.0.0.1:1"),
        e.get_local_topology(),
        e.close(),
    ]
    raised: list[tuple[str, str] | None] = []
    for engine in (TransferEngine(), e):  # a new engine, and the inherited one
        try:
            engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
            raised.append(None)
        except RuntimeError as exc:
            raised.append((type(exc).__name__, str(exc)))
    conn.send((out, records, raised))
    conn.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_after_first_use_is_refused(engine: TransferEngine) -> None:
    """multiprocessing's fork: initialize raises (not in strict mode here),
    every other call returns its failure value and logs why."""
    m = Mem(4096)
    ctx = multiprocessing.get_context("fork")
    parent, child_end = ctx.Pipe()
    child = ctx.Process(target=_forked_child, args=(engine, m.addr, child_end))
    child.start()
    try:
        assert parent.poll(30), "fork child did not answer"
        out, records, raised = parent.recv()
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert out == [-1, -1, -1, 0, -1, "", 0]
    assert len(records) == 8  # six calls, two initializes
    assert all("used after fork" in r and "'spawn' or 'forkserver'" in r for r in records)
    for r in raised:
        assert r is not None, "initialize did not raise in a fork child"
        name, message = r
        assert name == "EngineStateError"
        assert "fork()" in message
        assert "'spawn' or 'forkserver'" in message
        assert "before the first initialize()" in message
    # the parent's engine is untouched
    assert engine.get_rpc_port() > 0
    assert engine.register_memory(m.addr, m.size) == 0
    assert engine.unregister_memory(m.addr) == 0


def test_os_fork_after_first_use_raises() -> None:
    """os.fork() directly, outside strict mode: the child's initialize raises
    a RuntimeError that names the fix, and the parent goes on."""
    from pmtest import run_python

    r = run_python(
        "import os\n"
        "from pymooncake.engine import TransferEngine\n"
        "e = TransferEngine()\n"
        "assert e.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '') == 0\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        TransferEngine().initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '')\n"
        "    except RuntimeError as exc:\n"
        "        os._exit(0 if 'forkserver' in str(exc) else 4)\n"
        "    os._exit(3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), e.send_probe(e.get_segment_name()))\n"
        "e.close()\n",
        env={"PYMOONCAKE_STRICT": "0"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "0"]


def test_fork_before_first_use_is_harmless() -> None:
    from pmtest import run_python

    r = run_python(
        "import os, sys\n"
        "import pymooncake\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    e = pymooncake.TransferEngine()\n"
        "    rc = e.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '')\n"
        "    e.close()\n"
        "    os._exit(0 if rc == 0 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


@pytest.mark.parametrize("same_host", ["0", "shm"])
def test_stalled_peer_hits_the_deadlines(same_host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MC_TRANSFER_TIMEOUT=5: a sync call to a stopped peer returns -1 after
    about 5 s; an async batch reports -2 (timeout) once past 5 s, then
    completes when the peer resumes. Over TCP and over the same-host ring;
    cross-memory attach writes to a stopped peer (test_samehost.py)."""
    monkeypatch.setenv("MC_TRANSFER_TIMEOUT", "5")
    monkeypatch.setenv("PYMOONCAKE_SAME_HOST", same_host)
    peer = Peer()
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    m = Mem(4096)
    try:
        assert e.register_memory(m.addr, m.size) == 0
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr, 64) == 0  # connected
        stop_process(peer.pid)
        try:
            bid = e.transfer_submit_write(peer.segment, m.addr, peer.addr, 64)
            assert bid > 0
            sync_rc: list[int] = []
            t0 = time.monotonic()
            worker = threading.Thread(target=lambda: sync_rc.append(e.transfer_sync_write(peer.segment, m.addr, peer.addr, 64)))
            worker.start()
            statuses = set()
            while time.monotonic() - t0 < 7:
                statuses.add(e.transfer_check_status(bid))
                time.sleep(0.05)
            worker.join(30)
            elapsed = time.monotonic() - t0
            assert sync_rc == [-1]
            assert 4.5 < elapsed < 20
            assert statuses == {0, -2}
        finally:
            os.kill(peer.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        rc = -2
        while rc in (0, -2) and time.monotonic() < deadline:
            rc = e.transfer_check_status(bid)
            time.sleep(0.01)
        assert rc == 1  # the peer resumed and answered
        assert e.transfer_sync_write(peer.segment, m.addr, peer.addr, 64) == 0
    finally:
        e.close()
        peer.close()
