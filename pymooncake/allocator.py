"""CUDA allocators for torch: Mooncake's ``mooncake.allocator``, on pymooncake.

Each allocator class hands torch a ``torch.cuda.memory.CUDAPluggableAllocator``
(one per device, cached) over C functions with torch's pluggable-allocator
ABI::

    void *alloc(ssize_t size, int device, cudaStream_t stream);
    void free(void *ptr, ssize_t size, int device, cudaStream_t stream);

- :class:`StreamAllocator`: stream-ordered (``mc_stream_alloc`` /
  ``mc_stream_free``) on a CUDA memory pool per device. Freed memory stays
  cached in the pool, ready for the next allocation;
  :meth:`StreamAllocator.trim` gives it back to the driver. Where the driver
  accepts it, the pool asks for GPUDirect-RDMA-capable memory.
- :class:`NVLinkAllocator`: Mooncake's ``mc_nvlink_malloc`` /
  ``mc_nvlink_free``: one ``cuMemCreate`` allocation per call, shareable
  over NVLink (a FABRIC handle where the device offers one, else a POSIX
  file descriptor handle), GPUDirect-RDMA capable where supported, and fully
  released on free.
- :class:`BarexAllocator`: ``u2mm_alloc_wrapper_with_stream`` /
  ``u2mm_free_wrapper_with_stream`` of Alibaba's ``libaccl_barex.so``,
  looked up in ``/usr/lib``, ``/usr/lib64`` and next to this package.

The first two live in pymooncake's own extension: torch is given the
extension's file, which the process has loaded already, so one Go runtime
serves the engine and the allocators.

Use them as SGLang does (``SGLANG_MOONCAKE_CUSTOM_MEM_POOL``), through a
memory pool::

    import torch
    from pymooncake.allocator import NVLinkAllocator

    pool = torch.cuda.MemPool(NVLinkAllocator.get_allocator(device).allocator())
    with torch.cuda.use_mem_pool(pool):
        kv_cache = torch.empty(n, dtype=torch.bfloat16, device=device)

or as the process's allocator, before any CUDA memory is allocated::

    torch.cuda.memory.change_current_allocator(StreamAllocator.get_allocator(0))

Through a ``MemPool`` torch's caching allocator calls the allocator only for
whole segments and frees them on ``empty_cache`` or when the pool goes away;
as the current allocator, every tensor allocation and free reaches it.

Importing this module loads nothing; ``get_allocator`` loads the extension
(and torch). An absent CUDA driver or ``libaccl_barex.so`` raises
:class:`AllocatorUnavailableError`, an ``ImportError``, as Mooncake's
``BarexAllocator`` does.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import threading
from typing import Any, ClassVar

from . import _errors, _loader

__all__ = [
    "AllocatorUnavailableError",
    "StreamAllocator",
    "NVLinkAllocator",
    "BarexAllocator",
]


class AllocatorUnavailableError(ImportError):
    """The library an allocator needs is absent: the CUDA driver (or any
    device) for :class:`StreamAllocator` and :class:`NVLinkAllocator`,
    ``libaccl_barex.so`` for :class:`BarexAllocator`."""


def _torch() -> Any:
    return importlib.import_module("torch")


def device_index(device: Any) -> int:
    """Return the CUDA device ordinal of ``device``: an int, a string such
    as ``"cuda:1"``, or a ``torch.device`` (``"cuda"`` without an index is
    the current device)."""
    if isinstance(device, bool):
        raise TypeError(f"device must be an int, a str or a torch.device, not {type(device).__name__}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device {device} is negative")
        return device
    torch = _torch()
    d = torch.device(device) if isinstance(device, str) else device
    if getattr(d, "type", None) != "cuda":
        raise ValueError(f"device {device!r} is not a CUDA device")
    index = d.index
    return int(torch.cuda.current_device()) if index is None else int(index)


class _Pluggable:
    """Caches one CUDAPluggableAllocator per device for a library and its
    two symbols."""

    symbols: ClassVar[tuple[str, str]]
    _lock: ClassVar[threading.Lock]
    _instances: ClassVar[dict[int, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._lock = threading.Lock()
        cls._instances = {}

    @classmethod
    def library(cls) -> str:
        """Return the path of the shared library holding the symbols."""
        raise NotImplementedError

    @classmethod
    def get_allocator(cls, device: Any) -> Any:
        """Return the ``CUDAPluggableAllocator`` for ``device`` (created on
        first use, then cached).

        Parameters
        ----------
        device : int, str or torch.device
            The CUDA device the allocator serves.

        Returns
        -------
        torch.cuda.memory.CUDAPluggableAllocator
            Usable with ``torch.cuda.MemPool(a.allocator())`` and with
            ``torch.cuda.memory.change_current_allocator(a)``.

        Raises
        ------
        AllocatorUnavailableError
            The library the allocator needs is absent.
        """
        index = device_index(device)
        with cls._lock:
            alloc = cls._instances.get(index)
            if alloc is None:
                path = cls.library()
                alloc = _torch().cuda.memory.CUDAPluggableAllocator(path, *cls.symbols)
                cls._instances[index] = alloc
            return alloc


def _extension() -> Any:
    """Load pymooncake's extension and bind its allocators to the driver;
    return the extension module."""
    x = _loader.load()
    try:
        x.bindings_AllocatorBind()
    except RuntimeError as e:
        code, kind, reason = _errors.parse(e)
        if kind == "not_supported":
            raise AllocatorUnavailableError(f"pymooncake's CUDA allocators need the NVIDIA driver and a GPU: {reason}") from None
        raise _errors.TransferFailedError("allocator", code, kind, reason) from None
    return x


class _ExtensionAllocator(_Pluggable):
    @classmethod
    def library(cls) -> str:
        """Return the path of pymooncake's extension, which holds the
        allocator (the file the process loaded)."""
        path: str = _extension().__file__
        return path

    @staticmethod
    def last_error() -> str:
        """Describe the last failure of an allocator function (torch sees
        only a NULL pointer, reported as out of memory), or ``""``."""
        msg: str = _loader.load().bindings_AllocatorLastError()
        return msg

    @staticmethod
    def rdma_info(ptr: int) -> dict[str, int]:
        """Tell whether the allocation holding ``ptr`` can be registered for
        GPUDirect RDMA.

        Returns
        -------
        dict
            ``rdma_capable``: the driver's pointer attribute; ``dmabuf``: a
            dma-buf could be exported for it (what ``ibv_reg_dmabuf_mr``
            needs without nvidia-peermem). 1 yes, 0 no, -1 not known.
        """
        x = _extension()
        try:
            info: dict[str, int] = json.loads(x.bindings_AllocatorRDMAInfo(ptr))
        except RuntimeError as e:
            code, kind, reason = _errors.parse(e)
            raise _errors.TransferFailedError("rdma_info", code, kind, reason) from None
        return info


class StreamAllocator(_ExtensionAllocator):
    """Stream-ordered allocator on a CUDA memory pool per device
    (``mc_stream_alloc`` / ``mc_stream_free`` in pymooncake's extension).

    An allocation is ordered on the stream torch passes (the current
    stream); its free is ordered on the stream it was allocated on, so the
    memory goes back to the pool only after the work queued there before
    the free. Work on other streams must be ordered with events, as with
    any stream-ordered allocator (torch's MemPool does this for tensors it
    hands out).
    """

    symbols = ("mc_stream_alloc", "mc_stream_free")

    @classmethod
    def trim(cls, device: Any) -> None:
        """Wait for the device's work, then return the memory cached in the
        pool to the driver."""
        x = _extension()
        try:
            x.bindings_AllocatorTrim(device_index(device))
        except RuntimeError as e:
            code, kind, reason = _errors.parse(e)
            raise _errors.TransferFailedError("trim", code, kind, reason) from None

    @classmethod
    def stats(cls, device: Any) -> dict[str, Any]:
        """Describe the device's pool.

        Returns
        -------
        dict
            ``reserved`` and ``used`` bytes; ``rdma_pool``: whether the pool
            was created GPUDirect-RDMA capable; ``nvlink_bytes``,
            ``nvlink_allocs``, ``fabric`` and ``vmm`` as
            :meth:`NVLinkAllocator.stats`.
        """
        x = _extension()
        stats: dict[str, Any] = json.loads(x.bindings_AllocatorStats(device_index(device)))
        return stats


class NVLinkAllocator(_ExtensionAllocator):
    """Mooncake's NVLink allocator (``mc_nvlink_malloc`` /
    ``mc_nvlink_free``): one ``cuMemCreate`` allocation per call, mapped for
    every device that can reach it. Allocation and free are not stream
    ordered: the free waits for the allocation's stream first."""

    symbols = ("mc_nvlink_malloc", "mc_nvlink_free")

    @classmethod
    def stats(cls, device: Any) -> dict[str, Any]:
        """Describe the device: ``nvlink_bytes`` and ``nvlink_allocs`` (what
        this allocator has mapped and not yet freed), ``fabric`` (1
        allocations get FABRIC handles, 0 they get POSIX file descriptors,
        -1 not known before the first allocation) and ``vmm``
        (``mc_allocator_probe``: 1 the device supports this allocator, 0 it
        does not)."""
        return StreamAllocator.stats(device)


