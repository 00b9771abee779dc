"""Engines that find each other through etcd (initialize with
"etcd://host:port", a bare "host:port", and initialize_ext(..., "etcd")).
Skipped when no etcd binary is installed, unless CI is set."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pmtest import Mem

from pymooncake.engine import TransferEngine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("etcd")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed (Debian: apt-get install etcd-server)")
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    log = (tmp_path / "etcd.log").open("w")
    proc = subprocess.Popen(
        [
            binary, "--name", "t", "--data-dir", str(tmp_path / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"t=http://127.0.0.1:{peer}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as r:
                    if b"true" in r.read():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("etcd did not start: " + (tmp_path / "etcd.log").read_text()[-2000:])
            time.sleep(0.05)
        yield f"127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_engines_over_etcd(etcd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TCP_BIND_ADDRESS", "127.0.0.1")
    a, b, c = TransferEngine(), TransferEngine(), TransferEngine()
    assert a.initialize("node-a", f"etcd://{etcd}", "tcp", "") == 0
    assert b.initialize("node-b", etcd, "tcp", "") == 0  # a bare host:port means etcd
    assert c.initialize_ext("node-c", etcd, "tcp", "", "etcd") == 0
    try:
        ma, mb, mc = Mem(8192), Mem(8192), Mem(8192)
        for e, m in ((a, ma), (b, mb), (c, mc)):
            assert e.register_memory(m.addr, m.size) == 0
        ma.write(0, b"via etcd")
        assert a.transfer_sync_write("node-b", ma.addr, mb.addr + 16, 8) == 0
        assert mb.read(16, 8) == b"via etcd"
        assert c.transfer_sync_read("node-b", mc.addr, mb.addr + 16, 8) == 0
        assert mc.read(0, 8) == b"via etcd"
        assert a.get_first_buffer_address("node-c") == mc.addr
        assert a.send_probe("node-b") == 0
        assert a.transfer_sync_write("node-missing", ma.addr, mb.addr, 8) == -1
    finally:
        for e in (a, b, c):
            e.close()
    # a closed engine deleted its keys: it can no longer be opened
    d = TransferEngine()
    assert d.initialize("node-d", f"etcd://{etcd}", "tcp", "") == 0
    try:
        assert d.get_first_buffer_address("node-b") == 0
    finally:
        d.close()


def test_unreachable_etcd_fails_initialize() -> None:
    t0 = time.monotonic()
    assert TransferEngine().initialize("node-x", f"etcd://127.0.0.1:{free_port()}", "tcp", "") == -1
    assert time.monotonic() - t0 < 40


def test_peer_restarted_under_the_same_name(etcd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync call after the peer restarted (new ports, same name) succeeds:
    the broken handle is re-resolved and the transfer retried once."""
    monkeypatch.setenv("MC_TCP_BIND_ADDRESS", "127.0.0.1")
    a, b = TransferEngine(), TransferEngine()
    assert a.initialize("node-a", etcd, "tcp", "") == 0
    assert b.initialize("node-b", etcd, "tcp", "") == 0
    ma, mb = Mem(8192), Mem(8192)
    try:
        assert a.register_memory(ma.addr, ma.size) == 0
        assert b.register_memory(mb.addr, mb.size) == 0
        ma.write(0, b"first")
        assert a.transfer_sync_write("node-b", ma.addr, mb.addr, 5) == 0
        b.close()
        b = TransferEngine()
        assert b.initialize("node-b", etcd, "tcp", "") == 0
        assert b.register_memory(mb.addr, mb.size) == 0
        ma.write(0, b"again")
        assert a.transfer_sync_write("node-b", ma.addr, mb.addr, 5) == 0
        assert mb.read(0, 5) == b"again"
    finally:
        a.close()
        b.close()
