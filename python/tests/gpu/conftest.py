"""The GPU suite: runs on an NVIDIA host (libcuda, a device, torch) and
skips everywhere else.

It skips only on conclusive absence (no libcuda.so.1, a stub driver, no
device, no torch): with ``PYMOONCAKE_GPU_TESTS=1`` that absence fails the
run instead, so a GPU host that lost its GPU cannot pass silently.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from pymooncake.engine import TransferEngine

OPT_IN = "PYMOONCAKE_GPU_TESTS"


def _absent() -> str | None:
    """Why this host cannot run the suite, or None."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"no libcuda.so.1 ({e})"
    rc = cu.cuInit(0)
    if rc == 100:
        return "no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)"
    if rc == 34:
        return "a stub libcuda (CUDA_ERROR_STUB_LIBRARY)"
    if rc != 0:
        raise RuntimeError(f"cuInit failed with CUresult {rc}: the GPU is present but broken")
    count = ctypes.c_int(0)
    if cu.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device"
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        raise RuntimeError("libcuda sees a device but torch does not")
    return None


_REASON = _absent()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_gpu: runs everywhere (the no-GPU side of the GPU features)")


@pytest.fixture(autouse=True)
def _need_gpu(request: pytest.FixtureRequest) -> None:
    if _REASON is None or request.node.get_closest_marker("no_gpu") is not None:
        return
    if os.environ.get(OPT_IN) == "1":
        pytest.fail(f"{OPT_IN}=1 but {_REASON}")
    pytest.skip(_REASON)


@pytest.fixture
def torch() -> Any:
    return importlib.import_module("torch")


@pytest.fixture
def gpu_engine() -> Iterator[TransferEngine]:
    e = TransferEngine()
    assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    yield e
    e.close()
