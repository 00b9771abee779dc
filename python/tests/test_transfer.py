"""Transfers between two engines of this process over TCP on 127.0.0.1:
every transfer method, notifies, probes, segments; success and failure."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from pmtest import Mem

from pymooncake.engine import TransferEngine, TransferNotify, TransferOpcode

Peers = tuple[TransferEngine, Mem, TransferEngine, Mem]


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 131 + seed) & 0xFF for i in range(n))


def test_transfer_sync_write_and_read(peers: Peers) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    data = pattern(5000)
    ma.write(0, data)
    assert a.transfer_sync_write(seg, ma.addr, mb.addr + 64, len(data)) == 0
    assert mb.read(64, len(data)) == data
    mb.write(10_000, pattern(3000, seed=7))
    assert a.transfer_sync_read(seg, ma.addr + 20_000, mb.addr + 10_000, 3000, transport_hint="") == 0
    assert ma.read(20_000, 3000) == pattern(3000, seed=7)


def test_zero_length_transfer(peers: Peers) -> None:
    a, ma, b, mb = peers
    assert a.transfer_sync_write(b.get_segment_name(), ma.addr, mb.addr, 0) == 0


@pytest.mark.parametrize("opcode", [TransferOpcode.Write, TransferOpcode.Read, 1, 0])
def test_transfer_sync_with_notify(peers: Peers, opcode: int) -> None:
    a, ma, b, mb = peers
    src, dst = (ma, mb) if opcode == 1 else (mb, ma)
    src.write(0, b"payload")
    n = TransferNotify("sender", "done \x01 é")
    assert a.transfer_sync(b.get_segment_name(), ma.addr, mb.addr, 7, opcode, n) == 0
    assert dst.read(0, 7) == b"payload"
    assert b.get_notifies() == [n]
    assert b.get_notifies() == []  # drained
    assert a.transfer_sync(b.get_segment_name(), ma.addr, mb.addr, 7, opcode) == 0
    assert b.get_notifies() == []


def test_batch_transfer_sync(peers: Peers) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    blocks = [(i * 4096, 100_000 + i * 8192, 1000 + i) for i in range(16)]
    for i, (lo, _, n) in enumerate(blocks):
        ma.write(lo, pattern(n, seed=i))
    locals_ = [ma.addr + lo for lo, _, _ in blocks]
    remotes = [mb.addr + ro for _, ro, _ in blocks]
    lengths = [n for _, _, n in blocks]
    assert a.batch_transfer_sync_write(seg, locals_, remotes, lengths) == 0
    for i, (_, ro, n) in enumerate(blocks):
        assert mb.read(ro, n) == pattern(n, seed=i)
    # read them back elsewhere
    back = [ma.addr + 500_000 + lo for lo, _, _ in blocks]
    assert a.batch_transfer_sync_read(seg, back, remotes, lengths) == 0
    for i, (lo, _, n) in enumerate(blocks):
        assert ma.read(500_000 + lo, n) == pattern(n, seed=i)
    # the opcode form, with a notify
    note = TransferNotify("batch", "ok")
    assert a.batch_transfer_sync(seg, [ma.addr], [mb.addr], [10], TransferOpcode.Write, note) == 0
    assert b.get_notifies() == [note]
    assert a.batch_transfer_sync(seg, [ma.addr], [mb.addr], [10], TransferOpcode.Read) == 0
    assert a.batch_transfer_sync(seg, [], [], [], TransferOpcode.Write) == 0


def test_batch_async_and_status(peers: Peers) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    ma.write(0, pattern(8192))
    ids = [
        a.batch_transfer_async_write(seg, [ma.addr], [mb.addr], [4096]),
        a.batch_transfer_async_write(seg, [ma.addr + 4096], [mb.addr + 4096], [4096]),
        a.batch_transfer_async(seg, [ma.addr + 65536], [mb.addr], [8192], TransferOpcode.Read),
    ]
    assert all(0 < i < 1 << 63 for i in ids)
    assert len(set(ids)) == 3
    assert a.get_batch_transfer_status(ids) == 0
    assert mb.read(0, 8192) == pattern(8192)
    # completed batches are freed: asking again is an unknown id
    assert a.get_batch_transfer_status(ids[:1]) == -1
    rid = a.batch_transfer_async_read(seg, [ma.addr + 200_000], [mb.addr], [8192])
    assert a.get_batch_transfer_status([rid]) == 0
    assert ma.read(200_000, 8192) == pattern(8192)
    assert a.get_batch_transfer_status([]) == 0


def test_submit_and_check_status(peers: Peers) -> None:
    a, ma, b, mb = peers
    ma.write(0, b"submitted")
    bid = a.transfer_submit_write(b.get_segment_name(), ma.addr, mb.addr + 7, 9)
    assert bid > 0
    deadline = time.monotonic() + 10
    rc = 0
    while rc == 0 and time.monotonic() < deadline:
        rc = a.transfer_check_status(bid)
    assert rc == 1
    assert mb.read(7, 9) == b"submitted"
    assert a.transfer_check_status(bid) == -1  # freed


def test_failed_async_batch_reports_minus_one_and_is_freed(peers: Peers) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    # the local range is not registered: the submit fails, the id is 0
    assert a.batch_transfer_async_write(seg, [Mem(16).addr], [mb.addr], [16]) == 0
    assert a.transfer_submit_write(seg, ma.addr, mb.addr + mb.size - 4, 16) == 0


@pytest.mark.parametrize(
    ("local_off", "remote", "length"),
    [
        pytest.param(0, "unregistered", 16, id="remote-unregistered"),
        pytest.param(0, "past-end", 16, id="remote-past-end"),
        pytest.param((1 << 20) - 8, "ok", 16, id="local-past-end"),
    ],
)
def test_unregistered_ranges_fail(peers: Peers, local_off: int, remote: str, length: int) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    raddr = {"unregistered": 4096, "past-end": mb.addr + mb.size - 8, "ok": mb.addr}[remote]
    assert a.transfer_sync_write(seg, ma.addr + local_off, raddr, length) == -1
    assert a.transfer_sync_read(seg, ma.addr + local_off, raddr, length) == -1
    assert a.batch_transfer_sync_write(seg, [ma.addr + local_off], [raddr], [length]) == -1
    # the engine still works afterwards
    assert a.transfer_sync_write(seg, ma.addr, mb.addr, 16) == 0


def test_unknown_target(engine: TransferEngine) -> None:
    m = Mem(4096)
    assert engine.register_memory(m.addr, m.size) == 0
    for target in ["127.0.0.1:1", "no-such-host.invalid:12345", ""]:
        assert engine.transfer_sync_write(target, m.addr, 0, 16) == -1
        assert engine.batch_transfer_sync_read(target, [m.addr], [0], [16]) == -1
        assert engine.batch_transfer_async_write(target, [m.addr], [0], [16]) == 0
        assert engine.transfer_submit_write(target, m.addr, 0, 16) == 0
        assert engine.get_first_buffer_address(target) == 0
    assert engine.unregister_memory(m.addr) == 0


def test_mismatched_lists(peers: Peers) -> None:
    a, ma, b, mb = peers
    seg = b.get_segment_name()
    assert a.batch_transfer_sync_write(seg, [ma.addr], [mb.addr, mb.addr], [1]) == -1
    assert a.batch_transfer_sync_read(seg, [ma.addr], [mb.addr], []) == -1
    assert a.batch_transfer_async_write(seg, [ma.addr, ma.addr], [mb.addr], [1]) == 0
    assert a.batch_transfer_sync(seg, [], [mb.addr], [1], TransferOpcode.Write) == -1


def test_get_first_buffer_address(pair: tuple[TransferEngine, TransferEngine]) -> None:
    a, b = pair
    seg = b.get_segment_name()
    assert a.get_first_buffer_address(seg) == 0  # no buffer yet
    m = Mem(8192)
    assert b.register_memory(m.addr, m.size) == 0
    assert a.get_first_buffer_address(seg) == m.addr  # refreshed, not the cached empty one
    managed = b.allocate_managed_buffer(4096)
    assert managed != 0
    assert a.get_first_buffer_address(seg) == m.addr
    assert b.unregister_memory(m.addr) == 0


def test_segment_name_and_port(engine: TransferEngine) -> None:
    port = engine.get_rpc_port()
    assert 1 <= port <= 65535
    assert engine.get_segment_name() == f"127.0.0.1:{port}"
    assert engine.get_engine_ptr() != 0
    inner = engine.get_engine()
    assert inner is not None
    assert inner.handle == engine.get_engine_ptr()


def test_send_probe(pair: tuple[TransferEngine, TransferEngine]) -> None:
    a, b = pair
    assert a.send_probe(b.get_segment_name()) == 0
    assert a.send_probe("127.0.0.1:1") == -102
    assert a.send_probe("") != 0


def test_handle_survives_peer_restart(pair: tuple[TransferEngine, TransferEngine]) -> None:
    """A peer that goes away and comes back under another port is a new
    segment; the old one fails cleanly."""
    a, b = pair
    ma, mb = Mem(4096), Mem(4096)
    assert a.register_memory(ma.addr, ma.size) == 0
    assert b.register_memory(mb.addr, mb.size) == 0
    seg = b.get_segment_name()
    assert a.transfer_sync_write(seg, ma.addr, mb.addr, 64) == 0
    b.unregister_memory(mb.addr)
    b.close()
    t0 = time.monotonic()
    assert a.transfer_sync_write(seg, ma.addr, mb.addr, 64) == -1
    assert time.monotonic() - t0 < 20
    c = TransferEngine()
    assert c.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        assert c.register_memory(mb.addr, mb.size) == 0
        assert a.transfer_sync_write(c.get_segment_name(), ma.addr, mb.addr, 64) == 0
    finally:
        c.close()
    assert a.unregister_memory(ma.addr) == 0


def test_warmup_efa_segment_is_a_no_op(engine: TransferEngine) -> None:
    assert engine.warmup_efa_segment("anything") == 0


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_second_initialize_replaces_the_engine(peers: Peers, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Mooncake 0.3.13.post1 (seen with its wheel; the interop suite
    compares the two): the first engine stops, a new one starts."""
    a, ma, b, mb = peers  # b writes into a
    first, port1 = a.get_segment_name(), a.get_rpc_port()
    mb.write(0, b"before")
    assert b.transfer_sync_write(first, mb.addr, ma.addr, 6) == 0
    managed = a.allocate_managed_buffer(8192)
    assert managed != 0
    ptr1 = a.get_engine_ptr()

    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    second, port2 = a.get_segment_name(), a.get_rpc_port()
    assert port2 > 0
    assert second == f"127.0.0.1:{port2}"
    assert a.get_engine_ptr() not in (0, ptr1)
    if port2 != port1:  # a new random port, but the same one may come back
        assert not _listening(port1), "the first engine's RPC port is still open"
        assert b.send_probe(first) == -102
        assert b.transfer_sync_write(first, mb.addr, ma.addr, 6) == -1, "a peer still reaches the first engine"
    assert b.transfer_sync_write(second, mb.addr, ma.addr, 6) == -1, "the registration survived"
    assert a.read_bytes_from_buffer(managed, 1) == b"", "the first engine's managed buffer survived"
    assert a.register_memory(ma.addr, ma.size) == 0
    mb.write(0, b"after!")
    assert b.transfer_sync_write(second, mb.addr, ma.addr, 6) == 0
    assert ma.read(0, 6) == b"after!"

    # a protocol Mooncake refuses keeps the running engine, as there
    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "xgmi", "") == -1
    assert a.get_rpc_port() == port2
    assert b.transfer_sync_write(second, mb.addr, ma.addr, 6) == 0

    # a new engine that fails to start leaves none: calls fail, initialize may be retried
    monkeypatch.setenv("MC_TRANSFER_TIMEOUT", "soon")
    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == -1
    assert a.get_rpc_port() == -1
    assert not _listening(port2)
    assert a.register_memory(ma.addr, ma.size) == -1
    monkeypatch.delenv("MC_TRANSFER_TIMEOUT")
    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    assert a.register_memory(ma.addr, ma.size) == 0  # the fixture unregisters it


