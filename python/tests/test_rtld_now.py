"""The extension loads with RTLD_NOW (DESIGN rule 2).

torch's ``CUDAPluggableAllocator(path, ...)``, ``ctypes.CDLL(path)`` and
``LD_BIND_NOW=1`` bind every symbol of the file at load, so no symbol may
wait for a library opened at run time (go-nvml's NVML calls once left 428).
Each check runs in a fresh interpreter, where nothing of the extension is
loaded yet; this host needs no NVIDIA library, and the last tests put a
FAKE libnvidia-ml (a test double built here with gcc from
core/topology/nvmlgpu/testdata/fake_nvml.c) on ``LD_LIBRARY_PATH`` to show
the same with one present. It proves the loading path, not real hardware.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from pmtest import ROOT, run_python

EXT = ROOT / "pymooncake" / "_gopy" / f"_pymooncake_go{sysconfig.get_config_var('EXT_SUFFIX')}"
FAKE_NVML_SRC = ROOT / "core" / "topology" / "nvmlgpu" / "testdata" / "fake_nvml.c"
# Undefined symbols the interpreter provides to the extension (gopy's
# -dynamic-link): Python's C API.
PYTHON_API = re.compile(r"^_?Py[A-Za-z_]")

# Two engines of one process over loopback TCP: a write and a read of 1 MiB,
# checked byte for byte; NVML must not have been touched.
LOOPBACK = """
import ctypes, os
from pymooncake import _loader
from pymooncake.engine import TransferEngine

a, b = TransferEngine(), TransferEngine()
assert a.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0, "initialize a"
assert b.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0, "initialize b"
assert _loader.loaded()
n = 1 << 20
src, dst, back = (ctypes.create_string_buffer(n) for _ in range(3))
for buf, e in ((src, a), (back, a), (dst, b)):
    assert e.register_memory(ctypes.addressof(buf), n) == 0
data = os.urandom(n)
ctypes.memmove(src, data, n)
seg = b.get_segment_name()
assert a.transfer_sync_write(seg, ctypes.addressof(src), ctypes.addressof(dst), n) == 0, "write"
assert dst.raw == data, "written bytes differ"
assert a.transfer_sync_read(seg, ctypes.addressof(back), ctypes.addressof(dst), n) == 0, "read"
assert back.raw == data, "read bytes differ"
assert "libnvidia-ml" not in open("/proc/self/maps").read(), "NVML loaded by a TCP transfer"
a.close()
b.close()
print("loopback ok")
"""

# get_local_topology, which lists GPUs through NVML, printed as JSON.
TOPOLOGY = """
import json, logging, os
logging.basicConfig(level=logging.WARNING)
for name in ("CUDA_VISIBLE_DEVICES", "MC_CUSTOM_TOPO_JSON"):
    os.environ.pop(name, None)
from pymooncake.engine import TransferEngine
print(json.dumps({"topology": TransferEngine().get_local_topology()}))
"""


@pytest.fixture(scope="module")
def ext() -> Path:
    assert EXT.is_file(), f"{EXT} is missing: run `make build`"
    return EXT


@pytest.fixture(scope="module")
def fake_nvml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the FAKE libnvidia-ml.so.1 (test double)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc builds the fake NVML")
    d = tmp_path_factory.mktemp("fakenvml")
    subprocess.run([gcc, "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", str(d / "libnvidia-ml.so.1"), str(FAKE_NVML_SRC)], check=True)
    return d


def test_ctypes_rtld_now(ext: Path) -> None:
    """ctypes.CDLL(path, RTLD_NOW) in a fresh process: how torch's
    CUDAPluggableAllocator opens the file."""
    r = run_python(f"import ctypes, os; ctypes.CDLL({str(ext)!r}, mode=os.RTLD_NOW); print('loaded')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "loaded"


def test_no_undefined_symbols_but_libc_and_python(ext: Path) -> None:
    """What RTLD_NOW needs, read from the file: every undefined symbol is
    libc's (versioned), Python's C API, or weak."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils' nm reads the dynamic symbol table")
    out = subprocess.run([nm, "-D", "--undefined-only", "--with-symbol-versions", str(ext)], capture_output=True, text=True, check=True).stdout
    bad, seen = [], 0
    for line in out.splitlines():
        kind, name = line.split()[-2:]
        seen += 1
        if kind in ("w", "v") or "@GLIBC_" in name or PYTHON_API.match(name):
            continue
        bad.append(name)
    assert seen > 0, f"nm listed nothing undefined in {ext}: {out!r}"
    assert not bad, f"{len(bad)} undefined symbols that neither libc nor Python provides: {bad[:10]}"


def test_ld_bind_now_import_and_transfer(ext: Path) -> None:
    """LD_BIND_NOW=1 (hardened deployments): import pymooncake, load the
    extension and move bytes over loopback TCP."""
    r = run_python(LOOPBACK, env={"LD_BIND_NOW": "1"})
    assert r.returncode == 0, r.stderr
    assert "loopback ok" in r.stdout


def test_ld_bind_now_with_fake_nvml(ext: Path, fake_nvml_dir: Path) -> None:
    """With an NVML present (the FAKE one), under LD_BIND_NOW=1: the
    extension loads, GPUs are listed through go-nvml and the trampolines,
    and transfers still work."""
    env = {"LD_BIND_NOW": "1", "LD_LIBRARY_PATH": str(fake_nvml_dir)}
    r = run_python(TOPOLOGY, env=env)
    assert r.returncode == 0, r.stderr
    topo = json.loads(json.loads(r.stdout.splitlines()[-1])["topology"])
    assert {"cuda:0", "cuda:1"} <= set(topo), f"the fake NVML's GPUs are missing: {topo}"
    r = run_python(LOOPBACK, env=env)
    assert r.returncode == 0, r.stderr


def test_fake_nvml_init_failure_is_an_error_not_a_crash(ext: Path, fake_nvml_dir: Path) -> None:
    """An NVML whose nvmlInit fails (FAKE_NVML_INIT_RC=9,
    NVML_ERROR_DRIVER_NOT_LOADED): get_local_topology returns "" and logs
    why."""
    r = run_python(TOPOLOGY, env={"LD_BIND_NOW": "1", "LD_LIBRARY_PATH": str(fake_nvml_dir), "FAKE_NVML_INIT_RC": "9"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {"topology": ""}
    assert "nvml init" in r.stderr, r.stderr
