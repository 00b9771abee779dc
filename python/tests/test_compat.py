"""Unmodified Mooncake code (``from mooncake.engine import ...``) runs on
pymooncake through pymooncake.compat."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

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
    compat.uninstall()
    for k in [k for k in sys.modules if k == "mooncake" or k.startswith("mooncake.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _no_real_mooncake() -> None:
    if importlib.machinery.PathFinder.find_spec("mooncake") is not None:
        pytest.skip("Mooncake's wheel is importable here; test_compat_with_mooncake_wheel covers that case")


@pytest.mark.usefixtures("clean_modules")
def test_install_makes_mooncake_engine_pymooncake() -> None:
    _no_real_mooncake()
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
    assert getattr(mooncake, "__pymooncake_compat__", False), "no wheel: mooncake is the stand-in"
    with pytest.raises(ImportError):
        import mooncake.store  # type: ignore[import-not-found]
    compat.uninstall()
    assert not compat.installed()
    assert "mooncake.engine" not in sys.modules
    assert "mooncake" not in sys.modules
    with pytest.raises(ImportError):
        import mooncake


@pytest.mark.usefixtures("clean_modules")
def test_install_replaces_only_engine_and_allocator_of_a_real_package() -> None:
    """A real mooncake package (here a fake one, already imported) keeps
    its other modules; engine and allocator are pymooncake's."""
    real = types.ModuleType("mooncake")
    real.__path__ = []
    store = types.ModuleType("mooncake.store")
    real.store = store  # type: ignore[attr-defined]
    sys.modules.update({"mooncake": real, "mooncake.store": store})
    compat.install()  # nothing of Mooncake's engine is imported yet: no force needed
    import mooncake.engine
    import mooncake.store

    assert sys.modules["mooncake"] is real
    assert mooncake.engine is pymooncake.engine
    assert real.engine is pymooncake.engine
    assert mooncake.store is store
    from mooncake import allocator as a

    assert a is allocator
    compat.uninstall()
    assert sys.modules["mooncake"] is real
    assert not hasattr(real, "engine")
    assert "mooncake.engine" not in sys.modules


@pytest.mark.usefixtures("clean_modules")
def test_install_refuses_a_real_mooncake_engine() -> None:
    real = types.ModuleType("mooncake")
    real_engine = types.ModuleType("mooncake.engine")
    real.engine = real_engine  # type: ignore[attr-defined]
    sys.modules.update({"mooncake": real, "mooncake.engine": real_engine})
    with pytest.raises(RuntimeError, match="already imported"):
        compat.install()
    assert sys.modules["mooncake.engine"] is real_engine
    assert not compat.installed()
    compat.install(force=True)
    assert compat.installed()
    assert sys.modules["mooncake"] is real
    assert sys.modules["mooncake.engine"] is pymooncake.engine
    assert real.engine is pymooncake.engine


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


_WHEEL_CHECK = """
import ctypes, json, os, sys
import mooncake, mooncake.store
from mooncake.engine import TransferEngine
from mooncake.allocator import NVLinkAllocator
from mooncake.store import MooncakeDistributedStore
import pymooncake.allocator, pymooncake.engine

a, b = TransferEngine(), TransferEngine()
for e in (a, b):
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
src, dst = ctypes.create_string_buffer(4096), ctypes.create_string_buffer(4096)
src.value = b"through mooncake.engine"
assert a.register_memory(ctypes.addressof(src), 4096) == 0
assert b.register_memory(ctypes.addressof(dst), 4096) == 0
rc = a.transfer_sync_write(f"127.0.0.1:{b.get_rpc_port()}", ctypes.addressof(src), ctypes.addressof(dst), 23)
a.close(); b.close()
print(json.dumps({
    "pymooncake": pymooncake.engine.__file__,
    "mooncake": mooncake.__file__,
    "store": mooncake.store.__file__,
    "store_class": MooncakeDistributedStore.__module__,
    "engine": TransferEngine.__module__,
    "engine_is_ours": mooncake.engine is pymooncake.engine and sys.modules["mooncake.engine"] is pymooncake.engine,
    "allocator_is_ours": NVLinkAllocator is pymooncake.allocator.NVLinkAllocator,
    "loaded": sorted(getattr(m, "__file__", None) or "" for n, m in sys.modules.items() if n.startswith("mooncake")),
    "rc": rc,
    "data": dst.value.decode(),
}))
"""


@pytest.mark.parametrize("how", ["environment", "install"])
def test_compat_with_mooncake_wheel(how: str) -> None:
    """With Mooncake's non-CUDA wheel installed (.venv-mooncake, the
    interop suite's), only mooncake.engine and mooncake.allocator are
    pymooncake's: mooncake and mooncake.store come from the wheel, whose
    engine module is never loaded."""
    venv = Path(os.environ.get("MOONCAKE_VENV") or ROOT / ".venv-mooncake")
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        reason = f"no Mooncake venv at {venv}: run scripts/install-mooncake.sh"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == str(sys.version_info[:2]), "the venv's Python must be the one the extension is built for"
    if how == "environment":
        line = (ROOT / "pymooncake" / "pymooncake-compat.pth").read_text().strip()
        code, env = f"{line}\n{_WHEEL_CHECK}", {compat.ENV: "1"}
    else:
        code, env = f"import pymooncake.compat\npymooncake.compat.install()\n{_WHEEL_CHECK}", {}
    full = {k: v for k, v in os.environ.items() if not k.startswith("MC_") and k != compat.ENV}
    full.update(env, PYTHONPATH=str(ROOT), MC_FORCE_TCP="1")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=full, cwd=ROOT, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    wheel = Path(out["mooncake"]).parent
    assert wheel.parent.name == "site-packages", out
    assert wheel.resolve().is_relative_to(venv.resolve()), out
    assert Path(out["pymooncake"]).resolve().is_relative_to(ROOT.resolve()), out
    assert Path(out["store"]).parent == wheel
    assert out["store_class"].startswith("mooncake.store")
    assert out["engine"] == "pymooncake.engine"
    assert out["engine_is_ours"]
    assert out["allocator_is_ours"]
    assert not [f for f in out["loaded"] if Path(f).parent == wheel and Path(f).name.startswith(("engine.", "allocator."))], out["loaded"]
    assert out["rc"] == 0
    assert out["data"] == "through mooncake.engine"