def test_engine_close_and_initialize_again(pair: tuple[TransferEngine, TransferEngine]) -> None:
    a, _ = pair
    assert a.close() == 0
    assert a.close() == 0  # idempotent
    assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0  # a closed engine may start again
    assert a.get_rpc_port() > 0


def test_context_manager() -> None:
    with TransferEngine() as e:
        assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    assert e.get_rpc_port() == -1


def test_initialize_ext_and_metadata_strings() -> None:
    e = TransferEngine()
    try:
        assert e.initialize_ext("127.0.0.1", "P2PHANDSHAKE", "tcp", "", "etcd") == 0
    finally:
        e.close()
    for server in ["redis://127.0.0.1:6379", "", "ftp://x"]:
        assert TransferEngine().initialize("127.0.0.1", server, "tcp", "") == -1
    assert TransferEngine().initialize("127.0.0.1", "P2PHANDSHAKE", "xgmi", "") == -1
    assert TransferEngine().initialize_ext("127.0.0.1", "127.0.0.1:1", "tcp", "", "") == -1


def test_bad_environment_fails_initialize(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TCP_LANES_PER_PEER", "lots")
    assert TransferEngine().initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == -1
    monkeypatch.delenv("MC_TCP_LANES_PER_PEER")
    monkeypatch.setenv("PYMOONCAKE_SAME_HOST_MAX_CONNS", "0")  # 1 to 2^20
    assert TransferEngine().initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == -1
    monkeypatch.delenv("PYMOONCAKE_SAME_HOST_MAX_CONNS")
    monkeypatch.setenv("MC_MIN_RPC_PORT", "23000")
    monkeypatch.setenv("MC_MAX_RPC_PORT", "23100")
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    try:
        assert 23000 <= e.get_rpc_port() <= 23100  # read at initialize, not at extension load
    finally:
        e.close()


def test_local_topology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topo = json.loads(TransferEngine().get_local_topology())  # needs no initialize
    assert isinstance(topo, dict)
    assert any(k.startswith("cpu:") for k in topo)
    for entry in topo.values():
        assert len(entry) == 2  # [preferred, available]
    custom = tmp_path / "topo.json"
    custom.write_text('{"cpu:0": [["mlx5_0"], ["mlx5_1"]], "cuda:0": [["mlx5_1"], []]}')
    monkeypatch.setenv("MC_CUSTOM_TOPO_JSON", str(custom))
    assert json.loads(TransferEngine().get_local_topology(None)) == {"cpu:0": [["mlx5_0"], ["mlx5_1"]], "cuda:0": [["mlx5_1"], []]}
    custom.write_text("not json")
    assert TransferEngine().get_local_topology("mlx5_0") == ""
    monkeypatch.setenv("MC_CUSTOM_TOPO_JSON", str(tmp_path / "missing.json"))
    assert TransferEngine().get_local_topology() == ""


def test_unclosed_engine_warns_without_entering_go() -> None:
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    with pytest.warns(ResourceWarning, match="not closed"):
        e.__del__()
    assert e.get_rpc_port() > 0  # __del__ stopped nothing
    assert e.close() == 0
