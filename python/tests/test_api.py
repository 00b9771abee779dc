"""The public surface matches Mooncake's ``mooncake.engine`` at HEAD
(3b5a594, 0.3.12.post1): names, argument names, defaults, constants."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pmtest import ROOT, run_python

import pymooncake
from pymooncake import engine as eng
from pymooncake.engine import TransferEngine, TransferNotify, TransferOpcode

# Methods whose pybind11 definition names its arguments (py::arg), with the
# defaults HEAD gives them.
NAMED: dict[str, list[str | tuple[str, object]]] = {
    "transfer_sync_write": ["target_hostname", "buffer", "peer_buffer_address", "length", ("transport_hint", "")],
    "transfer_sync_read": ["target_hostname", "buffer", "peer_buffer_address", "length", ("transport_hint", "")],
    "batch_transfer_sync_write": ["target_hostname", "buffers", "peer_buffer_addresses", "lengths", ("transport_hint", "")],
    "batch_transfer_sync_read": ["target_hostname", "buffers", "peer_buffer_addresses", "lengths", ("transport_hint", "")],
    "batch_transfer_async_write": ["target_hostname", "buffers", "peer_buffer_addresses", "lengths", ("transport_hint", "")],
    "batch_transfer_async_read": ["target_hostname", "buffers", "peer_buffer_addresses", "lengths", ("transport_hint", "")],
    "transfer_sync": [
        "target_hostname", "buffer", "peer_buffer_address", "length", "opcode", ("notify", None), ("transport_hint", ""),
    ],
    "batch_transfer_sync": [
        "target_hostname", "buffers", "peer_buffer_addresses", "lengths", "opcode", ("notify", None), ("transport_hint", ""),
    ],
    "batch_transfer_async": ["target_hostname", "buffers", "peer_buffer_addresses", "lengths", "opcode", ("transport_hint", "")],
    "transfer_submit_write": ["target_hostname", "buffer", "peer_buffer_address", "length", ("transport_hint", "")],
    "register_memory": ["buffer_addr", "capacity", ("location", "*")],
    "batch_register_memory": ["buffer_addresses", "capacities", ("location", "*")],
    "get_local_topology": [("device_name", None)],
    "warmup_efa_segment": ["segment_name"],
    "send_probe": ["peer_server_name"],
    "transfer_write_on_cuda": [
        "target_hostname", "buffer", "peer_buffer_address", "length", ("stream_ptr", 0), ("transport_hint", ""),
    ],
    "transfer_read_on_cuda": [
        "target_hostname", "buffer", "peer_buffer_address", "length", ("stream_ptr", 0), ("transport_hint", ""),
    ],
    "batch_transfer_write_on_cuda": [
        "target_hostname", "buffers", "peer_buffer_addresses", "lengths", ("stream_ptr", 0), ("transport_hint", ""),
    ],
    "batch_transfer_read_on_cuda": [
        "target_hostname", "buffers", "peer_buffer_addresses", "lengths", ("stream_ptr", 0), ("transport_hint", ""),
    ],
}  # fmt: skip

# Methods defined without py::arg: positional, only their arity is fixed.
POSITIONAL = {
    "initialize": 4,
    "initialize_ext": 5,
    "get_rpc_port": 0,
    "allocate_managed_buffer": 1,
    "free_managed_buffer": 2,
    "get_batch_transfer_status": 1,
    "transfer_check_status": 1,
    "write_bytes_to_buffer": 3,
    "read_bytes_from_buffer": 2,
    "unregister_memory": 1,
    "batch_unregister_memory": 1,
    "get_first_buffer_address": 1,
    "get_notifies": 0,
    "get_engine": 0,
    "get_engine_ptr": 0,
}


def params(name: str) -> list[inspect.Parameter]:
    return list(inspect.signature(getattr(TransferEngine, name)).parameters.values())[1:]


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_arguments_match_mooncake(name: str) -> None:
    want = NAMED[name]
    got = params(name)
    assert [p.name for p in got] == [w if isinstance(w, str) else w[0] for w in want]
    for p, w in zip(got, want, strict=True):
        if isinstance(w, tuple):
            assert p.default == w[1], f"{name}({p.name}) default"
        else:
            assert p.default is inspect.Parameter.empty, f"{name}({p.name}) must be required"


@pytest.mark.parametrize("name", sorted(POSITIONAL))
def test_positional_arity_matches_mooncake(name: str) -> None:
    got = params(name)
    assert len(got) == POSITIONAL[name]
    assert all(p.default is inspect.Parameter.empty for p in got)


def test_every_method_has_a_docstring_with_returns() -> None:
    for name in [*NAMED, *POSITIONAL]:
        doc = getattr(TransferEngine, name).__doc__ or ""
        assert doc.strip(), name
        if not name.endswith("_on_cuda"):
            assert "Returns" in doc or "Return " in doc or "return" in doc.lower(), name


def test_opcode_values() -> None:
    assert int(TransferOpcode.Read) == 0
    assert int(TransferOpcode.Write) == 1
    assert TransferEngine.TransferOpcode is TransferOpcode
    assert eng.Read is TransferOpcode.Read
    assert eng.Write is TransferOpcode.Write
    assert int(TransferOpcode.Write) + 1 == 2  # arithmetic, as py::arithmetic()


def test_transfer_notify() -> None:
    n = TransferNotify("a", "b")
    assert (n.name, n.msg) == ("a", "b")
    n.name, n.msg = "c", "d"
    assert n == TransferNotify(name="c", msg="d")
    assert TransferNotify().name == ""
    assert "c" in repr(n)


def test_module_flags() -> None:
    for flag in ("SUPPORT_EFA", "SUPPORT_HIP", "SUPPORT_MNNVL", "SUPPORT_MUSA"):
        assert getattr(eng, flag) is False
        assert getattr(pymooncake, flag) is False
    # GPU memory and the *_on_cuda methods work wherever the driver is, and
    # GPU memory of another process of the host goes through CUDA IPC.
    for flag in ("SUPPORT_CUDA", "SUPPORT_INTRA_NVLINK"):
        assert getattr(eng, flag) is True
        assert getattr(pymooncake, flag) is True


def test_public_names_exported() -> None:
    for name in eng.__all__:
        assert hasattr(eng, name)
    for name in pymooncake.__all__:
        assert hasattr(pymooncake, name)
    assert pymooncake.TransferEngine is TransferEngine


def test_py_typed_shipped() -> None:
    assert (Path(pymooncake.__file__).parent / "py.typed").exists()
    assert (ROOT / "pymooncake" / "py.typed").exists()


def test_import_is_cheap_and_loads_no_extension() -> None:
    r = run_python(
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import pymooncake, pymooncake.engine, pymooncake.compat, pymooncake.cli\n"
        "dt = time.perf_counter() - t\n"
        "assert 'pymooncake._gopy._pymooncake_go' not in sys.modules, 'extension loaded at import'\n"
        "e = pymooncake.TransferEngine()\n"
        "assert 'pymooncake._gopy._pymooncake_go' not in sys.modules, 'extension loaded by TransferEngine()'\n"
        "print(dt)\n"
    )
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 1.0


def test_first_initialize_loads_lazily_and_restores_dlopen_flags() -> None:
    r = run_python(
        "import sys\n"
        "from pymooncake.engine import TransferEngine\n"
        "flags = sys.getdlopenflags()\n"
        "e = TransferEngine()\n"
        "assert e.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '') == 0\n"
        "assert 'pymooncake._gopy._pymooncake_go' in sys.modules\n"
        "assert sys.getdlopenflags() == flags, (sys.getdlopenflags(), flags)\n"
        "e.close()\n"
    )
    assert r.returncode == 0, r.stderr


def test_missing_extension_is_an_import_error_naming_it() -> None:
    r = run_python(
        "import sys, pymooncake._loader as L\n"
        "L.EXTENSION = 'pymooncake._gopy._no_such_extension'\n"
        "from pymooncake.engine import TransferEngine\n"
        "try:\n"
        "    TransferEngine().initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "_no_such_extension" in r.stdout
    assert "make build" in r.stdout
