"""Unmodified Mooncake code (``from mooncake.engine import ...``) runs on
pymooncake through pymooncake.compat."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest
from pmtest import ROOT, run_python

import pymooncake.engine
from pymooncake import allocator, compat


@pytest.fixture
def clean_modules() -> Iterator[None]:
    saved = {k: v for k, v in sys.modules.items() if k == "mooncake" or k.startswith("mooncake.")}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k == "mooncake" or k.startswith("mooncake.")]:
        del sys.modules[k]
    sys.modules.update(saved)


@pytest.mark.usefixtures("clean_modules")
def test_install_makes_mooncake_engine_pymooncake() -> None:
    assert not compat.installed()
    compat.install()
    compat.install()  # idempotent
    assert compat.installed()
    from mooncake.engine import TransferEngine, TransferNotify, TransferOpcode  # type: ignore[import-not-found]

    assert TransferEngine is pymooncake.engine.TransferEngine
    from mooncake.allocator import NVLinkAllocator  # type: ignore[import-not-found]  # SGLang's import

    assert NVLinkAllocator is allocator.NVLinkAllocator
    assert TransferOpcode.Write == 1
    assert TransferNotify("a", "b").msg == "b"
    import mooncake  # type: ignore[import-not-found]

    assert mooncake.engine is pymooncake.engine
    with pytest.raises(ImportError):
        import mooncake.store  # type: ignore[import-not-found]
    compat.uninstall()
    assert not compat.installed()
    assert "mooncake.engine" not in sys.modules


@pytest.mark.usefixtures("clean_modules")
def test_install_refuses_a_real_mooncake() -> None:
    real = types.ModuleType("mooncake")
    sys.modules["mooncake"] = real
    sys.modules["mooncake.engine"] = types.ModuleType("mooncake.engine")
    with pytest.raises(RuntimeError, match="already imported"):
        compat.install()
    assert sys.modules["mooncake"] is real
    compat.install(force=True)
    assert compat.installed()
    assert sys.modules["mooncake.engine"] is pymooncake.engine


def test_environment_switch_through_the_startup_hook() -> None:
    """The .pth line pip installs runs install() when PYMOONCAKE_AS_MOONCAKE
    is set; site-packages is not this checkout, so run the line itself."""
    line = (ROOT / "pymooncake" / "pymooncake-compat.pth").read_text().strip()
    assert line.startswith("import ")  # site.py executes only such lines
    code = f"{line}\nfrom mooncake.engine import TransferEngine\nprint(TransferEngine.__module__)\n"
    on = run_python(code, env={"PYMOONCAKE_AS_MOONCAKE": "1"})
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip() == "pymooncake.engine"
    for value in ("", "0"):
        off = run_python(code, env={"PYMOONCAKE_AS_MOONCAKE": value})
        assert off.returncode != 0
        assert "No module named 'mooncake'" in off.stderr


def test_mooncake_style_client_code_runs() -> None:
    """A client written against mooncake.engine, unchanged (vLLM's calls)."""
    code = """
from pymooncake import compat
compat.install()
import ctypes
from mooncake.engine import TransferEngine

prefill, decode = TransferEngine(), TransferEngine()
for e in (prefill, decode):
    if e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
        raise RuntimeError("init failed")
src, dst = ctypes.create_string_buffer(1 << 16), ctypes.create_string_buffer(1 << 16)
ctypes.memmove(src, b"kv-cache-block", 14)
ptrs = [ctypes.addressof(src)]
assert prefill.batch_register_memory(ptrs, [1 << 16]) == 0
assert decode.batch_register_memory([ctypes.addressof(dst)], [1 << 16]) == 0
remote = f"127.0.0.1:{decode.get_rpc_port()}"
assert prefill.batch_transfer_sync_write(remote, ptrs, [ctypes.addressof(dst)], [14]) == 0
print(dst.raw[:14].decode())
prefill.close(); decode.close()
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "kv-cache-block"