class BarexAllocator(_Pluggable):
    """Alibaba barex's allocator (``u2mm_alloc_wrapper_with_stream`` /
    ``u2mm_free_wrapper_with_stream`` of ``libaccl_barex.so``), which
    pymooncake never bundles."""

    symbols = ("u2mm_alloc_wrapper_with_stream", "u2mm_free_wrapper_with_stream")
    #: Where libaccl_barex.so is looked for, in order (then next to the package).
    search_paths: ClassVar[tuple[str, ...]] = ("/usr/lib/libaccl_barex.so", "/usr/lib64/libaccl_barex.so")

    @classmethod
    def library(cls) -> str:
        """Return the path of ``libaccl_barex.so``.

        Raises
        ------
        AllocatorUnavailableError
            No such file where it is looked for, or the library lacks the
            allocator's symbols (a barex older than the ``_with_stream``
            wrappers).
        """
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libaccl_barex.so")
        candidates = (*cls.search_paths, here)
        path = next((p for p in candidates if os.path.exists(p)), None)
        if path is None:
            raise AllocatorUnavailableError(
                f"BarexAllocator needs libaccl_barex.so (Alibaba's accl-barex), which pymooncake does not ship; it was looked for in {', '.join(candidates)}"
            )
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise AllocatorUnavailableError(f"BarexAllocator: cannot load {path}: {e}") from None
        missing = [s for s in cls.symbols if not hasattr(lib, s)]
        if missing:
            raise AllocatorUnavailableError(f"BarexAllocator: {path} lacks {', '.join(missing)} (a barex without the stream-aware allocator)")
        return path
