"""The call patterns of real Mooncake clients, replayed on pymooncake.

Each case follows how a client calls the engine (shared/reference/clients.md,
section 2), scaled down to run in a second on two engines of this process:
the same methods, the same shape of arguments, and every byte checked.
"""

from __future__ import annotations

import gc
import os
import random
import socket
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pmtest import Mem

from pymooncake import _loader
from pymooncake.engine import TransferEngine

KiB = 1 << 10


@pytest.fixture
def pair() -> Iterator[tuple[TransferEngine, TransferEngine]]:
    a, b = TransferEngine(), TransferEngine()
    for e in (a, b):
        assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    yield a, b
    a.close()
    b.close()


def session_id(e: TransferEngine) -> str:
    """Clients build the peer's name from its host and get_rpc_port()."""
    return f"127.0.0.1:{e.get_rpc_port()}"


def test_sglang_one_batch_for_all_layers(pair: tuple[TransferEngine, TransferEngine]) -> None:
    """SGLang's KV manager: every layer's K and V buffers registered with
    batch_register_memory; one batch_transfer_sync_write of 10,240 blocks
    for all layers, from the prefill's block ids to the decode's, which are
    unrelated (both scattered)."""
    prefill, decode = pair
    layers, blocks, block = 64, 256, 256  # 64 regions of 64 KiB on each side
    rng = random.Random(19)
    src = [Mem(blocks * block) for _ in range(layers)]
    dst = [Mem(blocks * block) for _ in range(layers)]
    for m in src:
        m.write(0, rng.randbytes(m.size))
    assert prefill.batch_register_memory([m.addr for m in src], [m.size for m in src]) == 0
    assert decode.batch_register_memory([m.addr for m in dst], [m.size for m in dst]) == 0

    picked = 160  # blocks per layer: 64 * 160 = 10,240 entries
    plan = [(layer, rng.sample(range(blocks), picked), rng.sample(range(blocks), picked)) for layer in range(layers)]
    local, remote, lengths = [], [], []
    for layer, src_ids, dst_ids in plan:
        for s, d in zip(src_ids, dst_ids, strict=True):
            local.append(src[layer].addr + s * block)
            remote.append(dst[layer].addr + d * block)
            lengths.append(block)
    assert len(local) >= 10_000
    assert prefill.batch_transfer_sync_write(session_id(decode), local, remote, lengths) == 0

    for layer, src_ids, dst_ids in plan:
        have, want = dst[layer].read(0, dst[layer].size), src[layer].read(0, src[layer].size)
        written = dict(zip(dst_ids, src_ids, strict=True))
        for d in range(blocks):
            got = have[d * block : (d + 1) * block]
            if d in written:
                s = written[d]
                assert got == want[s * block : (s + 1) * block], f"layer {layer}: block {s} -> {d} differs"
            else:
                assert got == bytes(block), f"layer {layer}: block {d} was not written to, but changed"
    assert prefill.batch_unregister_memory([m.addr for m in src]) == 0
    assert decode.batch_unregister_memory([m.addr for m in dst]) == 0


