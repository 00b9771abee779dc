"""The error translator: reasons are logged to the "pymooncake" logger;
strict mode raises MooncakeError subclasses carrying Mooncake's code."""

from __future__ import annotations

import logging

import pytest
from pmtest import Mem, run_python

import pymooncake
from pymooncake import _errors
from pymooncake.engine import TransferEngine


def test_failure_reason_is_logged(engine: TransferEngine, caplog: pytest.LogCaptureFixture) -> None:
    m = Mem(4096)
    with caplog.at_level(logging.ERROR, logger="pymooncake"):
        assert engine.unregister_memory(m.addr) == -3
    [rec] = [r for r in caplog.records if r.name == "pymooncake"]
    assert rec.levelno == logging.ERROR
    assert "unregister_memory" in rec.getMessage()
    assert "returns -3" in rec.getMessage()
    assert "not registered" in rec.getMessage() or "address not registered" in rec.getMessage()


@pytest.mark.usefixtures("strict")
def test_strict_mode_raises_subclasses(engine: TransferEngine) -> None:
    m = Mem(8192)
    with pytest.raises(pymooncake.AddressNotRegisteredError) as ei:
        engine.unregister_memory(m.addr)
    assert ei.value.code == -3
    assert ei.value.op == "unregister_memory"
    assert ei.value.kind == "not_registered"
    assert isinstance(ei.value, pymooncake.MooncakeError)
    assert isinstance(ei.value, RuntimeError)
    assert engine.register_memory(m.addr, m.size) == 0
    with pytest.raises(pymooncake.AddressOverlappedError) as eo:
        engine.register_memory(m.addr, 16)
    assert eo.value.code == -7
    with pytest.raises(pymooncake.InvalidArgumentError):
        engine.register_memory(m.addr + m.size, 0)
    with pytest.raises(pymooncake.SocketError):
        engine.transfer_sync_write("127.0.0.1:1", m.addr, 0, 1)
    with pytest.raises(pymooncake.InvalidArgumentError):
        engine.transfer_check_status(12345)
    with pytest.raises(pymooncake.InvalidArgumentError, match="is None"):
        engine.transfer_sync_write(None, m.addr, 0, 1)  # type: ignore[arg-type]
    assert engine.unregister_memory(m.addr) == 0
    with pytest.raises(pymooncake.EngineStateError, match="not initialized"):
        TransferEngine().get_rpc_port()


def test_strict_from_environment() -> None:
    r = run_python(
        "import pymooncake\n"
        "assert pymooncake.strict()\n"
        "try:\n"
        "    pymooncake.TransferEngine().register_memory(1, 1)\n"
        "except pymooncake.EngineStateError as e:\n"
        "    print('raised', e.code)\n",
        env={"PYMOONCAKE_STRICT": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "raised -1"


def test_set_strict_returns_previous() -> None:
    assert pymooncake.set_strict(True) is False
    assert pymooncake.strict() is True
    assert pymooncake.set_strict(False) is True


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("mc:-3:not_registered: op: reason", (-3, "not_registered", "op: reason")),
        ("mc:-200:metadata: a\nb", (-200, "metadata", "a\nb")),
        ("mc:0:failed: ", (0, "failed", "")),
        ("something else", (-1, "failed", "something else")),
        ("mc:x:failed: y", (-1, "failed", "mc:x:failed: y")),
    ],
)
def test_parse(text: str, want: tuple[int, str, str]) -> None:
    assert _errors.parse(RuntimeError(text)) == want


def test_failed_returns_code_or_value(caplog: pytest.LogCaptureFixture) -> None:
    e = RuntimeError("mc:-7:overlapped: register_memory: boom")
    assert _errors.failed("register_memory", e, None) == -7
    assert _errors.failed("transfer_sync_write", e, -1) == -1
    assert _errors.failed("allocate_managed_buffer", e, 0) == 0
    assert "boom" in caplog.text


def test_unknown_kind_in_strict_mode_is_transfer_failed() -> None:
    previous = pymooncake.set_strict(True)
    try:
        with pytest.raises(pymooncake.TransferFailedError):
            _errors.failed("x", RuntimeError("mc:-1:brand_new_kind: y"))
        with pytest.raises(pymooncake.TransferTimeoutError) as ei:
            _errors.failed("x", RuntimeError("mc:-1:timeout: y"))
        assert isinstance(ei.value, TimeoutError)
    finally:
        pymooncake.set_strict(previous)
