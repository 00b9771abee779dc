"""Engines that find each other through etcd (initialize with
"etcd://host:port", a bare "host:port", and initialize_ext(..., "etcd")).
Skipped when no etcd binary is installed, unless CI is set (the etcd
fixture is in conftest.py)."""

from __future__ import annotations

import time

import pytest
from pmtest import Mem, free_port

from pymooncake.engine import TransferEngine


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
