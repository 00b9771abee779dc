"""Notifies: bounded per sending peer and per engine, refused with an error
the sender sees, drained in order and intact however many and however
large (issue 17 item 2)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pmtest import Mem, new_engine

from pymooncake.engine import TransferEngine, TransferNotify, TransferOpcode

Peers = tuple[TransferEngine, Mem, TransferEngine, Mem]


def send(a: TransferEngine, ma: Mem, b: TransferEngine, mb: Mem, n: TransferNotify) -> int:
    return a.batch_transfer_sync(b.get_segment_name(), [ma.addr], [mb.addr], [1], TransferOpcode.Write, n)


def test_many_notifies_of_every_size_drain_in_order(peers: Peers) -> None:
    a, ma, b, mb = peers
    sent = [
        TransferNotify("", ""),
        TransferNotify("näme", "é \x01 \U0001f600"),
        TransferNotify("big", "x" * 300_000),  # larger than get_notifies' first buffer
        *(TransferNotify(f"n{i}", "m" * (i * 37)) for i in range(200)),
        TransferNotify("bigger", "y" * 1_000_000),
        TransferNotify("last", "z"),
    ]
    for n in sent:
        assert send(a, ma, b, mb, n) == 0
    assert b.get_notifies() == sent
    assert b.get_notifies() == []


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch) -> Iterator[Peers]:
    """A target that queues at most 3 notifies of a peer, 64 KiB in all."""
    a = new_engine()
    monkeypatch.setenv("PYMOONCAKE_NOTIFY_MAX_COUNT_PER_PEER", "3")
    monkeypatch.setenv("PYMOONCAKE_NOTIFY_MAX_BYTES", "65536")
    b = new_engine()
    ma, mb = Mem(4096), Mem(4096)
    assert a.register_memory(ma.addr, ma.size) == 0
    assert b.register_memory(mb.addr, mb.size) == 0
    yield a, ma, b, mb
    a.close()
    b.close()


def test_excess_notifies_are_refused_and_the_sender_is_told(limited: Peers, caplog: pytest.LogCaptureFixture) -> None:
    a, ma, b, mb = limited
    for i in range(3):
        assert send(a, ma, b, mb, TransferNotify(f"n{i}", "m")) == 0
    assert send(a, ma, b, mb, TransferNotify("n3", "m")) == -1
    assert "notify queue full: 3 notifies queued from 127.0.0.1 (limit 3 per peer)" in caplog.text
    assert [n.name for n in b.get_notifies()] == ["n0", "n1", "n2"]
    assert send(a, ma, b, mb, TransferNotify("again", "m")) == 0, "room once drained"
    caplog.clear()
    assert send(a, ma, b, mb, TransferNotify("huge", "h" * 70_000)) == -1
    assert "limit 65536" in caplog.text
    assert b.get_notifies() == [TransferNotify("again", "m")]


def test_get_notifies_after_close_returns_empty(pair: tuple[TransferEngine, TransferEngine]) -> None:
    _, b = pair
    assert b.close() == 0
    assert b.get_notifies() == []
