"""Bad input is a clear failure, never a crash: wrong types raise TypeError,
out-of-range integers ValueError, None and semantic errors return the
failure value; an engine that is not initialized or is closed refuses every
call with its failure value."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import pytest
from pmtest import Mem

from pymooncake.engine import TransferEngine, TransferNotify

U64 = (1 << 64) - 1
S = "127.0.0.1:1"  # a target name (never reached: arguments fail first)

# (method, good arguments, failure value)
CALLS: list[tuple[str, tuple[Any, ...], Any]] = [
    ("register_memory", (4096, 4096), -1),
    ("unregister_memory", (4096,), -1),
    ("batch_register_memory", ([4096], [4096]), -1),
    ("batch_unregister_memory", ([4096],), -1),
    ("allocate_managed_buffer", (4096,), 0),
    ("free_managed_buffer", (4096, 4096), -1),
    ("write_bytes_to_buffer", (4096, b"x", 1), -1),
    ("read_bytes_from_buffer", (4096, 1), b""),
    ("transfer_sync_write", (S, 4096, 4096, 1), -1),
    ("transfer_sync_read", (S, 4096, 4096, 1), -1),
    ("transfer_sync", (S, 4096, 4096, 1, 1), -1),
    ("batch_transfer_sync_write", (S, [4096], [4096], [1]), -1),
    ("batch_transfer_sync_read", (S, [4096], [4096], [1]), -1),
    ("batch_transfer_sync", (S, [4096], [4096], [1], 0), -1),
    ("batch_transfer_async_write", (S, [4096], [4096], [1]), 0),
    ("batch_transfer_async_read", (S, [4096], [4096], [1]), 0),
    ("batch_transfer_async", (S, [4096], [4096], [1], 1), 0),
    ("transfer_submit_write", (S, 4096, 4096, 1), 0),
    ("transfer_check_status", (5,), -1),
    ("get_batch_transfer_status", ([5],), -1),
    ("get_first_buffer_address", (S,), 0),
    ("send_probe", (S,), -1),
    ("get_rpc_port", (), -1),
    ("get_notifies", (), []),
]


def call(e: TransferEngine, name: str, args: tuple[Any, ...]) -> Any:
    fn: Callable[..., Any] = getattr(e, name)
    return fn(*args)


@pytest.mark.parametrize(("name", "args", "failure"), CALLS, ids=[c[0] for c in CALLS])
def test_not_initialized(name: str, args: tuple[Any, ...], failure: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert call(TransferEngine(), name, args) == failure
    assert "not initialized" in caplog.text


@pytest.mark.parametrize(("name", "args", "failure"), CALLS, ids=[c[0] for c in CALLS])
def test_closed(name: str, args: tuple[Any, ...], failure: Any, caplog: pytest.LogCaptureFixture) -> None:
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    assert e.close() == 0
    assert call(e, name, args) == failure
    assert "closed" in caplog.text
    assert e.get_engine() is None
    assert e.get_engine_ptr() == 0


def with_arg(args: tuple[Any, ...], i: int, v: Any) -> tuple[Any, ...]:
    return (*args[:i], v, *args[i + 1 :])


@pytest.mark.parametrize(("name", "args", "failure"), CALLS, ids=[c[0] for c in CALLS])
def test_wrong_types_raise_type_error(engine: TransferEngine, name: str, args: tuple[Any, ...], failure: Any) -> None:
    for i, a in enumerate(args):
        bad: list[Any]
        if type(a) is int:
            bad = [1.5, "1", b"1", [1]]
        elif type(a) is str:
            bad = [1, b"x", ["x"]]
        elif type(a) is list:
            # Sequences only, as pybind11's: a set's order, a dict's keys
            # or a one-shot iterator could mis-pair entries silently.
            v0 = a[0]
            bad = [1, "abc", b"abc", [1.5], ["1"], [None], object(), {v0}, frozenset([v0]), {v0: v0}, {v0: v0}.keys(), iter([v0]), (v for v in [v0])]
        elif type(a) is bytes:
            bad = [1, 1.5, [1]]
        else:
            continue
        for v in bad:
            with pytest.raises(TypeError):
                call(engine, name, with_arg(args, i, v))


@pytest.mark.parametrize(("name", "args", "failure"), CALLS, ids=[c[0] for c in CALLS])
def test_out_of_range_ints_raise_value_error(engine: TransferEngine, name: str, args: tuple[Any, ...], failure: Any) -> None:
    checked = 0
    for i, a in enumerate(args):
        if type(a) is int and not (name in ("transfer_sync", "batch_transfer_sync", "batch_transfer_async") and i == len(args) - 1):
            values: list[Any] = [-1, U64 + 1, -(1 << 70)]
        elif type(a) is list:
            values = [[-1], [U64 + 1], [1, -5]]
        else:
            continue
        for v in values:
            checked += 1
            with pytest.raises(ValueError):
                call(engine, name, with_arg(args, i, v))
    if any(type(a) in (int, list) for a in args):
        assert checked


@pytest.mark.parametrize(("name", "args", "failure"), CALLS, ids=[c[0] for c in CALLS])
def test_none_arguments_return_failure(engine: TransferEngine, name: str, args: tuple[Any, ...], failure: Any, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(len(args)):
        caplog.clear()
        assert call(engine, name, with_arg(args, i, None)) == failure
        assert "is None" in caplog.text


def test_sequences_of_every_kind_are_accepted(engine: TransferEngine) -> None:
    m = Mem(8192)
    for seq in ([m.addr], (m.addr,), array("Q", [m.addr]), array("q", [m.addr]), range(m.addr, m.addr + 1), memoryview(array("Q", [m.addr]))):
        assert engine.batch_register_memory(seq, [8192]) == 0, type(seq)
        assert engine.batch_unregister_memory(seq) == 0, type(seq)


def test_sets_and_mappings_name_the_problem(engine: TransferEngine) -> None:
    with pytest.raises(TypeError, match=r"buffers must be a sequence of int \(list, tuple, array\), not set; a set has no order"):
        engine.batch_transfer_sync_write(S, {4096, 8192}, [4096, 8192], [1, 1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"lengths must be a sequence of int .*not dict"):
        engine.batch_transfer_sync_write(S, [4096], [4096], {1: 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batch_ids must be a sequence of int .*not dict_keys"):
        engine.get_batch_transfer_status({5: 0}.keys())  # type: ignore[arg-type]


def test_lengths_above_int64_are_value_errors(engine: TransferEngine) -> None:
    with pytest.raises(ValueError):
        engine.register_memory(4096, 1 << 63)
    with pytest.raises(ValueError):
        engine.transfer_sync_write(S, 4096, 4096, 1 << 63)
    with pytest.raises(ValueError):
        engine.batch_transfer_sync_write(S, [4096], [4096], [1 << 63])
    # addresses may use all 64 bits, but a range may not wrap around
    assert engine.register_memory(U64 - 4096, 16) == 0
    assert engine.unregister_memory(U64 - 4096) == 0
    assert engine.register_memory(U64 - 10, 100) == -1


def test_huge_values_in_range_fail_cleanly(engine: TransferEngine) -> None:
    m = Mem(4096)
    assert engine.register_memory(m.addr, m.size) == 0
    assert engine.allocate_managed_buffer((1 << 63) - 1) == 0
    assert engine.transfer_sync_write(S, m.addr, 0, (1 << 63) - 1) == -1
    assert engine.transfer_check_status(U64) == -1  # Mooncake's unsigned -1 batch id
    assert engine.transfer_check_status(0) == -1
    assert engine.transfer_check_status((1 << 63) + 5) == -1
    assert engine.get_batch_transfer_status([0]) == -1
    assert engine.get_batch_transfer_status([U64]) == -1
    assert engine.get_batch_transfer_status([123456789]) == -1  # never allocated
    assert engine.batch_register_memory([m.addr] * 2_000_000, [1] * 2_000_000) == -1  # above the list bound
    assert engine.unregister_memory(m.addr) == 0


def test_opcode_and_notify_checks(engine: TransferEngine) -> None:
    with pytest.raises(ValueError):
        engine.transfer_sync(S, 4096, 4096, 1, 2)
    with pytest.raises(ValueError):
        engine.batch_transfer_async(S, [4096], [4096], [1], -1)
    with pytest.raises(TypeError):
        engine.transfer_sync(S, 4096, 4096, 1, "write")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        engine.transfer_sync(S, 4096, 4096, 1, 1, notify="n")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        engine.transfer_sync(S, 4096, 4096, 1, 1, notify=TransferNotify(1, "m"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        engine.transfer_sync(S, 4096, 4096, 1, 1, notify=TransferNotify("a\x00b", "m"))


def test_numpy_like_ints_are_accepted(engine: TransferEngine) -> None:
    class Index:
        def __init__(self, v: int) -> None:
            self.v = v

        def __index__(self) -> int:
            return self.v

    ms = [Mem(4096) for _ in range(3)]
    assert engine.batch_register_memory([Index(m.addr) for m in ms], [Index(4096)] * 3) == 0  # type: ignore[misc, list-item]
    assert engine.batch_unregister_memory(tuple(m.addr for m in ms)) == 0
    # Generators and iterators are not sequences (pybind11 refuses them too).
    with pytest.raises(TypeError, match="not generator"):
        engine.batch_unregister_memory(m.addr for m in ms)  # type: ignore[arg-type]
    assert engine.register_memory(Index(ms[0].addr), Index(16)) == 0  # type: ignore[arg-type]
    assert engine.unregister_memory(ms[0].addr) == 0


def test_strings_with_nul_are_value_errors(engine: TransferEngine) -> None:
    with pytest.raises(ValueError):
        engine.transfer_sync_write("a\x00b", 4096, 4096, 1)


def test_initialize_bad_arguments() -> None:
    e = TransferEngine()
    with pytest.raises(TypeError):
        e.initialize(1, "P2PHANDSHAKE", "tcp", "")  # type: ignore[arg-type]
    assert e.initialize(None, "P2PHANDSHAKE", "tcp", "") == -1  # type: ignore[arg-type]
    assert e.initialize("127.0.0.1", None, "tcp", "") == -1  # type: ignore[arg-type]
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", None, "") == -1  # type: ignore[arg-type]
    assert e.initialize_ext("127.0.0.1", "P2PHANDSHAKE", "tcp", "", None) == -1  # type: ignore[arg-type]
    assert e.initialize("", "P2PHANDSHAKE", "tcp", "") == -1
    # device_name None is allowed, as by Mooncake
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", None) == 0
    e.close()


def test_cuda_methods_fail_clearly(engine: TransferEngine) -> None:
    """The *_on_cuda methods return no code: they raise (as Mooncake's
    do); without the NVIDIA driver, NotSupportedError (python/tests/gpu
    covers them on a GPU)."""
    import ctypes

    from pymooncake import EngineStateError, InvalidArgumentError, MooncakeError, NotSupportedError

    try:
        ctypes.CDLL("libcuda.so.1")
        no_gpu = False
    except OSError:
        no_gpu = True
    for name, args in [
        ("transfer_write_on_cuda", (S, 1, 2, 3)),
        ("transfer_read_on_cuda", (S, 1, 2, 3, 0)),
        ("batch_transfer_write_on_cuda", (S, [1], [2], [3])),
        ("batch_transfer_read_on_cuda", (S, [1], [2], [3], 0, "")),
    ]:
        with pytest.raises(NotSupportedError if no_gpu else MooncakeError, match="libcuda" if no_gpu else ""):
            call(engine, name, args)
        with pytest.raises(EngineStateError):
            call(TransferEngine(), name, args)
    with pytest.raises(InvalidArgumentError):
        engine.batch_transfer_write_on_cuda(S, [1, 2], [2], [3])
    with pytest.raises(InvalidArgumentError):
        engine.batch_transfer_read_on_cuda(S, [], [], [])
    with pytest.raises(TypeError):
        engine.transfer_write_on_cuda(S, "1", 2, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream_ptr"):
        engine.transfer_write_on_cuda(S, 1, 2, 3, -1)
    assert engine.cuda_transfer_status(12345) == -1
    assert TransferEngine().cuda_transfer_status(1) == -1
