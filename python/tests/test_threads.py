"""Several Python threads share one engine; the GIL is released while a
call runs in Go."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pmtest import Mem

from pymooncake.engine import TransferEngine

MiB = 1 << 20


def test_threads_share_one_engine(pair: tuple[TransferEngine, TransferEngine]) -> None:
    a, b = pair
    threads, rounds, block = 8, 40, 4096
    ma, mb = Mem(threads * block * 2), Mem(threads * block * 2)
    assert a.register_memory(ma.addr, ma.size) == 0
    assert b.register_memory(mb.addr, mb.size) == 0
    seg = b.get_segment_name()

    def work(t: int) -> list[str]:
        problems: list[str] = []
        off = t * block * 2
        own = Mem(4096)
        for r in range(rounds):
            data = bytes([(t * 37 + r) & 0xFF]) * block
            ma.write(off, data)
            if r % 3 == 0:
                rc = a.transfer_sync_write(seg, ma.addr + off, mb.addr + off, block)
            elif r % 3 == 1:
                rc = a.batch_transfer_sync_write(seg, [ma.addr + off], [mb.addr + off], [block])
            else:
                bid = a.batch_transfer_async_write(seg, [ma.addr + off], [mb.addr + off], [block])
                rc = a.get_batch_transfer_status([bid]) if bid else -99
            if rc != 0:
                problems.append(f"thread {t} round {r}: rc {rc}")
            elif mb.read(off, block) != data:
                problems.append(f"thread {t} round {r}: data differs")
            # registrations from other threads interleave with the transfers
            if a.register_memory(own.addr, own.size) != 0 or a.unregister_memory(own.addr) != 0:
                problems.append(f"thread {t} round {r}: register/unregister")
            if a.get_rpc_port() <= 0:
                problems.append(f"thread {t}: rpc port")
        return problems

    with ThreadPoolExecutor(threads) as pool:
        problems = [p for ps in pool.map(work, range(threads)) for p in ps]
    assert problems == []
    assert a.unregister_memory(ma.addr) == 0
    assert b.unregister_memory(mb.addr) == 0


def test_gil_is_released_during_a_transfer(pair: tuple[TransferEngine, TransferEngine]) -> None:
    a, b = pair
    ma, mb = Mem(32 * MiB), Mem(32 * MiB)
    assert a.register_memory(ma.addr, ma.size) == 0
    assert b.register_memory(mb.addr, mb.size) == 0
    seg = b.get_segment_name()
    n = 48  # 48 x 8 MiB = 384 MiB through loopback TCP
    locs = [ma.addr + (i % 4) * 8 * MiB for i in range(n)]
    rems = [mb.addr + (i % 4) * 8 * MiB for i in range(n)]
    lens = [8 * MiB] * n

    stop = threading.Event()
    ticks = [0]

    def spin() -> None:
        while not stop.is_set():
            ticks[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.01)
        before = ticks[0]
        t0 = time.perf_counter()
        rc = a.batch_transfer_sync_write(seg, locs, rems, lens)
        elapsed = time.perf_counter() - t0
        during = ticks[0] - before
    finally:
        stop.set()
        spinner.join()
    assert rc == 0
    # A call holding the GIL would let the spinner run only at switch
    # intervals it never reaches; released, it spins the whole time
    # (millions of iterations per second).
    assert elapsed > 0.02, f"transfer too fast to tell ({elapsed:.3f} s)"
    assert during > 20_000 * elapsed, f"{during} Python iterations in {elapsed:.3f} s"
    assert a.unregister_memory(ma.addr) == 0
    assert b.unregister_memory(mb.addr) == 0


def test_close_while_other_threads_call(pair: tuple[TransferEngine, TransferEngine]) -> None:
    a, b = pair
    ma, mb = Mem(64 * 1024), Mem(64 * 1024)
    assert a.register_memory(ma.addr, ma.size) == 0
    assert b.register_memory(mb.addr, mb.size) == 0
    seg = b.get_segment_name()
    results: list[int] = []
    go = threading.Event()

    def hammer() -> None:
        go.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rc = a.transfer_sync_write(seg, ma.addr, mb.addr, 1024)
            a.read_bytes_from_buffer(ma.addr, 16)
            results.append(rc)
            if rc == -1:
                return

    ts = [threading.Thread(target=hammer) for _ in range(4)]
    for t in ts:
        t.start()
    go.set()
    time.sleep(0.005)
    assert a.close() == 0
    for t in ts:
        t.join()
    assert set(results) <= {0, -1}
    assert results.count(-1) == len(ts)  # every thread saw the close
