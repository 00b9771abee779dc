"""What the GPU features do where there is no GPU (these run in CI too):
clear errors, never a crash."""

from __future__ import annotations

import ctypes

import pytest

from pymooncake import _loader
from pymooncake.allocator import AllocatorUnavailableError, BarexAllocator, NVLinkAllocator, StreamAllocator, device_index

pytestmark = pytest.mark.no_gpu


def has_gpu() -> bool:
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cu.cuInit(0) == 0 and cu.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def test_barex_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setattr(BarexAllocator, "search_paths", ("/nonexistent/libaccl_barex.so",))
    monkeypatch.setattr(BarexAllocator, "_instances", {})
    with pytest.raises(AllocatorUnavailableError, match=r"libaccl_barex\.so") as e:
        BarexAllocator.get_allocator(0)
    assert isinstance(e.value, ImportError), "Mooncake raises ImportError; SGLang falls back on it"


def test_barex_without_the_stream_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any shared library lacking the symbols: pymooncake's own extension.
    path = _loader.load().__file__
    monkeypatch.setattr(BarexAllocator, "search_paths", (path,))
    monkeypatch.setattr(BarexAllocator, "_instances", {})
    with pytest.raises(AllocatorUnavailableError, match="u2mm_alloc_wrapper_with_stream"):
        BarexAllocator.get_allocator(0)


@pytest.mark.parametrize("cls", [StreamAllocator, NVLinkAllocator])
def test_extension_allocators_without_a_driver(cls: type[StreamAllocator]) -> None:
    if has_gpu():
        pytest.skip("a GPU is present")
    with pytest.raises(AllocatorUnavailableError, match="NVIDIA driver"):
        cls.get_allocator(0)
    assert cls.last_error() == ""


def test_device_index() -> None:
    assert device_index(3) == 3
    with pytest.raises(TypeError):
        device_index(True)
    with pytest.raises(ValueError, match="negative"):
        device_index(-1)


def test_extension_exports_the_allocator_symbols() -> None:
    """torch looks the symbols up in the extension's file by name."""
    lib = ctypes.CDLL(_loader.load().__file__)
    for name in (*StreamAllocator.symbols, *NVLinkAllocator.symbols, "mc_allocator_malloc", "mc_allocator_free", "mc_allocator_probe"):
        assert hasattr(lib, name), name
    if not has_gpu():
        lib.mc_stream_alloc.restype = ctypes.c_void_p
        lib.mc_stream_alloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
        assert lib.mc_stream_alloc(4096, 0, None) is None, "unbound: NULL, which torch reports as out of memory"
