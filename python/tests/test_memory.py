"""Memory registration, managed buffers and byte copies: success and every
failure code."""

from __future__ import annotations

from array import array

import pytest
from pmtest import Mem

from pymooncake.engine import TransferEngine

KiB, MiB = 1 << 10, 1 << 20


def test_register_unregister(engine: TransferEngine) -> None:
    m = Mem(64 * KiB)
    assert engine.register_memory(m.addr, m.size) == 0
    assert engine.unregister_memory(m.addr) == 0
    assert engine.register_memory(m.addr, m.size, "cpu:0") == 0
    assert engine.unregister_memory(m.addr) == 0


@pytest.mark.parametrize(
    ("offset", "length", "code"),
    [
        pytest.param(0, 64 * KiB, -7, id="same-region"),
        pytest.param(4 * KiB, 4 * KiB, -7, id="inside"),
        pytest.param(-4 * KiB, 8 * KiB, -7, id="overlaps-start"),
        pytest.param(0, 0, -1, id="zero-length"),
    ],
)
def test_register_failures(engine: TransferEngine, offset: int, length: int, code: int) -> None:
    m = Mem(128 * KiB)
    base = m.addr + 32 * KiB
    assert engine.register_memory(base, 64 * KiB) == 0
    assert engine.register_memory(base + offset, length) == code
    assert engine.unregister_memory(base) == 0


def test_register_bad_location(engine: TransferEngine) -> None:
    m = Mem(4 * KiB)
    assert engine.register_memory(m.addr, m.size, "gpu-ish") == -1


def test_unregister_unknown_is_not_registered(engine: TransferEngine) -> None:
    m = Mem(4 * KiB)
    assert engine.unregister_memory(m.addr) == -3


def test_batch_register_all_or_nothing(engine: TransferEngine) -> None:
    ms = [Mem(16 * KiB) for _ in range(4)]
    addrs, sizes = [m.addr for m in ms], [m.size for m in ms]
    assert engine.batch_register_memory(addrs, sizes) == 0
    assert engine.batch_unregister_memory(addrs) == 0
    # one overlapping entry: nothing is registered
    assert engine.batch_register_memory([*addrs, addrs[0]], [*sizes, 8]) == -7
    assert engine.unregister_memory(addrs[1]) == -3
    # array('Q') is accepted as it is; tuples too
    assert engine.batch_register_memory(array("Q", addrs), tuple(sizes), "cpu:0") == 0
    # unregistering a list with one unknown address unregisters nothing
    assert engine.batch_unregister_memory([addrs[0], Mem(8).addr]) == -3
    assert engine.batch_unregister_memory(addrs) == 0


def test_batch_register_empty_and_mismatched(engine: TransferEngine) -> None:
    assert engine.batch_register_memory([], []) == 0
    assert engine.batch_unregister_memory([]) == 0
    m = Mem(4 * KiB)
    assert engine.batch_register_memory([m.addr], []) == -1
    assert engine.batch_register_memory([m.addr], [1, 2]) == -1
    assert engine.unregister_memory(m.addr) == -3


@pytest.mark.parametrize("length", [1, 8 * KiB, 8 * KiB + 1, 1 * MiB, 256 * MiB])
def test_managed_buffer_sizes(engine: TransferEngine, length: int) -> None:
    addr = engine.allocate_managed_buffer(length)
    assert addr != 0
    assert engine.write_bytes_to_buffer(addr, b"x" * 16, 1) == 0
    assert engine.read_bytes_from_buffer(addr, 1) == b"x"
    assert engine.free_managed_buffer(addr, length) == 0


def test_managed_buffers_are_distinct_and_reused(engine: TransferEngine) -> None:
    a = [engine.allocate_managed_buffer(8 * KiB) for _ in range(4)]
    assert len(set(a)) == 4
    assert 0 not in a
    for x in a:
        assert engine.free_managed_buffer(x, 8 * KiB) == 0
    b = engine.allocate_managed_buffer(8 * KiB)
    assert b in a
    assert engine.free_managed_buffer(b, 8 * KiB) == 0


def test_large_managed_buffer_has_its_own_registration(engine: TransferEngine) -> None:
    n = 256 * MiB + 1
    addr = engine.allocate_managed_buffer(n)
    assert addr != 0
    assert engine.read_bytes_from_buffer(addr + n - 1, 1) == b"\x00"
    assert engine.free_managed_buffer(addr, n) == 0
    assert engine.read_bytes_from_buffer(addr, 1) == b""  # unregistered and unmapped


def test_managed_buffer_of_zero_bytes(engine: TransferEngine) -> None:
    """Mooncake hands out a block of the smallest class for 0 bytes."""
    addr = engine.allocate_managed_buffer(0)
    assert addr != 0
    assert engine.write_bytes_to_buffer(addr + 8 * KiB - 4, b"last", 4) == 0
    assert engine.free_managed_buffer(addr, 0) == 0
    assert engine.allocate_managed_buffer(0) == addr  # back in the 8 KiB class


def test_managed_buffer_failures(engine: TransferEngine) -> None:
    addr = engine.allocate_managed_buffer(64 * KiB)
    assert engine.free_managed_buffer(addr + 8, 64 * KiB) == -1  # not a block
    assert engine.free_managed_buffer(addr, 1 * MiB) == -1  # wrong size class
    assert engine.free_managed_buffer(addr, 64 * KiB) == 0
    assert engine.free_managed_buffer(addr, 64 * KiB) == -1  # double free


def test_bytes_round_trip(engine: TransferEngine) -> None:
    m = Mem(4 * KiB)
    assert engine.register_memory(m.addr, m.size) == 0
    data = bytes(range(256)) * 4
    assert engine.write_bytes_to_buffer(m.addr + 100, data, len(data)) == 0
    assert m.read(100, len(data)) == data
    assert engine.read_bytes_from_buffer(m.addr + 100, len(data)) == data
    # bytearray, memoryview and str sources; a length shorter than src
    assert engine.write_bytes_to_buffer(m.addr, bytearray(b"abc"), 3) == 0
    assert engine.write_bytes_to_buffer(m.addr + 3, memoryview(b"defgh"), 2) == 0
    assert engine.write_bytes_to_buffer(m.addr + 5, "é", 2) == 0
    assert engine.read_bytes_from_buffer(m.addr, 7) == b"abcde" + "é".encode()
    assert engine.read_bytes_from_buffer(m.addr, 0) == b""
    assert engine.write_bytes_to_buffer(m.addr, b"", 0) == 0
    assert engine.unregister_memory(m.addr) == 0


def test_bytes_copies_refuse_unregistered_memory(engine: TransferEngine) -> None:
    m = Mem(4 * KiB)
    assert engine.write_bytes_to_buffer(m.addr, b"abc", 3) == -1
    assert engine.read_bytes_from_buffer(m.addr, 3) == b""
    assert engine.write_bytes_to_buffer(8, b"abc", 3) == -1  # would crash Mooncake
    assert engine.read_bytes_from_buffer(8, 3) == b""
    assert engine.register_memory(m.addr, m.size) == 0
    # a range running past the region
    assert engine.write_bytes_to_buffer(m.addr + m.size - 1, b"ab", 2) == -1
    assert engine.read_bytes_from_buffer(m.addr + m.size - 1, 2) == b""
    # a length longer than src
    assert engine.write_bytes_to_buffer(m.addr, b"ab", 3) == -1
    # a huge read is refused before anything is allocated
    assert engine.read_bytes_from_buffer(m.addr, 1 << 62) == b""
    assert engine.unregister_memory(m.addr) == 0