def test_vllm_thread_pool_of_batch_writes(pair: tuple[TransferEngine, TransferEngine]) -> None:
    """vLLM's Mooncake connector: KV tensors registered once with
    batch_register_memory (one entry per tensor), then a pool of sender
    threads (num_workers, default 10) each calling batch_transfer_sync_write
    for a request's block groups, all to the same decode engine at once."""
    prefill, decode = pair
    tensors, tensor_size = 8, 128 * KiB
    rng = random.Random(10)
    src = [Mem(tensor_size) for _ in range(tensors)]
    dst = [Mem(tensor_size) for _ in range(tensors)]
    for m in src:
        m.write(0, rng.randbytes(m.size))
    assert prefill.batch_register_memory([m.addr for m in src], [tensor_size] * tensors) == 0
    assert decode.batch_register_memory([m.addr for m in dst], [tensor_size] * tensors) == 0
    target = session_id(decode)

    # 40 requests; request r owns chunk r of every tensor, sent as groups of
    # contiguous blocks merged per tensor (vLLM merges contiguous block ids)
    requests, chunk = 40, tensor_size // 64

    def send(r: int) -> int:
        local = [m.addr + r * chunk for m in src] + [m.addr + r * chunk + chunk // 2 for m in src]
        remote = [m.addr + (63 - r) * chunk for m in dst] + [m.addr + (63 - r) * chunk + chunk // 2 for m in dst]
        rc: int = prefill.batch_transfer_sync_write(target, local, remote, [chunk // 2] * (2 * tensors))
        return rc

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(send, range(requests))) == [0] * requests
    for s, d in zip(src, dst, strict=True):
        for r in range(requests):
            assert d.read((63 - r) * chunk, chunk) == s.read(r * chunk, chunk)
        assert d.read(0, (64 - requests) * chunk) == bytes((64 - requests) * chunk)


def test_lmcache_page_by_page_writes(pair: tuple[TransferEngine, TransferEngine]) -> None:
    """LMCache's Mooncake channel: register_memory once for the whole
    buffer on each side, one transfer_sync_write per page, unregister_memory
    on close."""
    sender, receiver = pair
    pages, page = 64, 16 * KiB
    src, dst = Mem(pages * page), Mem(pages * page)
    src.write(0, os.urandom(src.size))
    assert sender.register_memory(src.addr, src.size) == 0
    assert receiver.register_memory(dst.addr, dst.size) == 0
    target = session_id(receiver)
    order = list(range(pages))
    random.Random(7).shuffle(order)  # the receiver's free pages, in its order
    for i, p in enumerate(order):
        assert sender.transfer_sync_write(target, src.addr + i * page, dst.addr + p * page, page) == 0
    for i, p in enumerate(order):
        assert dst.read(p * page, page) == src.read(i * page, page)
    assert sender.unregister_memory(src.addr) == 0
    assert receiver.unregister_memory(dst.addr) == 0


def test_checkpoint_engine_bulk_read_from_pools(pair: tuple[TransferEngine, TransferEngine]) -> None:
    """checkpoint-engine's p2p store: the owner registers its (pinned, on a
    GPU host) weight pools with batch_register_memory; a reader pulls every
    bucket with one batch_transfer_sync_read and asserts 0; both
    batch_unregister_memory at the end."""
    owner, reader = pair
    pools, pool_size, bucket = 4, 4 << 20, 64 * KiB  # 16 MiB of weights, 256 buckets
    owned = [Mem(pool_size) for _ in range(pools)]
    for m in owned:
        m.write(0, os.urandom(m.size))
    assert owner.batch_register_memory([m.addr for m in owned], [pool_size] * pools) == 0
    local = Mem(pools * pool_size)
    assert reader.batch_register_memory([local.addr], [local.size]) == 0
    remote_ptrs = [m.addr + off for m in owned for off in range(0, pool_size, bucket)]
    buf_ptrs = [local.addr + i * bucket for i in range(len(remote_ptrs))]
    assert reader.batch_transfer_sync_read(session_id(owner), buf_ptrs, remote_ptrs, [bucket] * len(buf_ptrs)) == 0
    for i, m in enumerate(owned):
        assert local.read(i * pool_size, pool_size) == m.read(0, pool_size), f"pool {i} differs"
    assert reader.batch_unregister_memory([local.addr]) == 0
    assert owner.batch_unregister_memory([m.addr for m in owned]) == 0


def _two_ports_in_rpc_range() -> list[socket.socket]:
    """Listening sockets on two consecutive free ports of Mooncake's RPC
    range (outside the kernel's ephemeral ports, as MC_MIN/MAX_RPC_PORT
    must be): an engine needs two, its RPC and its TCP data listener."""
    for port in random.Random().sample(range(15000, 17000, 2), 1000):
        held: list[socket.socket] = []
        for p in (port, port + 1):
            s = socket.socket()
            try:
                s.bind(("0.0.0.0", p))
            except OSError:
                s.close()
                break
            s.listen()
            held.append(s)
        if len(held) == 2:
            return held
        for s in held:
            s.close()
    pytest.fail("no two free ports in 15000-17000")


def _goroutines() -> int:
    n: int = _loader.load().bindings_NumGoroutine()
    return n


def test_checkpoint_engine_fresh_engine_per_retry(monkeypatch: pytest.MonkeyPatch, pair: tuple[TransferEngine, TransferEngine]) -> None:
    """checkpoint-engine retries ``TransferEngine(); initialize(...)`` up to 8
    times "to avoid port conflicts", dropping each failed object without
    close(). Here the only ports allowed are taken for three attempts: they
    fail, leave nothing running, and the fourth succeeds on them."""
    _, peer = pair
    held = _two_ports_in_rpc_range()
    ports = [s.getsockname()[1] for s in held]
    monkeypatch.setenv("MC_MIN_RPC_PORT", str(ports[0]))
    monkeypatch.setenv("MC_MAX_RPC_PORT", str(ports[1]))
    try:
        before = _goroutines()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                e = TransferEngine()
                assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == -1
                del e
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
        deadline = time.monotonic() + 5
        while _goroutines() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _goroutines() <= before, "failed initialize attempts left goroutines running"
    finally:
        for s in held:
            s.close()
    # the ports are free now: the next attempt gets them
    for _ in range(8):
        engine = TransferEngine()
        if engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0:
            break
    else:
        pytest.fail("no attempt succeeded")
    try:
        assert engine.get_rpc_port() in ports
        mine, theirs = Mem(4 * KiB), Mem(4 * KiB)
        mine.write(0, b"checkpoint")
        assert engine.batch_register_memory([mine.addr], [mine.size]) == 0
        assert peer.batch_register_memory([theirs.addr], [theirs.size]) == 0
        assert peer.batch_transfer_sync_read(session_id(engine), [theirs.addr], [mine.addr], [10]) == 0
        assert theirs.read(0, 10) == b"checkpoint"
    finally:
        engine.close()
